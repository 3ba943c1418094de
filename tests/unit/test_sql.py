"""Tests of rayfs.model.sql.features_from_sql: SELECT statements -> Feature definitions."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from rayfs.errors import SqlError, UnknownStreamError
from rayfs.model.definitions import Feature, Stream
from rayfs.model.predicate import Predicate
from rayfs.model.sql import features_from_sql

STREAMS = {"clicks": Stream(name="clicks", entities=("user_id", "item_id"), timestamp="ts"),
           "orders": Stream(name="orders", entities=("user_id",), timestamp="ts")}


def one(select_item: str, **kw) -> Feature:
    fs = features_from_sql(f"SELECT user_id, {select_item} FROM clicks GROUP BY user_id", **kw)
    assert len(fs) == 1
    return fs[0]


@pytest.mark.parametrize("item, agg, column, name", [
    ("COUNT(*)", "count", None, "clicks_count"),
    ("COUNT(1)", "count", None, "clicks_count"),
    ("count(*)", "count", None, "clicks_count"),
    ("COUNT(score)", "count", "score", "clicks_count_score"),
    ("COUNT(DISTINCT item_id)", "count_distinct", "item_id", "clicks_count_distinct_item_id"),
    ("SUM(score)", "sum", "score", "clicks_sum_score"),
    ("sum(score)", "sum", "score", "clicks_sum_score"),
    ("AVG(score)", "mean", "score", "clicks_mean_score"),
    ("MEAN(score)", "mean", "score", "clicks_mean_score"),
    ("mean(score)", "mean", "score", "clicks_mean_score"),
    ("MIN(score)", "min", "score", "clicks_min_score"),
    ("MAX(score)", "max", "score", "clicks_max_score"),
    ("STDDEV(score)", "stddev", "score", "clicks_stddev_score"),
    ("STDDEV_SAMP(score)", "stddev", "score", "clicks_stddev_score"),
    ("VARIANCE(score)", "variance", "score", "clicks_variance_score"),
    ("VAR_SAMP(score)", "variance", "score", "clicks_variance_score"),
    ("FIRST(score)", "first", "score", "clicks_first_score"),
    ("first(score)", "first", "score", "clicks_first_score"),
    ("LAST(score)", "last", "score", "clicks_last_score"),
    ("FIRST_VALUE(score)", "first", "score", "clicks_first_score"),
    ("LAST_VALUE(score)", "last", "score", "clicks_last_score"),
    ("Sum(Score)", "sum", "Score", "clicks_sum_Score"),
    ('SUM("Score")', "sum", "Score", "clicks_sum_Score"),
])
def test_each_aggregate_and_default_name(item, agg, column, name):
    f = one(item)
    assert (f.name, f.agg, f.column, f.stream, f.entity) == (name, agg, column, "clicks", "user_id")
    assert f.window is None and f.where is None and f.description == ""


@pytest.mark.parametrize("item, name", [
    ("COUNT(*) AS n_clicks", "n_clicks"), ("SUM(score) total", "total"),
    ('MAX(score) AS "MaxScore"', "MaxScore"), ("AVG(score) AS Avg_Score", "Avg_Score"),
])
def test_alias_is_the_name(item, name):
    assert one(item).name == name


def test_full_statement_window_where_description():
    fs = features_from_sql(
        "select user_id, count(*) as n, avg(amount), max(amount) as biggest from orders "
        "where status = 'paid' and amount is not null group by user_id",
        window="7d", streams=STREAMS, description="order stats")
    assert [f.name for f in fs] == ["n", "orders_mean_amount", "biggest"]
    assert all(f.window == "7d" and f.description == "order stats" and f.stream == "orders" for f in fs)
    where = Predicate.parse("status = 'paid' AND NOT amount IS NULL").sql
    assert all(f.where == where for f in fs)
    assert Predicate.parse(fs[0].where).sql == fs[0].where


@pytest.mark.parametrize("window, expected", [(None, None), ("3h", "3h"), (dt.timedelta(minutes=90), "90m")])
def test_window_passed_through(window, expected):
    assert one("COUNT(*)", window=window).window == expected


def test_entity_position_and_order_of_features():
    fs = features_from_sql("SELECT SUM(a), user_id, MIN(b) FROM clicks GROUP BY user_id")
    assert [(f.agg, f.column) for f in fs] == [("sum", "a"), ("min", "b")]
    assert all(f.entity == "user_id" for f in fs)


def test_qualified_columns_by_stream_or_alias():
    fs = features_from_sql("SELECT c.user_id, SUM(c.score), MAX(clicks.score) AS m FROM clicks AS c "
                           "WHERE c.score > 0 GROUP BY c.user_id")
    assert [(f.name, f.column, f.entity) for f in fs] == [("clicks_sum_score", "score", "user_id"),
                                                        ("m", "score", "user_id")]
    assert fs[0].where == "score > 0"


def test_entity_may_be_aliased_to_itself_and_identifiers_keep_case():
    fs = features_from_sql('SELECT "UserId" AS "UserId", COUNT(*) FROM "Clicks" GROUP BY "UserId"')
    assert (fs[0].name, fs[0].stream, fs[0].entity) == ("Clicks_count", "Clicks", "UserId")


def test_streams_check():
    fs = features_from_sql("SELECT item_id, COUNT(*) FROM clicks GROUP BY item_id", streams=STREAMS)
    assert fs[0].entity == "item_id"
    with pytest.raises(UnknownStreamError, match="'views'"):
        features_from_sql("SELECT user_id, COUNT(*) FROM views GROUP BY user_id", streams=STREAMS)
    with pytest.raises(SqlError) as ei:
        features_from_sql("SELECT ts, COUNT(*) FROM clicks GROUP BY ts", streams=STREAMS)
    assert "'ts'" in str(ei.value) and "user_id" in str(ei.value) and "item_id" in str(ei.value)
    # without streams, nothing is checked against a registry
    assert features_from_sql("SELECT ts, COUNT(*) FROM views GROUP BY ts")[0].entity == "ts"


def test_features_equal_across_spellings():
    a = features_from_sql("SELECT user_id, SUM(x) FROM clicks WHERE x>1 AND s!='a' GROUP BY user_id")
    b = features_from_sql("select user_id, sum(x) from clicks where (x > 1) and s <> 'a' group by user_id")
    assert a[0].where == "x > 1 AND s <> 'a'"
    assert b[0].where == "(x > 1) AND s <> 'a'"  # sqlglot keeps explicit parentheses
    assert a[0].name == b[0].name and a[0].agg == b[0].agg


@pytest.mark.parametrize("sql, culprit", [
    ("SELECT user_id, SUM(x) FROM clicks JOIN other ON clicks.a = other.a GROUP BY user_id", "JOIN"),
    ("SELECT user_id, SUM(x) FROM clicks, other GROUP BY user_id", "JOIN"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY user_id HAVING SUM(x) > 1", "HAVING"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY user_id ORDER BY user_id", "ORDER BY"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY user_id LIMIT 10", "LIMIT"),
    ("SELECT DISTINCT user_id, SUM(x) FROM clicks GROUP BY user_id", "DISTINCT"),
    ("WITH a AS (SELECT 1) SELECT user_id, SUM(x) FROM clicks GROUP BY user_id", "WITH"),
    ("SELECT user_id, SUM(x) FROM (SELECT * FROM clicks) GROUP BY user_id", "FROM"),
    ("SELECT user_id, SUM(x) FROM clicks WHERE x IN (SELECT y FROM t) GROUP BY user_id", "SELECT y"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY user_id; SELECT 1", "one SELECT"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY user_id UNION SELECT user_id, SUM(x) FROM clicks "
     "GROUP BY user_id", "UNION"),
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("SELECT user_id, SUM(x) OVER (PARTITION BY user_id) FROM clicks GROUP BY user_id", "OVER"),
    ("SELECT user_id, x, SUM(x) FROM clicks GROUP BY user_id", "'x'"),
    ("SELECT user_id, SUM(x * 2) FROM clicks GROUP BY user_id", "SUM(x * 2)"),
    ("SELECT user_id, SUM(x + y) FROM clicks GROUP BY user_id", "SUM(x + y)"),
    ("SELECT user_id, SUM(1) FROM clicks GROUP BY user_id", "SUM(1)"),
    ("SELECT user_id, COUNT(2) FROM clicks GROUP BY user_id", "COUNT(2)"),
    ("SELECT user_id, SUM(x), SUM(x) FROM clicks GROUP BY user_id", "clicks_sum_x"),
    ("SELECT user_id, SUM(x) AS f, MAX(y) AS f FROM clicks GROUP BY user_id", "'f'"),
    ("SELECT user_id, COUNT(*), COUNT(1) FROM clicks GROUP BY user_id", "clicks_count"),
    ("SELECT user_id, SUM(x) FROM clicks", "GROUP BY"),
    ("SELECT user_id FROM clicks GROUP BY user_id", "aggregate"),
    ("SELECT SUM(x) FROM clicks GROUP BY user_id", "user_id"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY user_id, item_id", "GROUP BY user_id, item_id"),
    ("SELECT item_id, SUM(x) FROM clicks GROUP BY user_id", "item_id"),
    ("SELECT user_id, SUM(x) FROM clicks GROUP BY 1", "GROUP BY 1"),
    ("SELECT user_id AS u, SUM(x) FROM clicks GROUP BY user_id", "user_id AS u"),
    ("SELECT user_id, user_id, SUM(x) FROM clicks GROUP BY user_id", "user_id"),
    ("SELECT user_id, STDDEV_POP(x) FROM clicks GROUP BY user_id", "STDDEV_POP(x)"),
    ("SELECT user_id, VAR_POP(x) FROM clicks GROUP BY user_id", "_POP(x)"),
    ("SELECT user_id, MEDIAN(x) FROM clicks GROUP BY user_id", "MEDIAN(x)"),
    ("SELECT user_id, ABS(x) FROM clicks GROUP BY user_id", "ABS(x)"),
    ("SELECT user_id, SUM(DISTINCT x) FROM clicks GROUP BY user_id", "SUM(DISTINCT x)"),
    ("SELECT user_id, COUNT(DISTINCT x, y) FROM clicks GROUP BY user_id", "COUNT(DISTINCT x, y)"),
    ("SELECT user_id, MAX(x, y) FROM clicks GROUP BY user_id", "MAX(x, y)"),
    ("SELECT user_id, MEAN(x, y) FROM clicks GROUP BY user_id", "MEAN(x, y)"),
    ("SELECT user_id, COUNT(x) FILTER (WHERE x > 1) FROM clicks GROUP BY user_id", "FILTER"),
    ("SELECT user_id, SUM(ABS(x)) FROM clicks GROUP BY user_id", "SUM(ABS(x))"),
    ("SELECT *, COUNT(*) FROM clicks GROUP BY user_id", "'*'"),
    ("SELECT user_id, 1 FROM clicks GROUP BY user_id", "'1'"),
    ("SELECT user_id, SUM(t.x) FROM clicks GROUP BY user_id", "t.x"),
    ("SELECT user_id, SUM(x) FROM db.clicks GROUP BY user_id", "db.clicks"),
    ("SELECT user_id, SUM(x) FROM clicks WHERE ABS(x) > 1 GROUP BY user_id", "ABS(x)"),
    ("SELECT user_id, SUM(x) FROM clicks WHERE x + 1 GROUP BY user_id", "x + 1"),
    ("SELECT user_id, SUM(x) FROM clicks WHERE GROUP BY user_id", "cannot parse"),
    ("SELECT user_id, SUM(x FROM clicks GROUP BY user_id", "cannot parse"),
    ("SELECT user_id, SUM(x) FROM clicks WHERE s = 'oops GROUP BY user_id", "cannot parse"),
    ("SELEC user_id", "SELECT"),
    ("", "empty"),
    ("   ", "empty"),
])
def test_unsupported_statements(sql, culprit):
    with pytest.raises(SqlError) as ei:
        features_from_sql(sql)
    msg = str(ei.value)
    assert culprit in msg, msg
    assert "supported:" in msg


@pytest.mark.parametrize("sql, culprit", [
    ("SELECT user_id, SUM(x) AS \"bad name\" FROM clicks GROUP BY user_id", "bad name"),
    ('SELECT user_id, SUM("bad col") FROM clicks GROUP BY user_id', "bad col"),
    ('SELECT user_id, COUNT(*) FROM "bad stream" GROUP BY user_id', "bad stream"),
    ("SELECT user_id, SUM(x) FROM clicks WHERE x = 'a' AND 1 = 'b' GROUP BY user_id", "'b'"),
])
def test_bad_names_and_types(sql, culprit):
    with pytest.raises(SqlError, match=re.escape(culprit)):
        features_from_sql(sql)


def test_where_error_names_a_feature():
    with pytest.raises(SqlError, match="'total'"):
        features_from_sql("SELECT user_id, SUM(x) AS total FROM clicks WHERE x % 2 = 1 GROUP BY user_id")


def test_sqlglot_exceptions_never_leak():
    import sqlglot.errors

    for bad in ("SELECT (((", "SELECT user_id, COUNT(*) FROM clicks GROUP BY", "'", "SELECT user_id, `x"):
        with pytest.raises(SqlError) as ei:
            features_from_sql(bad)
        assert not isinstance(ei.value, sqlglot.errors.SqlglotError)
