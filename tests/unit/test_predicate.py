"""Tests of rayfs.model.predicate: parsing, canonical SQL, vectorised three-valued evaluation, errors."""

from __future__ import annotations

import itertools
import pickle
import random
import re

import numpy as np
import pandas as pd
import pytest

from rayfs.errors import SchemaError, SqlError
from rayfs.model.predicate import Predicate

NAN = np.nan


def ev(text: str, **cols) -> list[bool]:
    n = len(next(iter(cols.values()))) if cols else 1
    arrays = {k: (np.array(v, dtype=object) if any(isinstance(e, str) for e in v) or
                  (all(e is None for e in v)) else np.asarray(v)) for k, v in cols.items()}
    out = Predicate.parse(text).evaluate(arrays, n)
    assert out.dtype == bool and out.shape == (n,)
    return out.tolist()


def strs(*v) -> np.ndarray:
    return np.array(list(v), dtype=object)


# ------------------------------------------------------------------------------------------- parsing


def test_api_attributes():
    p = Predicate.parse('x > 1 and "My Col" <> \'a\'', feature="f")
    assert p.sql == "x > 1 AND \"My Col\" <> 'a'"
    assert p.columns == frozenset({"x", "My Col"})
    assert isinstance(p.columns, frozenset)


@pytest.mark.parametrize("a, b", [
    ("x>1", "x > 1"), ("x != 1", "x <> 1"), ("x IS NOT NULL", "NOT x IS NULL"),
    ("x not in (1,2)", "NOT x IN (1, 2)"), ("x > 1 -- comment", "x > 1"), ("  x  >  1 ", "x > 1"),
    ("s like 'a%'", "s LIKE 'a%'"), ("NOT (x > 1)", "not(x>1)"),
])
def test_canonical_sql_equal_for_equal_predicates(a, b):
    assert Predicate.parse(a).sql == Predicate.parse(b).sql
    assert Predicate.parse(a) == Predicate.parse(b)
    assert hash(Predicate.parse(a)) == hash(Predicate.parse(b))


def test_identifiers_case_preserving():
    assert Predicate.parse("X > 1").columns == {"X"}
    assert Predicate.parse("X > 1").sql != Predicate.parse("x > 1").sql
    assert Predicate.parse('"Amount" > 1').evaluate({"Amount": np.array([0, 2])}, 2).tolist() == [False, True]


@pytest.mark.parametrize("text", [
    "x > 1", "x = 1 AND s = 'a'", "NOT x IS NULL", "x IN (1, 2, NULL)", "NOT x IN (1)",
    "x BETWEEN -1 AND 2.5", "NOT x BETWEEN 1 AND 2", "s LIKE 'a%_'", "s NOT LIKE '%x'",
    "s LIKE 'a!%' ESCAPE '!'", "(x + 1) / 2 > -3", "b = TRUE", "b", "NOT (x > 1 OR y < 2) AND s <> 'it''s'",
    '"My Col" >= 1e3', "NULL", "TRUE", "x * y - 2 <= x / y",
])
def test_round_trip(text):
    p = Predicate.parse(text)
    assert Predicate.parse(p.sql).sql == p.sql
    assert pickle.loads(pickle.dumps(p)) == p


def test_repr_and_pickle_keeps_feature():
    p = Predicate.parse("x > 1", feature="feat")
    assert repr(p) == "Predicate('x > 1')"
    q = pickle.loads(pickle.dumps(p))
    with pytest.raises(SchemaError, match="feat"):
        q.evaluate({}, 1)


# ------------------------------------------------------------------------------------ constructs


