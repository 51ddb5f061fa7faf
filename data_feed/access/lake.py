"""``data-feed query --as CONSUMER``: SQL over only the lake rows a consumer is granted.

Each lake table the query names is replaced (sqlglot) by a view of it filtered to the consumer's grants
covering that channel: ``exchange GLOB ... AND symbol GLOB ...`` (and ``interval`` for features), one
disjunct per grant, with both the dataset's pattern and the permission's scope, and the grant's time
window over ``ts_event`` when it has one. A query outside the
grants is an error naming the consumer and what is not granted, never an empty result: a table no grant
covers, a literal exchange/symbol/interval the query asks for that no grant covers, and anything that
reads past the views (files, table functions, other relations).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import sqlglot
import sqlglot.errors
from sqlglot import exp

from data_feed.access.patterns import WHOLE, Parts, split
from data_feed.access.query import Dialect, QueryError, _relation, session, to_duckdb
from data_feed.access.store import Grant
from data_feed.contracts.schemas import LAKE_CHANNELS, NS_PER_SECOND

GRANTED_VIEW = "_granted_{}"
SCOPED_COLUMNS = ("exchange", "symbol", "interval")
READERS = ("read_", "glob", "parquet_", "sniff_")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _clauses(parts: Parts) -> list[str]:
    out = [f"exchange GLOB {_quote(parts.exchange)}", f"symbol GLOB {_quote(parts.symbol)}"]
    if parts.interval is not None:
        out.append(f"interval GLOB {_quote(parts.interval)}")
    return out


def _grant_parts(grant: Grant) -> list[Parts]:
    return [split(p) for p in (grant.pattern, grant.scope) if p != WHOLE]


def _window(grant: Grant) -> list[str]:
    """The grant's time window over exchange time (int64 ns ``ts_event``)."""
    out = []
    if grant.window_start is not None:
        out.append(f"ts_event >= {int(grant.window_start.timestamp() * NS_PER_SECOND)}")
    if grant.window_end is not None:
        out.append(f"ts_event < {int(grant.window_end.timestamp() * NS_PER_SECOND)}")
    return out


def channel_filter(channel: str, grants: list[Grant]) -> str | None:
    """The WHERE of ``channel``'s granted view, or None if no grant covers that channel."""
    disjuncts = []
    for grant in grants:
        parts = _grant_parts(grant)
        if parts and all(_glob(p.channel, channel) for p in parts):
            clauses = [c for p in parts for c in _clauses(p)] + _window(grant)
            disjuncts.append("(" + " AND ".join(clauses) + ")")
    return " OR ".join(disjuncts) if disjuncts else None


