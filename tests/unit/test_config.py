"""rayfs.model.config: TOML store configs, their validation and error locations (file:line: key)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from rayfs.errors import ConfigError, DefinitionError, OptionError
from rayfs.model.config import KeyLines, StoreConfig, StoreSettings, dump_config, load_config, parse_config
from rayfs.model.definitions import Feature, Stream
from rayfs.model.sql import features_from_sql

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
[store]
name = "reddit"
path = "data/reddit"
shards = 4
durability = "group"
namespace = "ml"

[[streams]]
name = "upvotes"
entities = ["user", "post", "subreddit"]
timestamp = "ts"

[[features]]
name = "user_upvotes_7d"
stream = "upvotes"
entity = "user"
agg = "count"
window = "7d"
where = "score > 0"
description = "Positive upvotes, last 7 days"
owner = "ranking"
tags = ["engagement", "user"]

[[features]]
name = "post_score_sum"
stream = "upvotes"
entity = "post"
agg = "SUM"
column = "score"

[[sql]]
query = "SELECT user, COUNT(DISTINCT subreddit) AS user_subreddits FROM upvotes GROUP BY user"
window = "30d"
description = "Distinct subreddits"
owner = "ranking"
tags = ["diversity"]
"""


def parse(text: str, **kw) -> StoreConfig:
    return parse_config(textwrap.dedent(text), "cfg.toml", base_dir="/base", **kw)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def replace_line(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# ---------------------------------------------------------------------------------------------------
# Good configs
# ---------------------------------------------------------------------------------------------------


def test_good_config() -> None:
    cfg = parse(GOOD)
    assert cfg.source == "cfg.toml"
    assert cfg.store == StoreSettings(path="/base/data/reddit", name="reddit", shards=4, durability="group",
                                      namespace="ml")
    assert cfg.streams == (Stream(name="upvotes", entities=("user", "post", "subreddit"), timestamp="ts"),)
    assert [f.name for f in cfg.features] == ["user_upvotes_7d", "post_score_sum", "user_subreddits"]
    f0, f1, f2 = cfg.features
    assert f0 == Feature(name="user_upvotes_7d", stream="upvotes", entity="user", agg="count", window="7d",
                         where="score > 0")
    assert (f0.description, f0.owner, f0.tags) == ("Positive upvotes, last 7 days", "ranking", ("engagement", "user"))
    assert (f1.agg, f1.column, f1.window, f1.description, f1.owner, f1.tags) == ("sum", "score", None, "", "", ())
    assert f2 == Feature(name="user_subreddits", stream="upvotes", entity="user", agg="count_distinct",
                         column="subreddit", window="30d")
    assert (f2.description, f2.owner, f2.tags) == ("Distinct subreddits", "ranking", ("diversity",))
    assert cfg.stream_map["upvotes"] is cfg.streams[0]
    assert cfg.feature_map["post_score_sum"] is f1


def test_minimal_config_defaults() -> None:
    cfg = parse('[store]\npath = "/abs/store"\n')
    assert cfg.store == StoreSettings(path="/abs/store", name=None, shards=None, durability="sync", namespace="rayfs")
    assert cfg.streams == () and cfg.features == ()
    assert cfg.store.open_kwargs() == {"path": "/abs/store", "shards": None, "name": None, "namespace": "rayfs",
                                       "durability": "sync", "online_table": False}


def test_online_table_can_be_turned_on_and_round_trips() -> None:
    cfg = parse('[store]\npath = "/abs/store"\nonline_table = true\n')
    assert cfg.store.online_table is True and cfg.store.open_kwargs()["online_table"] is True
    assert parse(dump_config(cfg)).store == cfg.store
    with pytest.raises(ConfigError, match="online_table"):
        parse('[store]\npath = "/abs/store"\nonline_table = "no"\n')


def test_feature_parameters_k_q_and_int_q() -> None:
    from rayfs.aggregates import REGISTRY

    text = GOOD + '\n[[features]]\nname = "p"\nstream = "upvotes"\nentity = "user"\nagg = "mean"\ncolumn = "x"\n'
    text += 'q = 1\n'  # an integer where a number is expected: fine for the type check, refused by mean
    e = error(text)
    assert (e.line, e.key) == (44, "features[2].q") and "takes no parameter q" in str(e)
    with_k = [a for a, cls in REGISTRY.items() if "k" in getattr(cls, "params", {})]
    if with_k:  # aggregates with parameters exist once the sketch aggregates land
        cfg = parse(GOOD + f'\n[[features]]\nname = "p"\nstream = "upvotes"\nentity = "user"\nagg = "{with_k[0]}"'
                           '\ncolumn = "score"\nk = 3\n')
        assert cfg.feature_map["p"].k == 3


def test_sql_multiline_query_where_and_several_features() -> None:
    cfg = parse('''
        [store]
        path = "s"
        [[streams]]
        name = "clicks"
        entities = ["user"]
        timestamp = "ts"
        [[sql]]
        query = """
        SELECT user, COUNT(*) AS n, AVG(price) AS mean_price
        FROM clicks WHERE price > 0 GROUP BY user
        """
        ''')
    assert [(f.name, f.agg, f.column, f.where, f.window) for f in cfg.features] == [
        ("n", "count", None, "price > 0", None), ("mean_price", "mean", "price", "price > 0", None)]


def test_windows_are_canonicalised_like_the_api() -> None:
    cfg = parse(replace_line(GOOD, 'window = "7d"', 'window = "1w"'))
    assert cfg.features[0].window == "7d"


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


def test_relative_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").mkdir()
    cfg_file = tmp_path / "configs" / "s.toml"
    cfg_file.write_text('[store]\npath = "../data/s"\n')
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = load_config(cfg_file)
    assert cfg.store.path == str(tmp_path / "data" / "s")
    assert cfg.source == str(cfg_file)
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/s.toml").store.path == str(tmp_path / "data" / "s")  # relative config path too


def test_absolute_and_home_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert parse('[store]\npath = "/x/../y/store"\n').store.path == "/y/store"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse('[store]\npath = "~/st"\n').store.path == str(tmp_path / "st")


def test_parse_config_base_dir_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_config('[store]\npath = "s"\n').store.path == str(tmp_path / "s")  # "<string>": the CWD
    assert parse_config('[store]\npath = "s"\n', "/etc/cfg/x.toml").store.path == "/etc/cfg/s"
    assert parse_config('[store]\npath = "s"\n', base_dir=tmp_path / "b").store.path == str(tmp_path / "b" / "s")


# ---------------------------------------------------------------------------------------------------
# Errors, each with its exact line
# ---------------------------------------------------------------------------------------------------


def test_error_is_a_definition_error_with_fields() -> None:
    e = error(replace_line(GOOD, 'agg = "count"', 'agg = "cnt"'))
    assert isinstance(e, DefinitionError)
    assert (e.source, e.line, e.key) == ("cfg.toml", 17, "features[0].agg")
    assert str(e).startswith("cfg.toml:17: features[0].agg: feature 'user_upvotes_7d': unknown aggregate 'cnt'; "
                             "supported: ")
    assert e.reason.startswith("feature 'user_upvotes_7d': unknown aggregate")


def test_toml_syntax_error_has_file_and_line() -> None:
    e = error(replace_line(GOOD, 'shards = 4', 'shards 4'))
    assert (e.line, e.key) == (4, "")
    assert str(e).startswith("cfg.toml:4: invalid TOML: ")
    e = error(GOOD + "\n[[features]\n")
    assert e.line == 38
    e = error('[store]\npath = "s"\nshards = 4\nshards = 5\n')  # duplicate key: a TOML error
    assert e.line == 4 and "invalid TOML" in str(e)
    e = error('[store]\npath = [1,\n')  # at end of document
    assert e.line == 2 and "end of document" in str(e)


@pytest.mark.parametrize(("old", "new", "line", "key", "words"), [
    ('entities = ["user", "post", "subreddit"]', 'entitiy = ["user"]', 10, "streams[0].entitiy",
     ["unknown key 'entitiy'", "did you mean 'entities'?", "allowed keys: name, entities, timestamp"]),
    ('shards = 4', 'shard = 4', 4, "store.shard", ["unknown key 'shard'", "did you mean 'shards'?"]),
    ('entity = "post"', 'entity = "post"\nwindw = "1d"', 28, "features[1].windw",
     ["unknown key 'windw'", "did you mean 'window'?"]),
    ('window = "30d"', 'window = "30d"\nname = "x"', 34, "sql[0].name",
     ["unknown key 'name'", "allowed keys: query, window, description, owner, tags"]),
])
def test_unknown_keys(old: str, new: str, line: int, key: str, words: list[str]) -> None:
    e = error(replace_line(GOOD, old, new))
    assert (e.line, e.key) == (line, key), str(e)
    for w in words:
        assert w in str(e)


def test_unknown_top_level_table() -> None:
    e = error(GOOD + "\n[[feature]]\nname = 'x'\n")
    assert (e.line, e.key) == (38, "feature")
    assert "did you mean 'features'?" in str(e) and "allowed keys: store, streams, features, sql" in str(e)


@pytest.mark.parametrize(("old", "new", "line", "key", "words"), [
    ('shards = 4', 'shards = "4"', 4, "store.shards", ["expected an integer, got a string ('4')"]),
    ('shards = 4', 'shards = true', 4, "store.shards", ["expected an integer, got a boolean"]),
    ('shards = 4', 'shards = 0', 4, "store.shards", ["must be a positive integer"]),
    ('path = "data/reddit"', 'path = 3', 3, "store.path", ["expected a string, got an integer"]),
    ('path = "data/reddit"', 'path = ""', 3, "store.path", ["must not be empty"]),
    ('durability = "group"', 'durability = "fast"', 5, "store.durability", ["must be one of sync, group, none"]),
    ('name = "reddit"', 'name = "my store"', 2, "store.name", ["must be a non-empty identifier"]),
    ('entities = ["user", "post", "subreddit"]', 'entities = "user"', 10, "streams[0].entities",
     ["expected an array, got a string"]),
    ('entities = ["user", "post", "subreddit"]', 'entities = ["user", 3]', 10, "streams[0].entities",
     ["item 1 is an integer"]),
    ('entities = ["user", "post", "subreddit"]', 'entities = []', 10, "streams[0].entities",
     ["needs at least one entity field"]),
    ('entities = ["user", "post", "subreddit"]', 'entities = ["user", "user"]', 10, "streams[0].entities",
     ["duplicate entity fields"]),
    ('entities = ["user", "post", "subreddit"]', 'entities = ["user", "ts"]', 11, "streams[0].timestamp",
     ["cannot be an entity"]),
    ('timestamp = "ts"', 'timestamp = "t s"', 11, "streams[0].timestamp", ["must be a non-empty identifier"]),
    ('window = "7d"', 'window = 7', 18, "features[0].window", ["expected a string, got an integer"]),
    ('window = "7d"', 'window = "7x"', 18, "features[0].window", ["bad window '7x'"]),
    ('window = "7d"', 'window = "0d"', 18, "features[0].window", ["must be positive"]),
    ('where = "score > 0"', 'where = "score >"', 19, "features[0].where", ["feature 'user_upvotes_7d'"]),
    ('where = "score > 0"', 'where = "1 > \'a\'"', 19, "features[0].where", ["type mismatch"]),
    ('tags = ["engagement", "user"]', 'tags = "engagement"', 22, "features[0].tags", ["expected an array"]),
    ('tags = ["engagement", "user"]', 'tags = [""]', 22, "features[0].tags", ["tags must be non-empty strings"]),
    ('owner = "ranking"\ntags = ["engagement"', 'owner = 5\ntags = ["engagement"', 21, "features[0].owner",
     ["expected a string, got an integer"]),
    ('agg = "SUM"', 'agg = "sum"\nk = 2', 29, "features[1].k", ["takes no parameter k"]),
    ('agg = "SUM"', 'agg = "sum"\nq = 0.5', 29, "features[1].q", ["takes no parameter q"]),
    ('agg = "SUM"', 'agg = "sum"\nk = 2.5', 29, "features[1].k", ["expected an integer, got a float"]),
    ('column = "score"', '', 28, "features[1].agg", ["aggregate 'sum' needs a column"]),
    ('column = "score"', 'column = "sco re"', 29, "features[1].column", ["must be a non-empty identifier"]),
    ('name = "post_score_sum"', 'name = "post-score"', 25, "features[1].name", ["must be a non-empty identifier"]),
    ('stream = "upvotes"\nentity = "post"', 'stream = "upvote"\nentity = "post"', 26, "features[1].stream",
     ["unknown stream 'upvote'", "streams in this config: upvotes"]),
    ('entity = "post"', 'entity = "author"', 27, "features[1].entity",
     ["groups by 'author', which is not an entity of stream 'upvotes'", "entities: user, post, subreddit"]),
    ('query = "SELECT user, COUNT(DISTINCT subreddit) AS user_subreddits FROM upvotes GROUP BY user"',
     'query = "SELECT user, COUNT(DISTINCT subreddit) FROM upvotes"', 32, "sql[0].query",
     ["GROUP BY <entity> is required"]),
    ('query = "SELECT user, COUNT(DISTINCT subreddit) AS user_subreddits FROM upvotes GROUP BY user"',
     'query = "SELECT user, COUNT(*) FROM clicks GROUP BY user"', 32, "sql[0].query",
     ["SQL reads unknown stream 'clicks'"]),
    ('query = "SELECT user, COUNT(DISTINCT subreddit) AS user_subreddits FROM upvotes GROUP BY user"',
     'query = "SELECT ts, COUNT(*) FROM upvotes GROUP BY ts"', 32, "sql[0].query",
     ["groups by 'ts', which is not an entity"]),
    ('window = "30d"', 'window = "month"', 33, "sql[0].window", ["bad window 'month'"]),
    ('tags = ["diversity"]', 'tags = ["diversity", 1]', 36, "sql[0].tags", ["item 1 is an integer"]),
])
def test_invalid_values(old: str, new: str, line: int, key: str, words: list[str]) -> None:
    e = error(replace_line(GOOD, old, new))
    assert (e.line, e.key) == (line, key), str(e)
    assert str(e).startswith(f"cfg.toml:{line}: {key}: ")
    for w in words:
        assert w in str(e), str(e)


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    ('[stor]\npath = "x"\n', 1, "stor", ["unknown key 'stor'", "did you mean 'store'?"]),
    ('x = 1\n', 1, "x", ["unknown key 'x'"]),
    ('[[streams]]\nname = "s"\n', None, "", ["missing required key 'store'"]),
    ('[store]\nname = "s"\n', 1, "store", ["missing required key 'path'"]),
    ('store = 3\n', 1, "store", ["expected a table ([store]), got an integer"]),
    ('[store]\npath = "s"\n[streams]\nname = "s"\n', 3, "streams",
     ["expected an array of tables ([[streams]] sections), got a table"]),
    ('[store]\npath = "s"\n\n[[streams]]\nname = "s"\ntimestamp = "ts"\n', 4, "streams[0]",
     ["missing required key 'entities'"]),
    ('[store]\npath = "s"\n[[streams]]\nname = "s"\nentities = ["u"]\ntimestamp = "ts"\n[[features]]\n'
     'name = "f"\nstream = "s"\nagg = "count"\n', 7, "features[0]", ["missing required key 'entity'"]),
    ('[store]\npath = "s"\n[[sql]]\nwindow = "1d"\n', 3, "sql[0]", ["missing required key 'query'"]),
    ('[store]\npath = "s"\nshards = 1970-01-01\n', 3, "store.shards", ["expected an integer, got a date"]),
])
def test_structure_errors(text: str, line: int | None, key: str, words: list[str]) -> None:
    e = error(text)
    assert (e.line, e.key) == (line, key), str(e)
    for w in words:
        assert w in str(e), str(e)