@pytest.mark.parametrize("text, expected", [
    ("x = 2", [False, True, False, False]), ("x <> 2", [True, False, True, False]),
    ("x != 2", [True, False, True, False]), ("x < 2", [True, False, False, False]),
    ("x <= 2", [True, True, False, False]), ("x > 2", [False, False, True, False]),
    ("x >= 2", [False, True, True, False]), ("2 < x", [False, False, True, False]),
    ("x IS NULL", [False, False, False, True]), ("x IS NOT NULL", [True, True, True, False]),
    ("x IN (1, 3)", [True, False, True, False]), ("x NOT IN (1, 3)", [False, True, False, False]),
    ("x BETWEEN 2 AND 3", [False, True, True, False]), ("x NOT BETWEEN 2 AND 3", [True, False, False, False]),
    ("x + 1 = 3", [False, True, False, False]), ("x - 1 = 0", [True, False, False, False]),
    ("x * 2 = 6", [False, False, True, False]), ("x / 2 = 1.5", [False, False, True, False]),
    ("-x < -1", [False, True, True, False]), ("x > 1 AND x < 3", [False, True, False, False]),
    ("x < 2 OR x > 2", [True, False, True, False]), ("NOT x = 2", [True, False, True, False]),
    ("(x = 1 OR x = 3) AND NOT x = 3", [True, False, False, False]),
    ("x = 1.0", [True, False, False, False]), ("x > 1e0", [False, True, True, False]),
])
def test_numeric_float_with_nan(text, expected):
    assert ev(text, x=[1.0, 2.0, 3.0, NAN]) == expected


@pytest.mark.parametrize("text, expected", [
    ("i = 2", [False, True, False]), ("i / 2 = 1", [False, True, False]),
    ("i / 2 > 0.6", [False, True, True]), ("i * i > 3", [False, True, True]),
    ("i > 1.5", [False, True, True]), ("i IS NULL", [False, False, False]),
    ("i + x > 3", [False, False, True]), ("i IN (1, 2.0)", [True, True, False]),
])
def test_int_columns(text, expected):
    assert ev(text, i=np.array([1, 2, 3], dtype=np.int64), x=[1.0, NAN, 1.5]) == expected


def test_huge_int_literal_is_compared_as_float():
    i = np.array([0, 2**62], dtype=np.int64)
    assert Predicate.parse("i < 99999999999999999999999").evaluate({"i": i}, 2).tolist() == [True, True]


@pytest.mark.parametrize("text, expected", [
    ("s = 'b'", [False, True, False, False]), ("s <> 'b'", [True, False, True, False]),
    ("s < 'b'", [True, False, False, False]), ("s >= 'b'", [False, True, True, False]),
    ("s IN ('a', 'c')", [True, False, True, False]), ("s NOT IN ('a')", [False, True, True, False]),
    ("s BETWEEN 'b' AND 'c'", [False, True, True, False]), ("s IS NULL", [False, False, False, True]),
    ("s = t", [True, False, False, False]), ("s <> t", [False, True, False, False]),
    ("s = 'it''s'", [False, False, False, False]),
])
def test_string_columns_with_none(text, expected):
    assert ev(text, s=["a", "b", "c", None], t=["a", "x", None, "d"]) == expected


def test_bool_columns():
    b = np.array([True, False, True])
    assert Predicate.parse("b").evaluate({"b": b}, 3).tolist() == [True, False, True]
    assert Predicate.parse("NOT b").evaluate({"b": b}, 3).tolist() == [False, True, False]
    assert Predicate.parse("b = FALSE").evaluate({"b": b}, 3).tolist() == [False, True, False]
    assert Predicate.parse("b <> TRUE OR b IS NULL").evaluate({"b": b}, 3).tolist() == [False, True, False]
    nb = np.array([True, None, False], dtype=object)  # a nullable boolean column
    assert Predicate.parse("b").evaluate({"b": nb}, 3).tolist() == [True, False, False]
    assert Predicate.parse("NOT b").evaluate({"b": nb}, 3).tolist() == [False, False, True]
    assert Predicate.parse("b IS NULL").evaluate({"b": nb}, 3).tolist() == [False, True, False]
    assert Predicate.parse("(x > 1) = b").evaluate({"b": b, "x": np.array([2.0, 0.0, NAN])}, 3).tolist() \
        == [True, True, False]


def test_literal_only_predicates_broadcast():
    assert ev("TRUE", x=[1, 2]) == [True, True]
    assert ev("FALSE", x=[1, 2]) == [False, False]
    assert ev("NULL", x=[1, 2]) == [False, False]
    assert ev("1 < 2", x=[1, 2]) == [True, True]
    assert ev("NULL = NULL", x=[1, 2]) == [False, False]
    assert ev("NULL IS NULL", x=[1, 2]) == [True, True]
    assert ev("1 / 0 IS NULL", x=[1, 2]) == [True, True]
    assert Predicate.parse("TRUE").evaluate({}, 3).tolist() == [True, True, True]
    assert Predicate.parse("x > 1").evaluate({"x": np.array([], dtype=float)}, 0).tolist() == []


