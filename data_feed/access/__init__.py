"""Signal access: who may receive which features and lake rows (the permission table and its audit).

``tables`` defines the schema (migrated with Alembic, ``migrations/``), ``store`` the operations and the
permission state machine, ``patterns`` how datasets and scopes name topics and rows. The gateway
(``data_feed.access.gateway``) and ``data-feed query --as`` decide from it.
"""