def test_error_without_a_line_omits_it() -> None:
    e = error('[[streams]]\nname = "s"\n')
    assert str(e) == "cfg.toml: missing required key 'store'"


def test_duplicate_stream_names_both_lines() -> None:
    text = GOOD + '\n[[streams]]\nname = "upvotes"\nentities = ["user"]\ntimestamp = "ts"\n'
    e = error(text)
    assert (e.line, e.key) == (39, "streams[1].name")
    assert "duplicate stream name 'upvotes' (first defined at line 9, streams[0].name)" in str(e)


def test_duplicate_feature_names_both_lines() -> None:
    text = GOOD + '\n[[features]]\nname = "user_upvotes_7d"\nstream = "upvotes"\nentity = "post"\nagg = "count"\n'
    e = error(text)
    assert (e.line, e.key) == (39, "features[2].name")
    assert "duplicate feature name 'user_upvotes_7d' (first defined at line 14, features[0].name)" in str(e)


def test_duplicate_between_features_and_sql() -> None:
    text = replace_line(GOOD, "AS user_subreddits", "AS post_score_sum")
    e = error(text)
    assert (e.line, e.key) == (32, "sql[0].query")
    assert "duplicate feature name 'post_score_sum' (first defined at line 25, features[1].name)" in str(e)
    two_sql = GOOD + '\n[[sql]]\nquery = "SELECT post, COUNT(*) AS user_subreddits FROM upvotes GROUP BY post"\n'
    e = error(two_sql)
    assert (e.line, e.key) == (39, "sql[1].query")
    assert "first defined at line 32, sql[0].query" in str(e)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config: No such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[store]\npath = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml:2: invalid TOML: not UTF-8"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(replace_line(GOOD, 'agg = "count"', 'agg = "cnt"'))
    with pytest.raises(ConfigError) as info:
        load_config(wrong)
    assert str(info.value).startswith(f"{wrong}:17: features[0].agg: ")
    for path in (None, 5, ["a.toml"]):
        with pytest.raises(OptionError, match=f"path of a TOML file.*not {type(path).__name__}"):
            load_config(path)