def test_comparison_with_null_literal_is_never_true():
    for text in ("x = NULL", "x <> NULL", "NOT x = NULL", "x > NULL OR x < NULL", "x + NULL > 0"):
        assert ev(text, x=[1.0, NAN]) == [False, False], text
    assert ev("x + NULL IS NULL", x=[1.0, NAN]) == [True, True]


# ------------------------------------------------------------------------------- division by zero


def test_division_by_zero_is_null():
    x, y = [1.0, 1.0, 0.0, -1.0, NAN, 4.0], [0.0, 0, 0.0, 0.0, 0.0, 2.0]
    assert ev("x / y IS NULL", x=x, y=y) == [True, True, True, True, True, False]
    assert ev("x / y > 0 OR x / y <= 0", x=x, y=y) == [False] * 5 + [True]
    assert ev("NOT x / y > 0", x=x, y=y) == [False] * 6
    i = np.array([1, 0, 6], dtype=np.int64)
    j = np.array([0, 0, 3], dtype=np.int64)
    assert Predicate.parse("i / j IS NULL").evaluate({"i": i, "j": j}, 3).tolist() == [True, True, False]
    assert Predicate.parse("i / j = 2").evaluate({"i": i, "j": j}, 3).tolist() == [False, False, True]


def test_nan_from_arithmetic_is_null():
    x = np.array([np.inf, 1.0])
    assert Predicate.parse("x - x IS NULL").evaluate({"x": x}, 2).tolist() == [True, False]


def test_no_numpy_warnings(recwarn):
    Predicate.parse("x / y > 0 AND x - x IS NULL").evaluate(
        {"x": np.array([1.0, np.inf, 0.0]), "y": np.array([0.0, 1.0, 0.0])}, 3)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ----------------------------------------------------------------------------------- three-valued

# T, F, U (unknown) produced from a numeric column (x > 0 with x = 1, -1, NaN) and a string column
# (s = 'y' with s = 'y', 'n', None).
TV = [True, False, None]
NUM_OF = {True: 1.0, False: -1.0, None: NAN}
STR_OF = {True: "y", False: "n", None: None}


def k_and(a, b):
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def k_or(a, b):
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def k_not(a):
    return None if a is None else not a


@pytest.mark.parametrize("kind_a, kind_b", [("num", "num"), ("num", "str"), ("str", "num"), ("str", "str")])
def test_kleene_truth_tables(kind_a, kind_b):
    pairs = list(itertools.product(TV, TV))
    cols, atoms = {}, []
    for name, kind, pick in (("a", kind_a, 0), ("b", kind_b, 1)):
        if kind == "num":
            cols[name] = np.array([NUM_OF[p[pick]] for p in pairs])
            atoms.append(f"{name} > 0")
        else:
            cols[name] = strs(*[STR_OF[p[pick]] for p in pairs])
            atoms.append(f"{name} = 'y'")
    pa, pb = atoms
    n = len(pairs)
    cases = {
        f"{pa} AND {pb}": [k_and(a, b) for a, b in pairs],
        f"{pa} OR {pb}": [k_or(a, b) for a, b in pairs],
        f"NOT {pa}": [k_not(a) for a, _ in pairs],
        f"NOT ({pa} AND {pb})": [k_not(k_and(a, b)) for a, b in pairs],
        f"NOT ({pa} OR {pb})": [k_not(k_or(a, b)) for a, b in pairs],
        f"NOT NOT {pa}": [a for a, _ in pairs],
        f"({pa}) IS NULL": [a is None for a, _ in pairs],
        f"NOT ({pa}) IS NULL AND NOT ({pa}) AND ({pb}) IS NULL": [a is False and b is None for a, b in pairs],
    }
    for text, truth in cases.items():
        got = Predicate.parse(text).evaluate(cols, n).tolist()
        assert got == [t is True for t in truth], text


