"""Feature definitions from SQL: one ``SELECT ... GROUP BY <entity>`` statement -> features.

Accepted form (anything else is a :class:`~rayfs.errors.SqlError` saying what is supported)::

    SELECT <entity>, <AGG>(...) [AS name], ... FROM <stream> [WHERE <predicate>] GROUP BY <entity>

The entity column appears once among the select items and is the single ``GROUP BY`` column; every
other select item is an aggregate over a plain column:

==========================================  =========================
SQL                                         rayfs aggregate (column)
==========================================  =========================
``COUNT(*)``, ``COUNT(1)``                  ``count`` (``None``: rows)
``COUNT(col)``                              ``count`` (col)
``COUNT(DISTINCT col)``                     ``count_distinct``
``SUM``                                     ``sum``
``AVG``, ``MEAN``                           ``mean``
``MIN``, ``MAX``                            ``min``, ``max``
``STDDEV``, ``STDDEV_SAMP``                 ``stddev``
``VARIANCE``, ``VAR_SAMP``                  ``variance``
``FIRST``, ``FIRST_VALUE``                  ``first``
``LAST``, ``LAST_VALUE``                    ``last``
``LAST_K(col, k)``                          ``last_k`` (k)
``FIRST_K(col, k)``                         ``first_k`` (k)
``TOP_K(col, k)``                           ``top_k`` (k)
``APPROX_COUNT_DISTINCT``,                  ``approx_count_distinct``
``APPROX_DISTINCT``
``APPROX_QUANTILE(col, q)``,                ``approx_quantile`` (q)
``APPROX_PERCENTILE``, ``PERCENTILE_APPROX``
==========================================  =========================

``k`` is an integer literal (1..10000), ``q`` a number literal in [0, 1].

A feature's name is its alias, else ``<stream>_<agg>_<column>`` (``<stream>_count`` for ``COUNT(*)``).
The ``WHERE`` clause (see :mod:`rayfs.model.predicate`) is shared by every feature of the statement. Columns
may be qualified by the stream's name or its alias (``FROM clicks c ... c.score``); the qualifier is
dropped. Identifiers keep their case; aggregate names are case-insensitive.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping

from sqlglot import exp

from rayfs.errors import AggregateError, DefinitionError, SqlError, UnknownStreamError
from rayfs.model.definitions import Feature, Stream, check_name
from rayfs.model.predicate import Predicate, parse_trees

__all__ = ["features_from_sql", "SUPPORTED"]

SUPPORTED = ("SELECT <entity>, <AGG>(...) [AS name], ... FROM <stream> [WHERE <predicate>] GROUP BY <entity>"
             " with AGG one of COUNT(*), COUNT(1), COUNT(col), COUNT(DISTINCT col), SUM, AVG/MEAN, MIN, MAX,"
             " STDDEV/STDDEV_SAMP, VARIANCE/VAR_SAMP, FIRST/FIRST_VALUE, LAST/LAST_VALUE,"
             " APPROX_COUNT_DISTINCT over a plain column, LAST_K/FIRST_K/TOP_K(col, k),"
             " APPROX_QUANTILE(col, q)")

# sqlglot node class -> rayfs aggregate (COUNT is handled on its own).
_AGG_CLASSES: dict[type, str] = {
    exp.Sum: "sum", exp.Avg: "mean", exp.Min: "min", exp.Max: "max",
    exp.Stddev: "stddev", exp.StddevSamp: "stddev", exp.Variance: "variance",
    exp.First: "first", exp.Last: "last", exp.FirstValue: "first", exp.LastValue: "last",
    exp.ApproxDistinct: "approx_count_distinct",
}
# Function names sqlglot may leave as Anonymous (lower case) -> rayfs aggregate.
_AGG_NAMES: dict[str, str] = {
    "sum": "sum", "avg": "mean", "mean": "mean", "min": "min", "max": "max",
    "stddev": "stddev", "stddev_samp": "stddev", "variance": "variance", "var_samp": "variance",
    "first": "first", "last": "last", "first_value": "first", "last_value": "last",
    "approx_count_distinct": "approx_count_distinct", "approx_distinct": "approx_count_distinct",
}
# Aggregates with a parameter: function name (lower case) -> (rayfs aggregate, parameter).
_PARAM_AGGS: dict[str, tuple[str, str]] = {
    "last_k": ("last_k", "k"), "first_k": ("first_k", "k"), "top_k": ("top_k", "k"),
    "approx_quantile": ("approx_quantile", "q"), "approx_percentile": ("approx_quantile", "q"),
    "percentile_approx": ("approx_quantile", "q"),
}
_CLAUSES = {"joins": "JOIN", "order": "ORDER BY", "with_": "WITH", "with": "WITH",
            "distinct": "SELECT DISTINCT", "laterals": "LATERAL", "qualify": "QUALIFY", "windows": "WINDOW"}
_SELECT_ARGS = {"expressions", "from", "from_", "where", "group"}


def _err(msg: str) -> SqlError:
    return SqlError(f"{msg}; supported: {SUPPORTED}")


def _q(node: exp.Expression) -> str:
    return repr(node.sql(comments=False))


def features_from_sql(sql: str, *, window: str | _dt.timedelta | None = None,
                      streams: Mapping[str, Stream] | None = None, description: str = "") -> list[Feature]:
    """Turn one ``SELECT`` statement into :class:`~rayfs.model.definitions.Feature` objects.

    Args:
        sql: the statement (see the module docstring for the accepted form).
        window: passed to every feature: ``None`` (lifetime), ``"7d"`` or a ``timedelta``.
        streams: if given, the registered streams by name; the ``FROM`` stream must be one of them and
            the ``GROUP BY`` column one of its entities.
        description: passed to every feature.

    Raises:
        SqlError: the statement is not of the supported form (the message names the culprit).
        UnknownStreamError: ``streams`` is given and lacks the ``FROM`` stream.

    >>> fs = features_from_sql(
    ...     "SELECT user_id, COUNT(*), AVG(amount) AS avg_amount FROM orders "
    ...     "WHERE status = 'paid' GROUP BY user_id", window="3d")
    >>> [(f.name, f.agg, f.column) for f in fs]
    [('orders_count', 'count', None), ('avg_amount', 'mean', 'amount')]
    >>> fs[0].entity, fs[0].window, fs[0].where
    ('user_id', '3d', "status = 'paid'")
    """
    if not isinstance(sql, str) or not sql.strip():
        raise _err(f"empty SQL {sql!r}")
    trees = parse_trees(sql, lambda msg: _err(f"cannot parse SQL {sql!r}: {msg}"))
    if len(trees) != 1:
        raise _err(f"expected exactly one SELECT statement, got {len(trees)}")
    sel = trees[0]
    if not isinstance(sel, exp.Select):
        raise _err(f"expected a SELECT statement, got {type(sel).__name__.upper()} {_q(sel)}")
    for key, val in sel.args.items():
        if val and key not in _SELECT_ARGS:
            clause = _CLAUSES.get(key, key.rstrip("_").upper())
            raise _err(f"{clause} is not supported (in {_q(sel)})")

    stream, aliases = _from(sel)
    if streams is not None and stream not in streams:
        known = ", ".join(sorted(streams)) or "none"
        raise UnknownStreamError(f"SQL reads unknown stream {stream!r} (registered: {known})")
    for col in sel.find_all(exp.Column):  # drop qualifiers naming the stream; reject any other
        _unqualify(col, aliases)

    group = sel.args.get("group")
    if group is None:
        raise _err("GROUP BY <entity> is required")
    if any(v for k, v in group.args.items() if k != "expressions") or len(group.expressions) != 1 \
            or not isinstance(group.expressions[0], exp.Column):
        raise _err(f"GROUP BY takes exactly one entity column, got {_q(group)}")
    entity = group.expressions[0].name
    if streams is not None and entity not in streams[stream].entities:
        raise SqlError(f"SQL groups by {entity!r}, which is not an entity of stream {stream!r} "
                       f"(entities: {', '.join(streams[stream].entities)})")

    specs: list[tuple[str, str, str | None, dict]] = []  # (name, agg, column, params)
    seen_entity = False
    for item in sel.expressions:
        node, alias = (item.this, item.alias) if isinstance(item, exp.Alias) else (item, None)
        if isinstance(node, exp.Column):
            if node.name != entity:
                raise _err(f"select item {_q(item)} is neither the GROUP BY entity {entity!r} "
                           "nor an aggregate")
            if alias is not None and alias != entity:
                raise _err(f"the entity column cannot be renamed ({_q(item)})")
            if seen_entity:
                raise _err(f"the entity column {entity!r} is selected twice")
            seen_entity = True
            continue
        agg, column, params = _aggregate(node)
        name = alias if alias is not None else \
            f"{stream}_count" if column is None else f"{stream}_{agg}_{column}"
        specs.append((name, agg, column, params))
    if not seen_entity:
        raise _err(f"the GROUP BY entity {entity!r} must be a SELECT item")
    if not specs:
        raise _err("at least one aggregate is required")
    names = [s[0] for s in specs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise _err(f"duplicate feature names {dups}; give each aggregate a distinct alias")
    for name in names:
        _check(name, "feature")

    where = sel.args.get("where")
    where_sql = None
    if where is not None:
        where_sql = Predicate.parse(where.this.sql(comments=False), feature=names[0]).sql
    try:
        return [Feature(name=name, stream=stream, entity=entity, agg=agg, column=column, window=window,
                        where=where_sql, description=description, **params) for name, agg, column, params in specs]
    except AggregateError as e:  # a parameter out of range (k, q)
        raise SqlError(str(e)) from None


def _check(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except DefinitionError as e:
        raise SqlError(str(e)) from None


def _from(sel: exp.Select) -> tuple[str, set[str]]:
    """The stream named in FROM, and the names that may qualify its columns."""
    frm = sel.args.get("from_") or sel.args.get("from")
    if frm is None:
        raise _err("FROM <stream> is required")
    table = frm.this
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        raise _err(f"FROM takes one stream name, got {_q(frm)} (no subqueries, functions or joins)")
    if any(v for k, v in table.args.items() if k not in ("this", "alias")):
        raise _err(f"FROM takes a plain stream name, got {_q(table)}")
    stream = _check(table.name, "stream")
    aliases = {stream}
    alias = table.args.get("alias")
    if alias is not None:
        if alias.args.get("columns"):
            raise _err(f"FROM takes a plain stream name, got {_q(table)}")
        aliases.add(alias.name)
    return stream, aliases


def _unqualify(col: exp.Column, aliases: set[str]) -> None:
    if col.args.get("db") or col.args.get("catalog"):
        raise _err(f"column {_q(col)} has too many qualifiers")
    if col.table:
        if col.table not in aliases:
            raise _err(f"column {_q(col)} is qualified by {col.table!r}, which is not the FROM stream")
        col.set("table", None)


def _aggregate(node: exp.Expression) -> tuple[str, str | None, dict]:
    """(rayfs aggregate, column or None, parameters) of one aggregate select item."""
    if isinstance(node, exp.Window):
        raise _err(f"window functions are not supported ({_q(node)}); pass window= instead")
    if isinstance(node, exp.Count):
        if any(v for k, v in node.args.items() if k not in ("this", "big_int")):
            raise _err(f"unsupported aggregate {_q(node)}")
        arg = node.this
        if isinstance(arg, exp.Star) or (isinstance(arg, exp.Literal) and not arg.is_string
                                        and arg.this == "1"):
            return "count", None, {}
        if isinstance(arg, exp.Distinct):
            if len(arg.expressions) != 1 or any(v for k, v in arg.args.items() if k != "expressions"):
                raise _err(f"COUNT(DISTINCT ...) takes one column, got {_q(node)}")
            return "count_distinct", _column(arg.expressions[0], node), {}
        return "count", _column(arg, node), {}
    if isinstance(node, exp.ApproxQuantile):
        if any(v for k, v in node.args.items() if k not in ("this", "quantile")) or node.args.get("quantile") is None:
            raise _err(f"APPROX_QUANTILE takes a column and a quantile, got {_q(node)}")
        return "approx_quantile", _column(node.this, node), {"q": _param(node.args["quantile"], "q", node)}
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in _PARAM_AGGS:
        agg, param = _PARAM_AGGS[str(node.this).lower()]
        if len(node.expressions) != 2:
            raise _err(f"{str(node.this).upper()} takes a column and {param}, got {_q(node)}")
        return agg, _column(node.expressions[0], node), {param: _param(node.expressions[1], param, node)}
    if type(node) in _AGG_CLASSES:
        agg, args = _AGG_CLASSES[type(node)], node.args
        extra = any(v for k, v in args.items() if k != "this")
    elif isinstance(node, exp.Anonymous) and str(node.this).lower() in _AGG_NAMES:
        agg = _AGG_NAMES[str(node.this).lower()]
        if len(node.expressions) != 1:
            raise _err(f"{str(node.this).upper()} takes one column, got {_q(node)}")
        return agg, _column(node.expressions[0], node), {}
    else:
        what = "function" if isinstance(node, exp.Func) else "expression"
        raise _err(f"select item {_q(node)} is an unsupported {what}; expected the entity or an aggregate")
    if extra:
        raise _err(f"unsupported aggregate {_q(node)} (one plain column, no DISTINCT or extra arguments)")
    return agg, _column(node.this, node), {}


def _param(arg: exp.Expression, param: str, agg: exp.Expression) -> int | float:
    """The value of parameter ``k`` (an integer literal) or ``q`` (a number literal) of an aggregate."""
    if isinstance(arg, exp.Literal) and not arg.is_string:
        text = str(arg.this)
        if param == "k" and text.isdigit():
            return int(text)
        if param == "q":
            try:
                return float(text)
            except ValueError:
                pass
    what = "an integer literal" if param == "k" else "a number literal in [0, 1]"
    raise _err(f"the {param} of {_q(agg)} must be {what}, got {_q(arg)}")


def _column(arg: exp.Expression | None, agg: exp.Expression) -> str:
    if isinstance(arg, exp.Distinct):
        raise _err(f"DISTINCT is only supported in COUNT(DISTINCT col), got {_q(agg)}")
    if not isinstance(arg, exp.Column) or not isinstance(arg.this, exp.Identifier):
        raise _err(f"aggregate {_q(agg)} must take one plain column (no arithmetic, literals or functions)")
    return _check(arg.name, f"aggregate {agg.sql(comments=False)!r} column")
