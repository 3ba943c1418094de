"""On-demand features: a vectorised Python function of request fields and stored features.

Some values exist only when a request arrives: the distance between the request's location and the
user's home, the ratio of two stored features. An :class:`OnDemandFeature` names its inputs (stored
features, by ``name`` or ``name@version``, and request fields) and a function over a pandas DataFrame that
holds them. The store applies the same function to a frame built the same way in both places a model meets
it, so training and serving cannot drift:

* online (``get_features(..., request=...)``): the request fields come with the call, the stored inputs
  are the online values;
* in training sets: the request fields are columns of the observations, the stored inputs their
  point-in-time values.

Invariants:

* The function is vectorised: it takes the whole frame (:func:`input_frame`: one column per input, then one
  per request field, named as given, a ``RangeIndex``) and returns one value per row (a Series, an array, a
  list or a scalar for every row). A Series is aligned on the frame's index (a sorted one lands on its own
  rows); other values are taken by position. A wrong length, a Series of other row labels or an exception
  is an :class:`~rayfs.errors.OnDemandError` naming the feature. Each row's value must depend on that row
  only: the frame holds the keys of one read online and all the observations of a training set, so a
  function that looks across rows (a mean or rank over the frame) gives different values in the two.
* The function travels with the catalog as a cloudpickle blob plus its source text for people. Its own
  module is pickled by value unless it is installed (standard library, site-packages), so any process of
  the store can apply it without importing the user's code; other modules it calls are referenced by name.
  It is unpickled only where it is applied, on first use.
* The fingerprint covers the inputs, the request fields, the function's code (its source text, or its
  bytecode for a lambda or when no source exists) and the values it closes over or reads from module
  globals; registering a definition with another fingerprint makes a new version, as for stored features.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import inspect
import json
import site
import sys
import sysconfig
import textwrap
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayfs.errors import DefinitionError, OnDemandError
from rayfs.model.definitions import check_name

__all__ = ["KIND", "OnDemandFeature", "input_frame", "on_demand", "request_columns"]

KIND = "on_demand"
"""The ``kind`` of an on-demand feature in :meth:`~rayfs.FeatureStore.list_features` (stored ones: ``"stored"``)."""

_PICKLE_LOCK = threading.Lock()  # cloudpickle's by-value registry is process-wide


@functools.cache
def _install_roots() -> tuple[str, ...]:
    roots = [sysconfig.get_paths()["stdlib"], *site.getsitepackages(), site.getusersitepackages()]
    return tuple(r for r in roots if r)


def _installed(module: types.ModuleType) -> bool:
    """True for the standard library and installed packages (pickled by reference: every process has them)."""
    path = getattr(module, "__file__", None)
    if not path:
        return True  # built in
    return path.startswith(_install_roots())


def _dumps(fn: Callable) -> bytes:
    """cloudpickle of ``fn``, its own module pickled by value so a process without that module can load it."""
    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    by_value = (module is not None and module.__name__ != "__main__" and not _installed(module)
                and module.__name__ not in cloudpickle.list_registry_pickle_by_value())
    with _PICKLE_LOCK:
        if by_value:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps(fn)
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(module)


def _source(fn: Callable) -> str:
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):  # defined in a REPL or built dynamically: the pickle is the definition
        return ""


def _code_shape(code: types.CodeType) -> tuple:
    """What a code object computes, without where it was written (file, line numbers)."""
    consts = tuple(_code_shape(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_freevars, code.co_argcount)


def _digest_value(value: Any, seen: set[int]) -> str:
    """A stable text for a value a function uses: functions by their code, modules by name."""
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, types.FunctionType):
        return _code_digest(value, seen)
    plain_type = not _users(type(value))  # set, dict, OrderedDict, ...: not a class of the user's
    if isinstance(value, set | frozenset) and plain_type and all(isinstance(v, _PLAIN) for v in value):
        # A set pickles in its iteration order, which string hashing changes from one process to the next.
        text = "\n".join(sorted(f"{type(v).__name__}:{v!r}" for v in value))
        return hashlib.sha256(f"{type(value).__name__}({text})".encode()).hexdigest()
    if isinstance(value, list | tuple | dict) and plain_type and all(
            isinstance(v, _PLAIN) for v in (value if not isinstance(value, dict) else (*value, *value.values()))):
        return _pickle_digest(value)  # plain values pickle alike in every process
    if isinstance(value, set | frozenset | list | tuple | dict):
        # Other containers element by element (sets sorted): they may hold sets or the user's objects.
        if id(value) in seen:
            return "recursive"
        seen.add(id(value))
        if isinstance(value, dict):
            items = [f"{_digest_value(k, seen)}={_digest_value(v, seen)}" for k, v in value.items()]
        else:
            items = [_digest_value(v, seen) for v in value]
            if isinstance(value, set | frozenset):
                items.sort()
        seen.discard(id(value))  # the same container used twice is digested twice alike
        kind = _class_digest(type(value), seen) if _users(type(value)) else type(value).__name__  # a namedtuple
        return hashlib.sha256(f"{kind}({'|'.join(items)})".encode()).hexdigest()
    # A class of the user's (a script's, or a module not installed) pickles by value with an id drawn afresh
    # in every process: such a class is digested by its code, its instances by their class and state.
    if isinstance(value, type) and _users(value):
        return _class_digest(value, seen)
    if _users(type(value)) and (isinstance(value, enum.Enum) or isinstance(getattr(value, "__dict__", None), dict)):
        state = value.name if isinstance(value, enum.Enum) else value.__dict__
        return hashlib.sha256(f"{_class_digest(type(value), seen)}|{_digest_value(state, seen)}".encode()).hexdigest()
    return _pickle_digest(value)


_PLAIN = (str, bytes, int, float, complex, type(None))  # bool is an int


def _pickle_digest(value: Any) -> str:
    try:
        import cloudpickle

        return hashlib.sha256(cloudpickle.dumps(value)).hexdigest()
    except Exception:  # noqa: BLE001 - unpicklable here means unpicklable for the whole function too
        return repr(value)


def _users(cls: type) -> bool:
    """Whether ``cls`` is defined by the user: in a script, or in a module that is not installed."""
    module = sys.modules.get(getattr(cls, "__module__", None) or "")
    return module is None or module.__name__ == "__main__" or not _installed(module)


def _class_digest(cls: type, seen: set[int]) -> str:
    """A class's name and code: its source text, or its methods' code when it has none."""
    if id(cls) in seen:
        return f"class:{cls.__qualname__}"
    seen.add(id(cls))
    text = _source(cls)
    if not text:
        text = "\n".join(f"{k}={_digest_value(v, seen)}" for k, v in sorted(vars(cls).items())
                         if isinstance(v, types.FunctionType))
    return hashlib.sha256(f"class:{cls.__qualname__}|{text}".encode()).hexdigest()


def _code_digest(fn: Callable, seen: set[int] | None = None) -> str:
    """A digest of what ``fn`` computes: its code (source text, or bytecode for a lambda or when no source
    exists) and the values it closes over, takes as defaults or reads from its module's globals."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return "recursive"
    seen.add(id(fn))
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its class's source and its state
        return hashlib.sha256(f"{_source(type(fn))}|{_digest_value(getattr(fn, '__dict__', None), seen)}"
                              .encode()).hexdigest()
    # A lambda's source is the whole statement around it (metadata included): use its bytecode.
    text = _source(fn) if fn.__name__ != "<lambda>" else ""
    parts = [text or repr(_code_shape(code))]
    cells = [c.cell_contents for c in (fn.__closure__ or ()) if _has_contents(c)]
    parts += [_digest_value(v, seen) for v in (*cells, fn.__defaults__, fn.__kwdefaults__)]
    names = set(code.co_names)
    for c in code.co_consts:  # names used by nested functions and comprehensions
        if isinstance(c, types.CodeType):
            names.update(c.co_names)
    parts += [f"{n}={_digest_value(fn.__globals__[n], seen)}" for n in sorted(names) if n in fn.__globals__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _names(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:  # one name that is not a string: refused by name below
        return (value,)


@dataclass(frozen=True, kw_only=True)
class OnDemandFeature:
    """A feature computed when it is read, from request fields and stored features.

    Args:
        name: the feature's name (unique in the store: stored and on-demand features share names).
        function: ``f(frame) -> values``: ``frame`` is a DataFrame with one column per input and request
            field (named as given), one row per key or observation; returns one value per row. Set from
            ``code`` on first use when the definition comes from the catalog.
        inputs: stored features it reads (``"name"`` for the latest version or ``"name@version"``), all of
            one entity: the entity of the reads it serves.
        request: request fields it reads (given with ``get_features(..., request=...)``, or columns of the
            observations in a training set).
        description: free text for humans.
        owner: who answers for the feature.
        tags: labels for discovery.
        version: set by the store: 1 for the first definition of a name, then 2, 3, ...
        created: set by the store: when this version was registered (ISO 8601, UTC).
        code: set from ``function``: its cloudpickle, base64.
        source: set from ``function``: its source text (empty if Python cannot find it).
        digest: set from ``function``: see :meth:`fingerprint`.

    Raises:
        DefinitionError: a bad name, no input and no request field, a field both an input and a request
            field, or the feature reading itself.
        OnDemandError: the function is not callable or cannot be serialised.

    >>> f = OnDemandFeature(name="ratio", inputs=("a", "b"), function=lambda df: df.a / df.b)
    >>> f.apply(pd.DataFrame({"a": [1.0, 4.0], "b": [2.0, 8.0]})).tolist()
    [0.5, 0.5]
    """

    name: str
    function: Callable[[pd.DataFrame], Any] | None = field(default=None, compare=False, repr=False)
    inputs: tuple[str, ...] = ()
    request: tuple[str, ...] = ()
    description: str = field(default="", compare=False)
    owner: str = field(default="", compare=False)
    tags: tuple[str, ...] = field(default=(), compare=False)
    version: int = field(default=1, compare=False)
    created: str = field(default="", compare=False)
    code: str = field(default="", compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)
    digest: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        check_name(self.name, "on-demand feature")
        inputs = _names(self.inputs)
        request = _names(self.request)
        for i in inputs:
            if not isinstance(i, str):
                raise DefinitionError(f"on-demand feature {self.name!r}: input {i!r} must be a feature name")
            base, _, v = i.partition("@")
            check_name(base, f"on-demand feature {self.name!r} input")
            if v and not (v.isdigit() and int(v) >= 1):
                raise DefinitionError(f"on-demand feature {self.name!r}: input {i!r} must be 'name' or "
                                      "'name@version'")
        for r in request:
            check_name(r, f"on-demand feature {self.name!r} request field")
        if not inputs and not request:
            raise DefinitionError(f"on-demand feature {self.name!r}: needs at least one input or request field")
        for what, names in (("input", inputs), ("request field", request)):
            if len(set(names)) != len(names):
                raise DefinitionError(f"on-demand feature {self.name!r}: a repeated {what} in {list(names)}")
        both = sorted(set(inputs) & set(request))
        if both:
            raise DefinitionError(f"on-demand feature {self.name!r}: {both} both inputs and request fields")
        if self.name in {i.partition("@")[0] for i in inputs} | set(request):
            raise DefinitionError(f"on-demand feature {self.name!r}: cannot read itself")
        if not isinstance(self.description, str) or not isinstance(self.owner, str):
            raise DefinitionError(f"on-demand feature {self.name!r}: description and owner must be strings")
        tags = _names(self.tags)
        if not all(isinstance(t, str) and t for t in tags):
            raise DefinitionError(f"on-demand feature {self.name!r}: tags must be non-empty strings, "
                                  f"got {self.tags!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(f"on-demand feature {self.name!r}: version must be a positive integer, "
                                  f"not {self.version!r}")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "request", request)
        object.__setattr__(self, "tags", tuple(sorted(set(tags))))
        if self.code:  # from the catalog: the function is loaded where it is applied
            if not self.digest:
                raise DefinitionError(f"on-demand feature {self.name!r}: a stored definition without its digest")
            return
        if not callable(self.function):
            raise OnDemandError(f"on-demand feature {self.name!r}: function must be callable, not "
                                f"{type(self.function).__name__}")
        try:
            code = base64.b64encode(_dumps(self.function)).decode()
        except Exception as exc:  # noqa: BLE001 - any pickling failure is the user's function
            raise OnDemandError(f"on-demand feature {self.name!r}: its function cannot be serialised "
                                f"({type(exc).__name__}: {exc})") from exc
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "source", _source(self.function))
        body = {"inputs": list(inputs), "request": list(request), "code": _code_digest(self.function)}
        object.__setattr__(self, "digest", hashlib.sha256(json.dumps(body, sort_keys=True).encode())
                           .hexdigest()[:16])

    @property
    def key(self) -> str:
        """The store-wide id of this version: ``name`` for version 1, else ``name@version``."""
        return self.name if self.version == 1 else f"{self.name}@{self.version}"

    @property
    def kind(self) -> str:
        """:data:`KIND`."""
        return KIND

    def fingerprint(self) -> str:
        """A digest of what determines the feature's values: inputs, request fields, code and the values the
        code uses (not the name or metadata). Equal fingerprints: the same version."""
        return self.digest

    def same_definition(self, other: OnDemandFeature) -> bool:
        """True if ``other`` computes the same values (metadata aside)."""
        return (self.inputs, self.request, self.digest) == (other.inputs, other.request, other.digest)

    def loaded(self) -> Callable[[pd.DataFrame], Any]:
        """The function, unpickled from :attr:`code` on first use in this process.

        Raises:
            OnDemandError: it cannot be loaded here (e.g. it refers to a module this process cannot import).
        """
        fn = self.function
        if fn is None:
            import cloudpickle

            try:
                fn = cloudpickle.loads(base64.b64decode(self.code))
            except Exception as exc:  # noqa: BLE001 - whatever the pickle needs is missing here
                raise OnDemandError(f"on-demand feature {self.key!r}: its function cannot be loaded in this "
                                    f"process ({type(exc).__name__}: {exc})") from exc
            object.__setattr__(self, "function", fn)
        return fn

    def apply(self, frame: pd.DataFrame) -> np.ndarray:
        """The feature's values for ``frame`` (one per row: a Series aligned on its index, else by position),
        checked.

        Raises:
            OnDemandError: the function raised, returned the wrong number of values, or a Series whose index
                is not the frame's rows.
        """
        fn = self.loaded()
        try:
            out = fn(frame)
        except Exception as exc:  # noqa: BLE001 - the user's code: name it, keep the cause
            raise OnDemandError(f"on-demand feature {self.key!r}: its function raised "
                                f"{type(exc).__name__}: {exc}") from exc
        if isinstance(out, Iterator):  # a generator or map(...): its values, one per row
            out = list(out)
        if isinstance(out, pd.DataFrame):
            raise OnDemandError(f"on-demand feature {self.key!r}: returned a DataFrame of {out.shape[1]} "
                                "column(s); return one value per row (a Series or an array)")
        if isinstance(out, pd.Series) and len(out) == len(frame) and not out.index.equals(frame.index):
            # A Series carries row labels: a sorted or shuffled one is put back in the frame's order (as
            # pandas assigns one to a column); labels that are not the frame's cannot be placed at all.
            if not out.index.is_unique or not out.index.isin(frame.index).all():
                raise OnDemandError(f"on-demand feature {self.key!r}: returned a Series of {len(out)} values whose "
                                    "index is not the frame's rows; return it on the frame's index (or an array)")
            out = out.reindex(frame.index)
        if isinstance(out, pd.Series | pd.Index):
            values = out.to_numpy()
        elif _scalar(out):
            values = np.empty(len(frame), dtype=object) if out is None else np.full(len(frame), out)
        else:
            try:
                values = np.asarray(out)
            except ValueError:  # ragged lists: one object per row
                values = None
            if values is None or (values.ndim > 1 and isinstance(out, list | tuple) and len(out) == len(frame)):
                # One list (or tuple, array) per row, ragged or not: each row's value is that object, as a
                # Series of lists gives (numpy would read lists of one length as a 2-D array).
                values = np.empty(len(out), dtype=object)
                for i, v in enumerate(out):
                    values[i] = v
        if values.ndim != 1 or len(values) != len(frame):
            raise OnDemandError(f"on-demand feature {self.key!r}: returned {values.shape} values for "
                                f"{len(frame)} rows (one value per row expected)")
        return values

    def to_dict(self) -> dict:
        return {"name": self.name, "inputs": list(self.inputs), "request": list(self.request),
                "code": self.code, "source": self.source, "digest": self.digest, "description": self.description,
                "owner": self.owner, "tags": list(self.tags), "version": self.version, "created": self.created}

    @classmethod
    def from_dict(cls, d: dict) -> OnDemandFeature:
        """The definition :meth:`to_dict` wrote; its function is not unpickled until :meth:`loaded`."""
        return cls(**{k: tuple(v) if k in ("inputs", "request", "tags") else v for k, v in d.items()})