def test_is_null_or_comparison_passes_nulls():
    assert ev("x IS NULL OR x > 1", x=[0.0, 2.0, NAN]) == [False, True, True]
    assert ev("s IS NULL OR s = 'a'", s=["a", "b", None]) == [True, False, True]
    assert ev("NOT (x > 1)", x=[0.0, 2.0, NAN]) == [True, False, False]
    assert ev("NOT (s = 'a')", s=["a", "b", None]) == [False, True, False]


# ------------------------------------------------------------------------------------ IN and nulls


def test_in_with_nulls():
    x = [1.0, 2.0, NAN]
    assert ev("x IN (1, NULL)", x=x) == [True, False, False]
    assert ev("NOT x IN (1, NULL)", x=x) == [False, False, False]  # 2 NOT IN (1, NULL) is unknown
    assert ev("x NOT IN (1, NULL)", x=x) == [False, False, False]
    assert ev("x NOT IN (1)", x=x) == [False, True, False]
    assert ev("x IN (NULL)", x=x) == [False, False, False]
    s = ["a", "b", None]
    assert ev("s IN ('a', NULL)", s=s) == [True, False, False]
    assert ev("s NOT IN ('a', NULL)", s=s) == [False, False, False]
    assert ev("s NOT IN ('a')", s=s) == [False, True, False]


def test_in_with_column_items_uses_three_valued_or():
    x, y = [1.0, 2.0, NAN, 4.0], [1.0, NAN, 3.0, 5.0]
    assert ev("x IN (y, 2)", x=x, y=y) == [True, True, False, False]
    assert ev("x NOT IN (y, 2)", x=x, y=y) == [False, False, False, True]
    assert ev("x NOT IN (y, 7)", x=x, y=y) == [False, False, False, True]


def test_between_with_nulls():
    assert ev("x BETWEEN lo AND 5", x=[1.0, 3.0, NAN, 9.0], lo=[2.0, NAN, 0.0, NAN]) == [False] * 4
    assert ev("x NOT BETWEEN lo AND 5", x=[1.0, 3.0, NAN, 9.0], lo=[2.0, NAN, 0.0, NAN]) \
        == [True, False, False, True]  # 9 > 5 makes it FALSE whatever lo is


# ------------------------------------------------------------------------------------------ LIKE


@pytest.mark.parametrize("pattern, expected", [
    ("a%", [True, True, True, False, False, False, True]),
    ("%c", [True, False, False, False, True, False, False]),
    ("a_c", [True, False, False, False, False, False, False]),
    ("_", [False, True, False, False, False, False, False]),
    ("%", [True, True, True, True, True, False, True]),
    ("a%b%", [True, False, True, False, False, False, True]),
    ("A%", [False, False, False, False, False, False, False]),  # case-sensitive
    ("a.c", [False, False, False, False, False, False, False]),  # regex characters are literal
    ("a\nb", [False, False, False, False, False, False, True]),
    ("", [False, False, False, True, False, False, False]),
])
def test_like(pattern, expected):
    s = ["abc", "a", "axyb", "", "c.c", None, "a\nb"]
    esc = pattern.replace("'", "''")
    assert ev(f"s LIKE '{esc}'", s=s) == expected
    negated = [not e and v is not None for e, v in zip(expected, s, strict=True)]
    assert ev(f"s NOT LIKE '{esc}'", s=s) == negated


def test_like_escape():
    s = ["50%", "50x", "5_", "55"]
    assert ev("s LIKE '50!%' ESCAPE '!'", s=s) == [True, False, False, False]
    assert ev("s LIKE '5\\_' ESCAPE '\\'", s=s) == [False, False, True, False]
    assert ev("s LIKE '5_'", s=s) == [False, False, True, True]


def test_like_on_unicode_and_pandas_inputs():
    unicode = np.array(["été", "ete"])  # a numpy str_ array is accepted too
    assert Predicate.parse("s LIKE 'é%'").evaluate({"s": unicode}, 2).tolist() == [True, False]
    ser = pd.Series(["ab", None, "b"])
    assert Predicate.parse("s LIKE 'a%' OR s IS NULL").evaluate({"s": ser}, 3).tolist() == [True, True, False]


