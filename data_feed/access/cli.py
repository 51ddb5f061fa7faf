"""``data-feed access``: consumers, datasets and permissions, on the database of ``database.url``.

A consumer's secret key and token are printed once, by ``consumer add`` and ``consumer rotate``, and kept
nowhere. An unknown consumer or dataset, a name taken or a transition the state machine forbids
(``access.store.TRANSITIONS``) ends in one ``error:`` line and exit 2.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer

from data_feed.access import store
from data_feed.access.patterns import PatternError
from data_feed.access.tables import Status

app = typer.Typer(no_args_is_help=True, help=__doc__)
consumer_app = typer.Typer(no_args_is_help=True, help="Add, disable, enable, rotate and list consumers.")
dataset_app = typer.Typer(no_args_is_help=True, help="Declare and list datasets (topic patterns, previews).")
app.add_typer(consumer_app, name="consumer")
app.add_typer(dataset_app, name="dataset")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the embedded one)")]
ByOpt = Annotated[str | None, typer.Option("--by", help="who decides (default: the login name)")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why, for the audit")]


def _actor(by: str | None) -> str:
    return by or getpass.getuser()


@contextmanager
def _engine(config: Path | None) -> Iterator[sa.Engine]:
    from data_feed.access.db import make_engine
    from data_feed.observability.exits import EXIT_USAGE, fail, load_config_or_exit

    cfg = load_config_or_exit(config)
    engine = make_engine(cfg.database.url)
    try:
        yield engine
    except (store.AccessError, PatternError) as err:
        fail(str(err), EXIT_USAGE)
    except sa.exc.OperationalError as err:
        fail(f"database {engine.url.render_as_string(hide_password=True)}: {str(err.orig).strip()}")
    finally:
        engine.dispose()


def _print_rows(rows: list[dict[str, Any]]) -> None:
    if not rows:
        typer.echo("(none)")
    for row in rows:
        typer.echo("  ".join(f"{k}={_show(v)}" for k, v in row.items()))


def _show(value: object) -> str:
    if isinstance(value, datetime):
        return (store.utc(value) or value).isoformat(timespec="seconds")
    return str(value)


def _print_secrets(made: store.Secrets) -> None:
    typer.echo(f"consumer:    {made.consumer}")
    typer.echo(f"public key:  {made.public_key}")
    typer.echo(f"secret key:  {made.secret_key}")
    typer.echo(f"token:       {made.token}")
    typer.echo("The secret key and the token are shown only now: they are not stored anywhere.", err=True)


@consumer_app.command("add")
def consumer_add(name: str, by: ByOpt = None, config: ConfigOpt = None) -> None:
    """Add a consumer: prints its CURVE key pair and API token, once."""
    with _engine(config) as engine:
        _print_secrets(store.add_consumer(engine, name, _actor(by)))


@consumer_app.command("rotate")
def consumer_rotate(name: str, by: ByOpt = None, config: ConfigOpt = None) -> None:
    """New keys and token for a consumer (the old ones stop working); prints them, once."""
    with _engine(config) as engine:
        _print_secrets(store.rotate_consumer(engine, name, _actor(by)))


@consumer_app.command("disable")
def consumer_disable(name: str, reason: ReasonOpt = "", by: ByOpt = None, config: ConfigOpt = None) -> None:
    """Stop every delivery to a consumer and refuse its handshakes (within gateway.refresh_seconds)."""
    with _engine(config) as engine:
        store.set_disabled(engine, name, True, _actor(by), reason)


@consumer_app.command("enable")
def consumer_enable(name: str, reason: ReasonOpt = "", by: ByOpt = None, config: ConfigOpt = None) -> None:
    with _engine(config) as engine:
        store.set_disabled(engine, name, False, _actor(by), reason)


@consumer_app.command("list")
def consumer_list(config: ConfigOpt = None) -> None:
    with _engine(config) as engine:
        _print_rows(store.consumers(engine))


@dataset_app.command("add")
def dataset_add(
    name: str,
    pattern: Annotated[str, typer.Argument(help="topic pattern, e.g. features.1s.BINANCE.* or trades.*.BTC-USDT")],
    description: Annotated[str, typer.Option(help="what it is")] = "",
    preview_interval: Annotated[float | None, typer.Option(help="preview: one batch per this many seconds")] = None,
    preview_delay: Annotated[float, typer.Option(help="preview: delayed by this many seconds")] = 0.0,
    preview_normalize: Annotated[bool, typer.Option(help="preview: values normalized")] = False,
    by: ByOpt = None, config: ConfigOpt = None,
) -> None:
    with _engine(config) as engine:
        store.add_dataset(engine, name, pattern, _actor(by), description, preview_interval, preview_delay,
                          preview_normalize)


@dataset_app.command("list")
def dataset_list(config: ConfigOpt = None) -> None:
    with _engine(config) as engine:
        _print_rows(store.datasets(engine))


def _expiry(expires: str | None, for_seconds: float | None) -> datetime | None:
    if for_seconds is not None:
        return datetime.now(UTC) + timedelta(seconds=for_seconds)
    return _time(expires)


def _time(text: str | None) -> datetime | None:
    from data_feed.observability.exits import EXIT_USAGE, fail

    if text is None:
        return None
    try:
        return store.utc(datetime.fromisoformat(text))
    except ValueError:
        fail(f"{text!r}: expected an ISO time such as 2027-01-31T00:00:00Z", EXIT_USAGE)


def _decide(to: Status) -> Callable[..., None]:
    def command(
        consumer: str, dataset: str,
        scope: Annotated[str | None, typer.Option(help="topic pattern narrowing the dataset (* = all of it)")]
        = None,
        expires: Annotated[str | None, typer.Option(help="grant: ends at this ISO time (UTC)")] = None,
        for_seconds: Annotated[float | None, typer.Option("--for", help="grant: ends this many seconds from now")]
        = None,
        window_from: Annotated[str | None, typer.Option("--from", help="grant: lake rows from this ISO time "
                                                        "(exchange time) on, for query --as")] = None,
        window_to: Annotated[str | None, typer.Option("--to", help="grant: lake rows before this ISO time")] = None,
        reason: ReasonOpt = "", by: ByOpt = None, config: ConfigOpt = None,
    ) -> None:
        with _engine(config) as engine:
            store.transition(engine, consumer, dataset, to, _actor(by), reason, scope,
                             _expiry(expires, for_seconds), (_time(window_from), _time(window_to)))
        typer.echo(f"{consumer} on {dataset}: {to}")

    command.__doc__ = f"Move a permission to {to} (only where the state machine allows it)."
    return command


for _status, _name in ((Status.REQUESTED, "request"), (Status.GRANTED, "grant"), (Status.DENIED, "deny"),
                       (Status.REVOKED, "revoke")):
    app.command(_name)(_decide(_status))


@app.command("list")
def permission_list(consumer: Annotated[str | None, typer.Option(help="only this consumer's")] = None,
                    config: ConfigOpt = None) -> None:
    """Permissions, with status, scope, expiry and who decided."""
    with _engine(config) as engine:
        _print_rows(store.permissions(engine, consumer))


@app.command("audit")
def permission_audit(consumer: Annotated[str | None, typer.Option(help="only this consumer's")] = None,
                     config: ConfigOpt = None) -> None:
    """Every change, oldest first: when, who, consumer, dataset, from -> to, why."""
    with _engine(config) as engine:
        _print_rows(store.audit(engine, consumer))


@app.command("server-key")
def server_key(config: ConfigOpt = None) -> None:
    """The gateway's CURVE public key (consumers need it to connect); made on first use."""
    from data_feed.access.zap import server_keys
    from data_feed.observability.exits import load_config_or_exit

    typer.echo(server_keys(load_config_or_exit(config).gateway_key_file())[0].decode())