def _glob(pattern: str, value: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(value, pattern)


def _value_granted(channel: str, column: str, value: str, grants: list[Grant]) -> bool:
    for grant in grants:
        parts = _grant_parts(grant)
        if not parts or not all(_glob(p.channel, channel) for p in parts):
            continue
        if all(getattr(p, column) is None or _glob(getattr(p, column), value) for p in parts):
            return True
    return False


def _tables(tree: exp.Expr, consumer: str) -> set[str]:
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    names = set()
    for table in tree.find_all(exp.Table):
        name = table.name
        if name in ctes:
            continue
        if name not in LAKE_CHANNELS or table.args.get("db") or table.args.get("catalog"):
            raise QueryError(f"consumer {consumer}: {table.sql('duckdb')!r} is not a lake table it may query "
                             f"(lake tables: {', '.join(LAKE_CHANNELS)})")
        names.add(name)
    for func in tree.find_all(exp.Func):
        fname = (func.sql_name() if not isinstance(func, exp.Anonymous) else str(func.this)).lower()
        if fname.startswith(READERS):
            raise QueryError(f"consumer {consumer}: reading files ({fname}) is not granted; query the lake tables")
    return names


def _literals(tree: exp.Expr) -> list[tuple[str, str]]:
    """(column, value) of every ``col = 'v'`` and ``col IN ('v', ...)`` on a scoped column."""
    out = []
    for node in tree.find_all(exp.EQ, exp.In):
        column = node.this if isinstance(node.this, exp.Column) else node.expression
        if not isinstance(column, exp.Column) or column.name not in SCOPED_COLUMNS:
            continue
        values = node.expressions if isinstance(node, exp.In) else [node.expression, node.this]
        out += [(column.name, v.this) for v in values if isinstance(v, exp.Literal) and v.is_string]
    return out


def scope_sql(sql: str, consumer: str, grants: list[Grant]) -> tuple[str, dict[str, str]]:
    """(the query over granted views, channel -> its view's WHERE); QueryError for anything not granted."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except sqlglot.errors.SqlglotError as err:
        raise QueryError(f"not valid SQL over the lake's views: {err}") from None
    if len(trees) != 1:
        raise QueryError(f"expected one SQL statement, got {len(trees)}")
    tree = trees[0]
    if not isinstance(tree, exp.Query):
        raise QueryError(f"consumer {consumer}: only queries (SELECT ...) are allowed")
    filters = {}
    for channel in sorted(_tables(tree, consumer)):
        where = channel_filter(channel, grants)
        if where is None:
            raise QueryError(f"consumer {consumer} is not granted table {channel!r}")
        filters[channel] = where
    for column, value in _literals(tree):
        if not any(_value_granted(ch, column, value, grants) for ch in filters):
            raise QueryError(f"consumer {consumer} is not granted {column} = {value!r} in "
                             f"{', '.join(filters) or 'any table'}")
    _check_time_bounds(tree, consumer, [g for g in grants if any(channel_filter(ch, [g]) for ch in filters)])
    _to_granted_views(tree, filters)
    return tree.sql("duckdb"), filters


_LOWER, _UPPER = (exp.GT, exp.GTE), (exp.LT, exp.LTE)


def _check_time_bounds(tree: exp.Expr, consumer: str, grants: list[Grant]) -> None:
    """A query whose own ``ts_event`` bounds (int ns literals) lie outside every grant's window is refused."""
    lo, hi = -(2**63), 2**63 - 1
    for node in tree.find_all(*_LOWER, *_UPPER):
        if not (isinstance(node.this, exp.Column) and node.this.name == "ts_event"
                and isinstance(node.expression, exp.Literal) and not node.expression.is_string):
            continue
        value = int(float(node.expression.this))
        if isinstance(node, _LOWER):
            lo = max(lo, value)
        else:
            hi = min(hi, value)
    for grant in grants:
        start = int(grant.window_start.timestamp() * NS_PER_SECOND) if grant.window_start else -(2**63)
        end = int(grant.window_end.timestamp() * NS_PER_SECOND) if grant.window_end else 2**63 - 1
        if lo < end and hi >= start:
            return
    if grants:
        raise QueryError(f"consumer {consumer} is not granted ts_event in [{lo}, {hi}]: outside every grant's "
                         "time window")


def _to_granted_views(tree: exp.Expr, filters: dict[str, str]) -> None:
    for table in tree.find_all(exp.Table):
        if table.name in filters:
            alias = table.alias_or_name
            table.set("this", exp.to_identifier(GRANTED_VIEW.format(table.name)))
            if not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))


def query_table_as(lake_root: str | Path, sql: str, consumer: str, grants: list[Grant],
                   dialect: Dialect = "duckdb") -> pa.Table:
    """``query.query_table`` restricted to ``grants`` (``store.entitlements`` of ``consumer``)."""
    text, filters = scope_sql(to_duckdb(sql) if dialect == "athena" else sql, consumer, grants)
    import duckdb

    with session(lake_root) as con:
        for channel, where in filters.items():
            con.execute(f"CREATE TEMP VIEW {GRANTED_VIEW.format(channel)} AS SELECT * FROM {channel} WHERE {where}")
        try:
            table: pa.Table = _relation(con, text).to_arrow_table()
        except duckdb.Error as err:
            raise QueryError(str(err).strip()) from None
        return table
