"""SQL boolean predicates (a feature's ``where``), evaluated vectorised with SQL three-valued logic.

A predicate is parsed once with sqlglot, checked against the supported subset and compiled into a small
tree of nodes; evaluating it over a batch of event columns walks that tree once, with numpy operations
over whole columns. Every intermediate value is a pair ``(value, is_null)``; comparisons and arithmetic
with a null operand are null, ``AND``/``OR``/``NOT`` follow Kleene's three-valued logic, and a row passes
only where the predicate is TRUE (neither FALSE nor unknown).

Supported SQL (anything else is a :class:`~rayfs.errors.SqlError` that lists this):

* column names (unquoted or ``"quoted"``; case is preserved), number and string literals, ``TRUE``,
  ``FALSE``, ``NULL``;
* comparisons ``= <> != < <= > >=`` between values of the same type (number, string, boolean);
* ``IS NULL``, ``IS NOT NULL``; ``[NOT] IN (v1, v2, ...)``; ``[NOT] BETWEEN a AND b``;
* ``[NOT] LIKE 'pattern' [ESCAPE 'c']`` on strings (``%`` any run of characters, ``_`` one
  character, case-sensitive, the whole string must match);
* ``AND``, ``OR``, ``NOT``, parentheses; a boolean column on its own is a predicate;
* ``+ - * /`` and unary minus on numbers; ``/`` is true (float) division and division by zero is null.

Types at evaluate time: numeric columns are float64 (NaN is null), integer (no nulls) or bool (a boolean
column, not a number); string columns are object arrays of ``str`` with ``None`` (or NaN) for null.
Comparing a string with a number, or a boolean with a number, is a :class:`~rayfs.errors.SqlError`
naming the operands -- at parse time when both sides are literals, at evaluate time when a column's
actual type decides it. A column missing from the batch, of the wrong length, or of an unsupported
dtype (e.g. datetime64, mixed objects) is a :class:`~rayfs.errors.SchemaError` naming it. A float NaN
produced by arithmetic (``inf - inf``) is null, like a NaN read from a column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlglot
from sqlglot import exp

from rayfs.errors import SchemaError, SqlError

__all__ = ["Predicate", "SUPPORTED"]

SUPPORTED = ("column names, number/string literals, TRUE, FALSE, NULL; comparisons = <> != < <= > >=; "
             "IS [NOT] NULL; [NOT] IN (...); [NOT] BETWEEN a AND b; [NOT] LIKE 'pattern' [ESCAPE 'c']; "
             "AND, OR, NOT, parentheses; + - * / on numbers")

_NUM, _STR, _BOOL, _NULL, _ANY = "number", "string", "boolean", "null", "any"

_CMP: dict[type, Callable] = {exp.EQ: np.equal, exp.NEQ: np.not_equal, exp.LT: np.less,
                              exp.LTE: np.less_equal, exp.GT: np.greater, exp.GTE: np.greater_equal}
_ARITH: dict[type, Callable] = {exp.Add: np.add, exp.Sub: np.subtract, exp.Mul: np.multiply,
                                exp.Div: np.true_divide}
_INT64_MAX = 2**63 - 1


@dataclass
class _V:
    """A value during evaluation: ``kind``; ``v`` the values (meaningless where null); ``null``."""

    kind: str
    v: object  # numpy array of length n, or a scalar (literal-only subtrees)
    null: object  # bool numpy array of length n, or a bool scalar


def _bool_parts(x: _V) -> tuple[object, object]:
    """(is TRUE, is FALSE) of a boolean value."""
    if x.kind == _NULL:
        return False, False
    return np.logical_and(x.v, np.logical_not(x.null)), np.logical_and(np.logical_not(x.v),
                                                                       np.logical_not(x.null))


def _from_parts(t: object, f: object) -> _V:
    return _V(_BOOL, t, np.logical_not(np.logical_or(t, f)))


class _Ctx:
    """Evaluation state: the batch, its length, loaded columns, the feature name for messages."""

    def __init__(self, columns: Mapping[str, object], n: int, feature: str) -> None:
        self.columns, self.n, self.feature = columns, n, feature
        self.loaded: dict[str, _V] = {}

    def column(self, name: str) -> _V:
        if name not in self.loaded:
            self.loaded[name] = self._load(name)
        return self.loaded[name]

    def _load(self, name: str) -> _V:
        f = self.feature
        if name not in self.columns:
            raise SchemaError(f"feature {f!r}: where reads column {name!r}, which the events lack "
                              f"(have: {', '.join(sorted(map(str, self.columns))) or 'none'})")
        arr = self.columns[name]
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if arr.ndim != 1 or len(arr) != self.n:
            raise SchemaError(f"feature {f!r}: column {name!r} has shape {arr.shape}, expected ({self.n},)")
        k = arr.dtype.kind
        if k == "b":
            return _V(_BOOL, arr, np.zeros(self.n, dtype=bool))
        if k in "iu":
            return _V(_NUM, arr, np.zeros(self.n, dtype=bool))
        if k == "f":
            null = np.isnan(arr)
            if null.all():  # as an all-None column: a batch's all-NaN column says nothing of the column's type
                return _V(_NULL, False, True)
            return _V(_NUM, arr, null)
        if k in "UT":
            arr = arr.astype(object)
            k = "O"
        if k != "O":
            raise SchemaError(f"feature {f!r}: column {name!r} has dtype {arr.dtype}, which a where clause "
                              "cannot read (use numbers, booleans or strings)")
        null = np.asarray(pd.isna(arr), dtype=bool)
        inferred = pd.api.types.infer_dtype(arr, skipna=True)
        if inferred == "string":
            return _V(_STR, np.where(null, "", arr), null)
        if inferred == "empty":  # every value null: compatible with anything, never TRUE in a comparison
            return _V(_NULL, False, True)
        if inferred == "boolean":
            return _V(_BOOL, np.where(null, False, arr).astype(bool), null)
        if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
            return _V(_NUM, np.where(null, np.nan, arr).astype(np.float64), null)
        raise SchemaError(f"feature {f!r}: column {name!r} holds values of type {inferred!r}; a where "
                          "clause reads numbers, booleans or strings (None for null)")


# ---------------------------------------------------------------------------------------------------
# Compiled nodes. Each has ``kind`` (static: a type, or _ANY when a column decides it) and ``ev(ctx)``.


class _Node:
    kind: str = _ANY
    sql: str = ""
    is_col: bool = False

    def ev(self, ctx: _Ctx) -> _V:  # pragma: no cover - abstract
        raise NotImplementedError


class _Lit(_Node):
    def __init__(self, kind: str, value: object, sql: str) -> None:
        self.kind, self.value, self.sql = kind, value, sql

    def ev(self, ctx: _Ctx) -> _V:
        return _V(self.kind, self.value, self.kind == _NULL)


class _Col(_Node):
    is_col = True

    def __init__(self, name: str, sql: str) -> None:
        self.name, self.sql = name, sql

    def ev(self, ctx: _Ctx) -> _V:
        return ctx.column(self.name)


def _compatible(a: str, b: str) -> bool:
    return a == b or _NULL in (a, b) or _ANY in (a, b)


def _mismatch(feature: str, where: str, operands: list[tuple[_Node, str]]) -> SqlError:
    desc = ", ".join(f"{n.sql} is {'a ' + k if k != _NULL else 'null'}"
                     + (" column" if n.is_col else "") for n, k in operands)
    return SqlError(f"feature {feature!r}: type mismatch in {where!r}: {desc}; compare numbers with "
                    "numbers, strings with strings, booleans with booleans")


def _expect(feature: str, where: str, node: _Node, kind: str, got: str) -> None:
    if not _compatible(kind, got):
        col = " column" if node.is_col else ""
        raise SqlError(f"feature {feature!r}: type mismatch in {where!r}: {node.sql} is a {got}{col}, "
                       f"expected a {kind}")


class _Cmp(_Node):
    kind = _BOOL

    def __init__(self, op: Callable, a: _Node, b: _Node, sql: str, feature: str) -> None:
        self.op, self.a, self.b, self.sql, self.feature = op, a, b, sql, feature
        if not _compatible(a.kind, b.kind):
            raise _mismatch(feature, sql, [(a, a.kind), (b, b.kind)])

    def ev(self, ctx: _Ctx) -> _V:
        a, b = self.a.ev(ctx), self.b.ev(ctx)
        if not _compatible(a.kind, b.kind):
            raise _mismatch(self.feature, self.sql, [(self.a, a.kind), (self.b, b.kind)])
        if _NULL in (a.kind, b.kind):
            return _V(_BOOL, False, True)
        null = np.logical_or(a.null, b.null)
        hit = np.asarray(self.op(a.v, b.v), dtype=bool)
        return _V(_BOOL, np.logical_and(hit, np.logical_not(null)), null)


class _Arith(_Node):
    kind = _NUM

    def __init__(self, op: Callable, a: _Node, b: _Node | None, sql: str, feature: str) -> None:
        self.op, self.a, self.b, self.sql, self.feature = op, a, b, sql, feature
        for x in (a, b) if b is not None else (a,):
            _expect(feature, sql, x, _NUM, x.kind)

    def ev(self, ctx: _Ctx) -> _V:
        a = self.a.ev(ctx)
        _expect(self.feature, self.sql, self.a, _NUM, a.kind)
        if self.b is None:  # unary minus
            return a if a.kind == _NULL else _V(_NUM, np.negative(a.v), a.null)
        b = self.b.ev(ctx)
        _expect(self.feature, self.sql, self.b, _NUM, b.kind)
        if _NULL in (a.kind, b.kind):
            return _V(_NUM, np.float64(np.nan), True)
        v = self.op(a.v, b.v)
        null = np.logical_or(a.null, b.null)
        if self.op is np.true_divide:
            null = np.logical_or(null, np.equal(b.v, 0))
        if np.asarray(v).dtype.kind == "f":
            null = np.logical_or(null, np.isnan(v))
        return _V(_NUM, v, null)


class _Logic(_Node):
    kind = _BOOL

    def __init__(self, op: str, args: list[_Node], sql: str, feature: str) -> None:
        self.op, self.args, self.sql, self.feature = op, args, sql, feature
        for x in args:
            _expect(feature, sql, x, _BOOL, x.kind)

    def ev(self, ctx: _Ctx) -> _V:
        vals = []
        for node in self.args:
            x = node.ev(ctx)
            _expect(self.feature, self.sql, node, _BOOL, x.kind)
            vals.append(_bool_parts(x))
        if self.op == "not":
            t, f = vals[0]
            return _from_parts(f, t)
        (at, af), (bt, bf) = vals
        if self.op == "and":
            return _from_parts(np.logical_and(at, bt), np.logical_or(af, bf))
        return _from_parts(np.logical_or(at, bt), np.logical_and(af, bf))


class _IsNull(_Node):
    kind = _BOOL

    def __init__(self, a: _Node, sql: str) -> None:
        self.a, self.sql = a, sql

    def ev(self, ctx: _Ctx) -> _V:
        return _V(_BOOL, self.a.ev(ctx).null, False)


class _In(_Node):
    kind = _BOOL

    def __init__(self, a: _Node, items: list[_Node], sql: str, feature: str) -> None:
        self.a, self.items, self.sql, self.feature = a, items, sql, feature
        for it in items:  # the tested value and the items: all of one type
            if not _compatible(a.kind, it.kind):
                raise _mismatch(feature, sql, [(a, a.kind), (it, it.kind)])
        known = [it for it in items if it.kind not in (_ANY, _NULL)]
        for it in known[1:]:
            if it.kind != known[0].kind:
                raise _mismatch(feature, sql, [(known[0], known[0].kind), (it, it.kind)])
        self.literal = all(isinstance(it, _Lit) for it in items)
        if self.literal:
            self.has_null = any(it.kind == _NULL for it in items)
            self.lit_kinds = {it.kind for it in items if it.kind != _NULL}
            self.lit_values = [it.value for it in items if it.kind != _NULL]

    def ev(self, ctx: _Ctx) -> _V:
        if not self.literal:  # x IN (a, b) == x = a OR x = b, in three-valued logic
            t, f = False, True
            for it in self.items:
                ct, cf = _bool_parts(_Cmp(np.equal, self.a, it, self.sql, self.feature).ev(ctx))
                t, f = np.logical_or(t, ct), np.logical_and(f, cf)
            return _from_parts(t, f)
        a = self.a.ev(ctx)
        for k in self.lit_kinds:
            if not _compatible(a.kind, k):
                bad = next(it for it in self.items if it.kind == k)
                raise _mismatch(self.feature, self.sql, [(self.a, a.kind), (bad, k)])
        if a.kind == _NULL:
            return _V(_BOOL, False, True)
        hit = np.isin(a.v, self.lit_values) if self.lit_values else np.zeros(np.shape(a.v), dtype=bool)
        t = np.logical_and(hit, np.logical_not(a.null))
        f = np.logical_not(np.logical_or(t, np.logical_or(a.null, self.has_null)))
        return _from_parts(t, f)


class _Between(_Node):
    kind = _BOOL

    def __init__(self, a: _Node, low: _Node, high: _Node, sql: str, feature: str) -> None:
        self.a, self.low, self.high, self.sql, self.feature = a, low, high, sql, feature
        for b in (low, high):
            if not _compatible(a.kind, b.kind):
                raise _mismatch(feature, sql, [(a, a.kind), (b, b.kind)])

    def ev(self, ctx: _Ctx) -> _V:
        a = _Fixed(self.a, self.a.ev(ctx))  # evaluate the tested value once, use it in both comparisons
        ge = _bool_parts(_Cmp(np.greater_equal, a, self.low, self.sql, self.feature).ev(ctx))
        le = _bool_parts(_Cmp(np.less_equal, a, self.high, self.sql, self.feature).ev(ctx))
        return _from_parts(np.logical_and(ge[0], le[0]), np.logical_or(ge[1], le[1]))


class _Fixed(_Node):
    """An already evaluated value standing in for ``node`` (same SQL text, for messages)."""

    def __init__(self, node: _Node, value: _V) -> None:
        self.sql, self.is_col, self.value = node.sql, node.is_col, value

    def ev(self, ctx: _Ctx) -> _V:
        return self.value


def _like_regex(pattern: str, escape: str | None) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if escape is not None and c == escape and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _Like(_Node):
    kind = _BOOL

    def __init__(self, a: _Node, regex: re.Pattern, sql: str, feature: str) -> None:
        self.a, self.regex, self.sql, self.feature = a, regex, sql, feature
        _expect(feature, sql, a, _STR, a.kind)

    def ev(self, ctx: _Ctx) -> _V:
        a = self.a.ev(ctx)
        _expect(self.feature, self.sql, self.a, _STR, a.kind)
        if a.kind == _NULL:
            return _V(_BOOL, False, True)
        if np.ndim(a.v) == 0:
            return _V(_BOOL, self.regex.fullmatch(a.v) is not None, a.null)
        s = pd.Series(a.v, dtype=object)
        hit = s.str.fullmatch(self.regex).to_numpy(dtype=bool, na_value=False)
        return _V(_BOOL, np.logical_and(hit, np.logical_not(a.null)), a.null)


# ---------------------------------------------------------------------------------------------------
# sqlglot tree -> nodes


class _Compiler:
    def __init__(self, feature: str) -> None:
        self.feature = feature
        self.columns: set[str] = set()

    def unsupported(self, node: exp.Expression, why: str = "") -> SqlError:
        what = node.sql(comments=False)
        return SqlError(f"feature {self.feature!r}: unsupported SQL in where: {what!r}"
                        f"{' (' + why + ')' if why else ''}; supported: {SUPPORTED}")

    def __call__(self, node: exp.Expression) -> _Node:  # noqa: C901 - one dispatch over node types
        sql = node.sql(comments=False)
        f = self.feature
        if isinstance(node, exp.Paren):
            return self(node.this)
        if isinstance(node, exp.Column):
            if node.table or node.args.get("db") or node.args.get("catalog"):
                raise self.unsupported(node, "use unqualified column names")
            if not isinstance(node.this, exp.Identifier):
                raise self.unsupported(node)
            self.columns.add(node.name)
            return _Col(node.name, sql)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return _Lit(_STR, node.this, sql)
            return _Lit(_NUM, _number(node.this), sql)
        if isinstance(node, exp.Boolean):
            return _Lit(_BOOL, bool(node.this), sql)
        if isinstance(node, exp.Null):
            return _Lit(_NULL, None, sql)
        if type(node) in _CMP:
            return _Cmp(_CMP[type(node)], self(node.this), self(node.expression), sql, f)
        if type(node) in _ARITH:
            return _Arith(_ARITH[type(node)], self(node.this), self(node.expression), sql, f)
        if isinstance(node, exp.Neg):
            return _Arith(np.negative, self(node.this), None, sql, f)
        if isinstance(node, exp.And):
            return _Logic("and", [self(node.this), self(node.expression)], sql, f)
        if isinstance(node, exp.Or):
            return _Logic("or", [self(node.this), self(node.expression)], sql, f)
        if isinstance(node, exp.Not):
            return _Logic("not", [self(node.this)], sql, f)
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise self.unsupported(node, "only IS NULL / IS NOT NULL")
            return _IsNull(self(node.this), sql)
        if isinstance(node, exp.In):
            if any(node.args.get(k) for k in ("query", "unnest", "field")) or not node.expressions:
                raise self.unsupported(node, "IN takes a non-empty list of values, not a subquery")
            return _In(self(node.this), [self(e) for e in node.expressions], sql, f)
        if isinstance(node, exp.Between):
            if node.args.get("symmetric"):
                raise self.unsupported(node, "BETWEEN SYMMETRIC")
            return _Between(self(node.this), self(node.args["low"]), self(node.args["high"]), sql, f)
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            esc = node.expression
            if not (isinstance(esc, exp.Literal) and esc.is_string and len(esc.this) == 1):
                raise self.unsupported(node, "ESCAPE takes a one-character string literal")
            return self._like(node.this, esc.this, sql)
        if isinstance(node, exp.Like):
            return self._like(node, None, sql)
        if isinstance(node, (exp.Subquery, exp.Query)):
            raise self.unsupported(node, "queries and subqueries are not supported")
        if isinstance(node, exp.AggFunc):
            raise self.unsupported(node, "aggregates are not allowed in where")
        if isinstance(node, exp.Func):
            raise self.unsupported(node, "function calls are not supported")
        raise self.unsupported(node)

    def _like(self, node: exp.Like, escape: str | None, sql: str) -> _Node:
        pat = node.expression
        if not (isinstance(pat, exp.Literal) and pat.is_string):
            raise self.unsupported(node, "the LIKE pattern must be a string literal")
        like = _Like(self(node.this), _like_regex(pat.this, escape), sql, self.feature)
        return _Logic("not", [like], sql, self.feature) if node.args.get("negate") else like


def _number(text: str) -> int | float:
    try:
        v = int(text)
    except ValueError:
        return float(text)
    return v if -_INT64_MAX - 1 <= v <= _INT64_MAX else float(v)


def _restore(sql: str, feature: str) -> Predicate:
    return Predicate.parse(sql, feature=feature)


def parse_trees(text: str, error: Callable[[str], Exception]) -> list:
    """sqlglot's statements of ``text``; a parse failure raises ``error(first line of sqlglot's message)``."""
    try:
        return [t for t in sqlglot.parse(text) if t is not None]
    except Exception as e:  # sqlglot ParseError/TokenError, or anything else it may throw
        raise error(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


class Predicate:
    """A parsed, checked SQL predicate over an event's columns.

    Attributes:
        sql: canonical SQL text (sqlglot's rendering, comments dropped); equal predicates have equal text.
        columns: the event columns it reads.

    >>> import numpy as np
    >>> p = Predicate.parse("score >= 1 and not (kind = 'bot')")
    >>> p.sql, sorted(p.columns)
    ("score >= 1 AND NOT (kind = 'bot')", ['kind', 'score'])
    >>> p.evaluate({"score": np.array([0.5, 2.0, np.nan, 3.0]),
    ...             "kind": np.array(["user", "user", "user", None], dtype=object)}, 4)
    array([False,  True, False, False])
    >>> Predicate.parse("kind IS NULL OR score > 2").evaluate(
    ...     {"score": np.array([1.0, 3.0]), "kind": np.array(["a", None], dtype=object)}, 2)
    array([False,  True])
    """

    __slots__ = ("sql", "columns", "feature", "_root")

    sql: str
    columns: frozenset[str]

    def __init__(self, sql: str, columns: frozenset[str], feature: str, root: _Node) -> None:
        self.sql, self.columns, self.feature, self._root = sql, columns, feature, root

    @classmethod
    def parse(cls, text: str, *, feature: str = "?") -> Predicate:
        """Parse and check ``text``; raise :class:`SqlError` naming ``feature`` if it is not supported."""
        if not isinstance(text, str) or not text.strip():
            raise SqlError(f"feature {feature!r}: where must be a non-empty SQL predicate, got {text!r}")
        trees = parse_trees(text, lambda msg: SqlError(f"feature {feature!r}: cannot parse where {text!r}: "
                                                        f"{msg}; supported: {SUPPORTED}"))
        if len(trees) != 1:
            raise SqlError(f"feature {feature!r}: where {text!r} must be exactly one predicate, "
                           f"got {len(trees)}; supported: {SUPPORTED}")
        tree = trees[0]
        compiler = _Compiler(feature)
        try:
            root = compiler(tree)
        except RecursionError:
            raise SqlError(f"feature {feature!r}: where {text!r} is nested too deeply") from None
        if root.kind not in (_BOOL, _NULL, _ANY):
            raise SqlError(f"feature {feature!r}: where {tree.sql(comments=False)!r} is a {root.kind}, "
                           f"not a predicate (true/false); supported: {SUPPORTED}")
        return cls(tree.sql(comments=False), frozenset(compiler.columns), feature, root)

    def evaluate(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Return a bool array of length ``n``: True for the rows where the predicate is TRUE."""
        ctx = _Ctx(columns, int(n), self.feature)
        with np.errstate(all="ignore"):
            out = self._root.ev(ctx)
        if out.kind not in (_BOOL, _NULL):
            raise SqlError(f"feature {self.feature!r}: where {self.sql!r} is a {out.kind} column, "
                           "not a predicate (true/false)")
        if out.kind == _NULL:
            return np.zeros(ctx.n, dtype=bool)
        res = np.logical_and(out.v, np.logical_not(out.null))
        return np.array(np.broadcast_to(res, (ctx.n,)), dtype=bool)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Predicate) and other.sql == self.sql

    def __hash__(self) -> int:
        return hash(self.sql)

    def __repr__(self) -> str:
        return f"Predicate({self.sql!r})"

    def __reduce__(self):
        return (_restore, (self.sql, self.feature))