# ------------------------------------------------------------------------------------------ errors

SUPPORTED_HINT = "supported:"


@pytest.mark.parametrize("text, culprit", [
    ("abs(x) > 1", "ABS(x)"), ("x IN (SELECT y FROM t)", "SELECT"), ("SUM(x) > 1", "SUM(x)"),
    ("SELECT 1", "SELECT 1"), ("x % 2 = 1", "x % 2"), ("t.x > 1", "t.x"), ("x IS TRUE", "x IS TRUE"),
    ("s ILIKE 'a'", "ILIKE"), ("s LIKE t", "s LIKE t"), ("x IN ()", "x IN ()"),
    ("x BETWEEN SYMMETRIC 1 AND 2", "BETWEEN"), ("s LIKE 'a' ESCAPE 'xy'", "ESCAPE"),
    ("x || y = 'a'", "||"), ("CAST(x AS INT) > 1", "CAST"), ("x IS NOT DISTINCT FROM y", "DISTINCT"),
])
def test_unsupported_sql(text, culprit):
    with pytest.raises(SqlError) as ei:
        Predicate.parse(text, feature="feat_a")
    msg = str(ei.value)
    assert "feat_a" in msg and culprit in msg and SUPPORTED_HINT in msg


@pytest.mark.parametrize("text", ["x >", "x > 1; y > 2", "((x > 1)", "x = 'unterminated", "x > > 1"])
def test_parse_errors_become_sql_errors(text):
    with pytest.raises(SqlError, match="feat_b"):
        Predicate.parse(text, feature="feat_b")


@pytest.mark.parametrize("text", ["", "   ", None, 3])
def test_empty_or_non_string(text):
    with pytest.raises(SqlError, match="feat_c"):
        Predicate.parse(text, feature="feat_c")


@pytest.mark.parametrize("text, culprit", [
    ("x + 1", "x + 1"), ("1", "1"), ("'a'", "'a'"), ("1 = 'a'", "'a'"), ("'a' + 1 > 0", "'a'"),
    ("NOT 1", "1"), ("1 AND x > 0", "1"), ("TRUE = 1", "TRUE"), ("'a' LIKE 1", "LIKE"),
    ("x IN (1, 'a')", "'a'"), ("1 BETWEEN 'a' AND 2", "'a'"), ("-'a' < 0", "'a'"),
])
def test_static_type_errors_at_parse(text, culprit):
    with pytest.raises(SqlError) as ei:
        Predicate.parse(text, feature="feat_d")
    assert "feat_d" in str(ei.value) and culprit in str(ei.value)


@pytest.mark.parametrize("text, cols, culprit", [
    ("s = 1", {"s": strs("a")}, "s is a string column"),
    ("x = 'a'", {"x": np.array([1.0])}, "x is a number column"),
    ("s > x", {"s": strs("a"), "x": np.array([1])}, "s is a string column"),
    ("s + 1 > 0", {"s": strs("a")}, "s is a string"),
    ("x LIKE 'a%'", {"x": np.array([1.0])}, "x is a number column"),
    ("s IN (1, 2)", {"s": strs("a")}, "s is a string column"),
    ("x IN ('a')", {"x": np.array([1])}, "x is a number column"),
    ("s BETWEEN 1 AND 2", {"s": strs("a")}, "s is a string column"),
    ("x AND TRUE", {"x": np.array([1.0])}, "x is a number column"),
    ("x", {"x": np.array([1.0])}, "x"),
    ("NOT s", {"s": strs("a")}, "s is a string column"),
    ("b = 1", {"b": np.array([True])}, "b is a boolean column"),
    ("b + 1 > 0", {"b": np.array([True])}, "b is a boolean column"),
    ("x IN (y, 1)", {"x": np.array([1.0]), "y": strs("a")}, "y is a string column"),
])
def test_type_mismatch_at_evaluate_names_column(text, cols, culprit):
    p = Predicate.parse(text, feature="feat_e")  # column types are unknown until evaluate
    with pytest.raises(SqlError) as ei:
        p.evaluate(cols, 1)
    assert "feat_e" in str(ei.value) and culprit in str(ei.value)