def on_demand(name: str, *, inputs: Sequence[str] | str = (), request: Sequence[str] | str = (),
              **metadata) -> Callable[[Callable], OnDemandFeature]:
    """Decorator form of :class:`OnDemandFeature`: the decorated function becomes the feature's function.

    >>> @on_demand("double", request=["x"])
    ... def double(df):
    ...     return df.x * 2
    >>> double.apply(pd.DataFrame({"x": [1, 2]})).tolist()
    [2, 4]
    """

    def wrap(fn: Callable) -> OnDemandFeature:
        return OnDemandFeature(name=name, function=fn, inputs=inputs, request=request, **metadata)

    return wrap


def _scalar(v: Any) -> bool:
    """One value (for every row), as opposed to a sequence of one per row."""
    if isinstance(v, list | tuple):  # ragged lists too (np.ndim would refuse them)
        return False
    if v is None or isinstance(v, str | bytes | dict):
        return True
    return not hasattr(v, "__len__") or np.ndim(v) == 0


def _values_list(values: Any) -> list:
    """Values as a list of Python objects (numpy scalars become Python ones)."""
    if isinstance(values, pd.Series | pd.Index | np.ndarray):
        return values.tolist()
    return list(values)


def request_columns(feature: OnDemandFeature, request: Mapping[str, Any] | pd.DataFrame | None,
                    n: int) -> dict[str, list]:
    """The request fields ``feature`` reads, as lists of ``n`` Python values.

    ``request`` maps each field to a scalar (the same for every row) or a sequence of ``n`` values (one per
    row), or is a DataFrame of ``n`` rows. Every path builds request columns from such lists, so the same
    values give the same dtypes online and in training sets.

    Raises:
        OnDemandError: a field is missing, has a sequence of another length than ``n``, or is a DataFrame or an
            array of more than one dimension.

    >>> f = OnDemandFeature(name="d", request=("x", "y"), function=lambda df: df.x - df.y)
    >>> request_columns(f, {"x": 1.5, "y": [1, 2]}, 2)
    {'x': [1.5, 1.5], 'y': [1, 2]}
    """
    out: dict[str, list] = {}
    for r in feature.request:
        if request is None or r not in request:
            given = [] if request is None else sorted(map(str, request.keys()))
            raise OnDemandError(f"on-demand feature {feature.key!r}: missing request field {r!r} (given: {given})")
        v = request[r]
        if _scalar(v):
            out[r] = [v.item() if isinstance(v, np.generic) else v] * n
            continue
        if isinstance(v, pd.DataFrame) or (isinstance(v, np.ndarray) and v.ndim > 1):
            # Read as a sequence, a DataFrame would give its column names and a 2-D array its rows.
            what = ("a DataFrame (e.g. a repeated column)" if isinstance(v, pd.DataFrame)
                    else f"an array of shape {v.shape}")
            raise OnDemandError(f"on-demand feature {feature.key!r}: request field {r!r} is {what}; give one "
                                "value, or a sequence of one value per row")
        vals = _values_list(v)
        if len(vals) != n:
            raise OnDemandError(f"on-demand feature {feature.key!r}: request field {r!r} has {len(vals)} values "
                                f"for {n} rows (give one value, or one per row)")
        out[r] = vals
    return out


def input_frame(feature: OnDemandFeature, inputs: Mapping[str, np.ndarray], request: Mapping[str, list],
                n: int) -> pd.DataFrame:
    """The frame ``feature``'s function sees: its inputs' values (arrays, as reads return them), then its
    request fields (lists, see :func:`request_columns`), in the definition's order, ``RangeIndex(n)``.

    >>> f = OnDemandFeature(name="r", inputs=("a",), request=("x",), function=lambda df: df.a * df.x)
    >>> input_frame(f, {"a": np.array([1, 2])}, {"x": [0.5, 2.0]}, 2).dtypes.astype(str).tolist()
    ['int64', 'float64']
    """
    index = pd.RangeIndex(n)
    cols: dict[str, Any] = {}
    for i in feature.inputs:
        a = np.array(inputs[i])  # a copy: the function may change its frame
        # Object columns stay object (pandas would turn strings into its str dtype and None into NaN);
        # numeric arrays go in as they are (a Series per column costs more than a small read).
        cols[i] = pd.Series(a, index=index, dtype=object) if a.dtype == object else a
    for r in feature.request:
        cols[r] = request[r]  # inferred by pandas from Python values, the same way in every path
    return pd.DataFrame(cols, index=index, copy=False)