def test_inline_tables_fall_back_to_the_enclosing_key_line() -> None:
    text = ('\nstreams = [\n  {name = "s", entities = ["u"], timestamp = "ts"},\n'
            '  {name = "t", entities = ["u"], timestamp = "ts", extra = 1},\n]\n[store]\npath = "s"\n')
    e = error(text)
    assert (e.line, e.key) == (2, "streams[1].extra")


# ---------------------------------------------------------------------------------------------------
# The line finder
# ---------------------------------------------------------------------------------------------------


def test_key_lines_headers_keys_and_arrays() -> None:
    text = textwrap.dedent('''\
        # comment with key = "value"
        top = 1
        [store]
          path = "a"   # trailing = comment
        "quoted key" = 2
        dotted.key = 3
        [[features]]
        name = "a"
        [[features]]
        name = "b"
        [features.meta]
        x = 1
        [[other.list]]
        y = 1
        ''')
    kl = KeyLines(text)
    assert kl.line_of(("top",)) == 2
    assert kl.line_of(("store",)) == 3
    assert kl.line_of(("store", "path")) == 4
    assert kl.line_of(("store", "quoted key")) == 5
    assert kl.line_of(("store", "dotted")) == 6 and kl.line_of(("store", "dotted", "key")) == 6
    assert kl.line_of(("features",)) == 7  # an array of tables: its first entry
    assert kl.line_of(("features", 0)) == 7 and kl.line_of(("features", 0, "name")) == 8
    assert kl.line_of(("features", 1)) == 9 and kl.line_of(("features", 1, "name")) == 10
    assert kl.line_of(("features", 1, "meta")) == 11 and kl.line_of(("features", 1, "meta", "x")) == 12
    assert kl.line_of(("other", "list", 0, "y")) == 14
    assert kl.line_of(("missing",)) is None
    assert kl.line_of(("store", "nope")) == 3