def test_missing_column_is_schema_error_naming_it():
    p = Predicate.parse("x > 1 AND missing_col = 'a'", feature="feat_f")
    with pytest.raises(SchemaError, match="missing_col") as ei:
        p.evaluate({"x": np.array([1.0])}, 1)
    assert "feat_f" in str(ei.value)


@pytest.mark.parametrize("arr, culprit", [
    (np.array([1.0, 2.0]), "shape"), (np.zeros((3, 1)), "shape"),
    (np.array(["2024-01-01"] * 3, dtype="datetime64[D]"), "datetime64"),
    (np.array(["a", 1, None], dtype=object), "mixed"),
])
def test_bad_column_is_schema_error(arr, culprit):
    with pytest.raises(SchemaError, match=culprit) as ei:
        Predicate.parse("x = 1").evaluate({"x": arr}, 3)
    assert "'x'" in str(ei.value)


def test_object_columns_of_numbers_and_all_null():
    x = np.array([1, None, 2.5], dtype=object)
    assert Predicate.parse("x > 1").evaluate({"x": x}, 3).tolist() == [False, False, True]
    assert Predicate.parse("x IS NULL").evaluate({"x": x}, 3).tolist() == [False, True, False]
    nulls = np.array([None, None], dtype=object)  # no values to tell the type: null in any comparison
    assert Predicate.parse("x = 'a' OR x IS NULL").evaluate({"x": nulls}, 2).tolist() == [True, True]
    assert Predicate.parse("x > 1").evaluate({"x": nulls}, 2).tolist() == [False, False]
    assert Predicate.parse("x LIKE 'a'").evaluate({"x": nulls}, 2).tolist() == [False, False]


def test_string_column_nan_is_null():
    s = np.array(["a", np.nan, None], dtype=object)
    assert Predicate.parse("s IS NULL").evaluate({"s": s}, 3).tolist() == [False, True, True]


# --------------------------------------------------------------- random predicates vs a row oracle


