"""Observability as code: Grafana dashboards (``dashboards`` over ``grafana``) and Prometheus alert rules
(``alerts``), written to ``observability/`` by ``make dashboards`` (``python -m data_feed.observability``)."""