def test_key_lines_skips_multiline_strings_and_arrays() -> None:
    text = textwrap.dedent('''\
        [store]
        a = """
        b = 1
        [fake]
        still in the string \\""" ""
        """
        c = [
          "d = 2",
          [3, 4],
          { e = 5 },
        ]
        f = \'\'\'
        g = 6 \'\'\'
        h = "x = [" # [
        i = 7
        j = """quote at the end"""""
        k = 8
        ''')
    kl = KeyLines(text)
    assert kl.line_of(("store", "a")) == 2
    assert kl.line_of(("store", "b")) == 1 and kl.line_of(("fake",)) is None
    assert kl.line_of(("store", "c")) == 7
    assert kl.line_of(("store", "d")) == 1 and kl.line_of(("store", "e")) == 1
    assert kl.line_of(("store", "f")) == 12 and kl.line_of(("store", "g")) == 1
    assert kl.line_of(("store", "h")) == 14
    assert kl.line_of(("store", "i")) == 15
    assert kl.line_of(("store", "j")) == 16
    assert kl.line_of(("store", "k")) == 17


def test_key_lines_crlf_and_quoted_headers() -> None:
    text = '[store]\r\npath = "a"\r\n[[ "features" ]]\r\n"na.me" = 1\r\n'
    kl = KeyLines(text)
    assert kl.line_of(("store", "path")) == 2
    assert kl.line_of(("features", 0)) == 3
    assert kl.line_of(("features", 0, "na.me")) == 4