class _Gen:
    """Random predicates over x, y (float, NaN), i (int), s, t (str, None), b (bool), each with a
    per-row Python oracle using None for null."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def num(self, d):
        r = self.r
        c = r.random()
        if d <= 0 or c < 0.5:
            choice = r.choice(["x", "y", "i", "lit", "lit", "null"])
            if choice == "lit":
                v = r.choice([0, 1, 2, -1, 0.5, 2.5])
                return (f"({v})" if v < 0 else str(v)), (lambda row, v=v: v)
            if choice == "null":
                return "NULL", (lambda row: None)
            return choice, (lambda row, c=choice: row[c])
        op = r.choice("+-*/")
        (sa, fa), (sb, fb) = self.num(d - 1), self.num(d - 1)

        def f(row, fa=fa, fb=fb, op=op):
            a, b = fa(row), fb(row)
            if a is None or b is None:
                return None
            if op == "/":
                if b == 0:
                    return None
                out = a / b
            else:
                out = {"+": a + b, "-": a - b, "*": a * b}[op]
            return None if isinstance(out, float) and out != out else out
        return f"({sa} {op} {sb})", f

    def string(self):
        c = self.r.choice(["s", "t", "'a'", "'b'", "'ab'"])
        if c.startswith("'"):
            return c, (lambda row, v=c[1:-1]: v)
        return c, (lambda row, c=c: row[c])

    def pred(self, d):
        r = self.r
        kinds = ["cmp_num", "cmp_str", "isnull", "in", "between", "like", "b"]
        if d > 0:
            kinds += ["and", "or", "not"] * 2
        k = r.choice(kinds)
        ops = {"=": lambda a, b: a == b, "<>": lambda a, b: a != b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}

        def cmp3(op, a, b):
            return None if a is None or b is None else ops[op](a, b)
        if k in ("cmp_num", "cmp_str"):
            side = self.num if k == "cmp_num" else (lambda _d: self.string())
            (sa, fa), (sb, fb) = side(2), side(2)
            op = r.choice(list(ops))
            return f"{sa} {op} {sb}", (lambda row, fa=fa, fb=fb, op=op: cmp3(op, fa(row), fb(row)))
        if k == "isnull":
            sa, fa = self.num(1) if r.random() < 0.5 else self.string()
            neg = r.random() < 0.5
            return (f"{sa} IS {'NOT ' if neg else ''}NULL",
                    lambda row, fa=fa, neg=neg: (fa(row) is None) != neg)
        if k == "in":
            sa, fa = self.num(1)
            items = [r.choice([0, 1, 2, 0.5, None]) for _ in range(r.randint(1, 3))]
            neg = r.random() < 0.5

            def f(row, fa=fa, items=items, neg=neg):
                a = fa(row)
                res = k_or_all([cmp3("=", a, it) for it in items])
                return k_not(res) if neg else res
            txt = ", ".join("NULL" if it is None else str(it) for it in items)
            return f"{sa} {'NOT ' if neg else ''}IN ({txt})", f
        if k == "between":
            (sa, fa), (sl, fl), (sh, fh) = self.num(1), self.num(0), self.num(0)
            return (f"{sa} BETWEEN {sl} AND {sh}",
                    lambda row, fa=fa, fl=fl, fh=fh: k_and(cmp3(">=", fa(row), fl(row)),
                                                          cmp3("<=", fa(row), fh(row))))
        if k == "like":
            sa, fa = self.string()
            pat = r.choice(["a%", "%b", "_", "a_", "%", "ab", "%a%"])
            rx = re.compile("".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pat),
                            re.DOTALL)
            return (f"{sa} LIKE '{pat}'",
                    lambda row, fa=fa, rx=rx: None if fa(row) is None else rx.fullmatch(fa(row)) is not None)
        if k == "b":
            return "b", (lambda row: row["b"])
        if k == "not":
            sa, fa = self.pred(d - 1)
            return f"NOT ({sa})", (lambda row, fa=fa: k_not(fa(row)))
        (sa, fa), (sb, fb) = self.pred(d - 1), self.pred(d - 1)
        fn = k_and if k == "and" else k_or
        return f"({sa}) {k.upper()} ({sb})", (lambda row, fa=fa, fb=fb, fn=fn: fn(fa(row), fb(row)))


def k_or_all(vals):
    out = False
    for v in vals:
        out = k_or(out, v)
    return out


def test_random_predicates_match_row_oracle():
    rng = random.Random(20240601)
    nrng = np.random.default_rng(7)
    n = 60
    x = nrng.choice([0.0, 1.0, 2.0, -1.0, 0.5, NAN], size=n)
    y = nrng.choice([0.0, 1.0, 2.5, NAN], size=n)
    i = nrng.integers(-2, 3, size=n)
    s = np.array(nrng.choice(["a", "b", "ab", "ba", "", "x"], size=n), dtype=object)
    s[nrng.random(n) < 0.2] = None
    t = np.array(nrng.choice(["a", "b", "ab"], size=n), dtype=object)
    t[nrng.random(n) < 0.3] = None
    b = nrng.random(n) < 0.5
    cols = {"x": x, "y": y, "i": i, "s": s, "t": t, "b": b}
    rows = [{"x": None if np.isnan(x[k]) else float(x[k]), "y": None if np.isnan(y[k]) else float(y[k]),
             "i": int(i[k]), "s": s[k], "t": t[k], "b": bool(b[k])} for k in range(n)]
    gen = _Gen(rng)
    for _ in range(400):
        text, oracle = gen.pred(3)
        p = Predicate.parse(text)
        assert Predicate.parse(p.sql).sql == p.sql, text
        got = p.evaluate(cols, n).tolist()
        want = [oracle(row) is True for row in rows]
        assert got == want, text


def test_large_batch_is_vectorised_quickly():
    n = 200_000
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = NAN
    s = np.array(rng.choice(["alpha", "beta", "gamma"], size=n), dtype=object)
    p = Predicate.parse("(x > 0 OR x IS NULL) AND s IN ('alpha', 'beta') AND s LIKE '%a'")
    out = p.evaluate({"x": x, "s": s}, n)
    expect = (np.isnan(x) | (x > 0)) & np.isin(s, ["alpha", "beta"])
    assert (out == expect).all()