def test_crlf_config_errors_have_lines() -> None:
    e = error(replace_line(GOOD, 'agg = "count"', 'agg = "cnt"').replace("\n", "\r\n"))
    assert e.line == 17


# ---------------------------------------------------------------------------------------------------
# Writing and the example configs
# ---------------------------------------------------------------------------------------------------


def _meta(cfg: StoreConfig) -> list:
    return [(f.name, f.description, f.owner, f.tags) for f in cfg.features]


def test_to_toml_round_trips() -> None:
    cfg = parse(GOOD.replace('description = "Distinct subreddits"', 'description = "quote \\" and \\\\ é\\n"'))
    text = cfg.to_toml()
    again = parse_config(text, "cfg.toml")
    assert again == cfg
    assert _meta(again) == _meta(cfg)
    assert 'path = "/base/data/reddit"' in text
    assert 'path = "data/reddit"' in cfg.to_toml(relative_to="/base")
    assert parse_config(cfg.to_toml(relative_to="/base"), base_dir="/base") == dataclasses.replace(cfg,
                                                                                                    source="<string>")


@pytest.mark.parametrize("name", ["reddit.toml", "flights.toml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name)
    stem = name.removesuffix(".toml")
    assert cfg.store.path == str(ROOT / "data" / stem)
    assert cfg.store.name == stem
    assert cfg.features and all(f.description and f.owner and f.tags for f in cfg.features)
    assert parse_config(cfg.to_toml()) == dataclasses.replace(cfg, source="<string>")


def test_reddit_config_mirrors_the_demo() -> None:
    from rayfs.demo import SQL_FEATURES

    cfg = load_config(ROOT / "configs" / "reddit.toml")
    assert cfg.streams == (Stream(name="upvotes", entities=("user", "post"), timestamp="ts"),)
    expected = [Feature(name="user_upvotes_7d", stream="upvotes", entity="user", agg="count", window="7d"),
                Feature(name="user_upvotes", stream="upvotes", entity="user", agg="count")]
    for sql, window in SQL_FEATURES:
        expected += features_from_sql(sql, window=window)
    assert list(cfg.features) == expected


def test_flights_config_features() -> None:
    cfg = load_config(ROOT / "configs" / "flights.toml")
    fm = cfg.feature_map
    assert cfg.streams[0].entities == ("carrier", "origin", "tail_number")
    assert (fm["carrier_mean_delay_7d"].agg, fm["carrier_mean_delay_7d"].window) == ("mean", "7d")
    assert fm["tail_last_dest"].agg == "last"
    assert fm["tail_miles_7d"].where == "cancelled = 0"
    assert len(cfg.features) == 12


def test_apply_registers_streams_then_features() -> None:
    calls = []

    class FakeStore:
        def register_stream(self, name, entities, timestamp):
            calls.append(("stream", name, tuple(entities), timestamp))

        def register_feature(self, f):
            calls.append(("feature", f.name))
            return f

    cfg = parse(GOOD)
    assert cfg.apply(FakeStore()) == list(cfg.features)
    assert calls == [("stream", "upvotes", ("user", "post", "subreddit"), "ts"),
                     ("feature", "user_upvotes_7d"), ("feature", "post_score_sum"), ("feature", "user_subreddits")]



def test_config_error_pickles() -> None:
    import pickle

    e = error(replace_line(GOOD, 'agg = "count"', 'agg = "cnt"'))
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is ConfigError and str(again) == str(e) and (again.line, again.key) == (17, "features[0].agg")


ON_DEMAND = """
[[on_demand]]
name = "root_n"
function = "math:sqrt"
inputs = ["n"]
request = ["lat"]
description = "a function named by its import path"
tags = ["demo"]
"""


def test_on_demand_tables_parse_round_trip_and_load() -> None:
    import math

    cfg = parse_config(GOOD + ON_DEMAND)
    (od,) = cfg.on_demand
    assert (od.name, od.function, od.inputs, od.request, od.tags) == ("root_n", "math:sqrt", ("n",), ("lat",),
                                                                      ("demo",))
    assert parse_config(dump_config(cfg)) == cfg
    assert od.load() is math.sqrt
    f = od.feature()
    assert (f.name, f.inputs, f.request, f.description) == ("root_n", ("n",), ("lat",), od.description)


@pytest.mark.parametrize(("edit", "match"), [
    (('function = "math:sqrt"', 'function = "math.sqrt"'), r"on_demand\[0\]\.function: .*import path"),
    (('function = "math:sqrt"', 'function = "math:"'), r"on_demand\[0\]\.function: .*import path"),
    (('function = "math:sqrt"\n', ""), r"on_demand\[0\].*function"),
    (('inputs = ["n"]', 'inputs = "n"'), r"on_demand\[0\]\.inputs: expected an array"),
    (('name = "root_n"', 'name = "x y"'), r"on_demand\[0\]\.name"),
    (("tags = [", "tagz = ["), r"unknown key 'tagz'"),
])
def test_on_demand_table_errors_name_the_table_and_key(edit: tuple[str, str], match: str) -> None:
    assert edit[0] in ON_DEMAND
    with pytest.raises(ConfigError, match=match):
        parse_config(GOOD + ON_DEMAND.replace(*edit))


def test_on_demand_names_are_unique_across_features() -> None:
    name = parse_config(GOOD).features[0].name
    with pytest.raises(ConfigError, match=f"duplicate feature name '{name}'"):
        parse_config(GOOD + ON_DEMAND.replace('name = "root_n"', f'name = "{name}"'))


@pytest.mark.parametrize(("function", "match"), [
    ("no_such_module_xyz:f", "ModuleNotFoundError"),
    ("math:no_such_attribute", "AttributeError"),
    ("math:pi", "not callable"),
])
def test_an_on_demand_function_that_cannot_be_loaded_is_a_definition_error(function: str, match: str) -> None:
    (od,) = parse_config(GOOD + ON_DEMAND.replace("math:sqrt", function)).on_demand
    with pytest.raises(DefinitionError, match=f"on-demand feature 'root_n': .*{match}"):
        od.load()
