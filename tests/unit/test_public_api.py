"""The declared public surface: ``__all__`` everywhere it is promised, every error class in rayfs.errors and
exported from rayfs, and no bare ValueError/TypeError/KeyError on a path a user's input reaches.

Modules that import Ray cannot be imported here (unit tests run without Ray), so every check reads the
source with :mod:`ast`; modules that import without Ray are also checked at run time.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path

import pytest

import rayfs
import rayfs.errors

ROOT = Path(rayfs.__file__).resolve().parent
MODULES = sorted(ROOT.rglob("*.py"))

# Packages and top-level modules every module of which declares __all__ (every package and module).
WITH_ALL = ("model", "aggregates", "engine", "storage", "sources", "shard", "store", "serve")
TOP_LEVEL_WITH_ALL = ("__init__", "errors", "cli", "demo", "testing", "workload")
# Modules that declare no __all__.
WITHOUT_ALL: set[str] = set()

# Exception classes that are not errors a user sees.
INTERNAL_EXCEPTIONS = {
    ("store/ingest.py", "_Incomplete"),  # control flow inside the ingest loop; converted before it returns
    ("sources/consumer.py", "_Unreachable"),  # a SourceError the consumer retries on (brokers may come back)
}

# Bare ValueError/TypeError/KeyError raises allowed outside a try that catches them. Each is reached only
# with arguments rayfs builds itself (or is a protocol's required exception), never with a user's input.
ALLOWED_RAISES = {
    # aggregates: shape contracts between the engine and an aggregate (arrays the engine built)
    ("aggregates/base.py", "Aggregate._prepare"),
    ("aggregates/base.py", "Aggregate._n_events"),
    ("aggregates/base.py", "Aggregate._check_ranges"),
    ("aggregates/ordered.py", "_Ordered._reduce"),
    ("aggregates/ordered_k.py", "_OrderedK._reduce"),
    ("aggregates/ordered_k.py", "_OrderedK.prepare"),
    # wire form: columns are normalised (engine.columns.value_column/key_column) before they are encoded,
    # and only rayfs decodes what it encoded
    ("engine/columns.py", "encode"),
    ("engine/columns.py", "decode"),
    # the Mapping protocol: __getitem__ of an unknown column raises KeyError
    ("engine/pit.py", "ColumnView.__getitem__"),
    # durability reaches a shard only after FeatureStore.open validated it
    ("shard/core.py", "ShardCore.__init__"),
    # a damaged snapshot entry: SnapshotStore.load catches it and rebuilds from the log
    ("storage/snapshot.py", "_unpack"),
}
BANNED = {"ValueError", "TypeError", "KeyError"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = ("rayfs", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            return list(ast.literal_eval(node.value))  # e.g. ``__all__: list[str] = []``
    return None


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (including inside top-level try/if blocks)."""
    names: set[str] = set()

    def walk(body):
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for h in node.handlers:
                    walk(h.body)
            elif isinstance(node, ast.If):
                walk(node.body)
                walk(node.orelse)

    walk(tree.body)
    return names


def importable(path: Path):
    """The module, or None if it needs Ray (blocked in unit tests)."""
    try:
        return importlib.import_module(module_name(path))
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------- __all__
def test_the_promised_modules_declare_all() -> None:
    promised = [p for p in MODULES if rel(p).split("/")[0] in WITH_ALL and rel(p) not in WITHOUT_ALL]
    promised += [ROOT / f"{name}.py" for name in TOP_LEVEL_WITH_ALL]
    assert len(promised) == len(MODULES) > 60  # every module of the package
    assert [rel(p) for p in promised if declared_all(parse(p)) is None] == []


def test_subpackages_say_what_they_are_and_that_they_are_internal() -> None:
    for pkg in WITH_ALL:
        doc = ast.get_docstring(parse(ROOT / pkg / "__init__.py")) or ""
        assert "internal" in doc and len(doc) > 100, pkg


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_every_name_in_all_exists(path: Path) -> None:
    tree = parse(path)
    names = declared_all(tree)
    if names is None:
        return
    assert len(names) == len(set(names)), f"{rel(path)}: duplicate names in __all__"
    lazy = getattr(rayfs, "_LAZY", {}) if rel(path) == "__init__.py" else {}
    assert sorted(set(names) - bound_names(tree) - set(lazy)) == [], rel(path)
    module = importable(path)
    if module is not None:
        for name in names:
            if name not in lazy:
                assert hasattr(module, name), f"{module.__name__}.{name}"


def test_the_lazy_top_level_names_exist_where_they_point() -> None:
    for name, module in rayfs._LAZY.items():
        assert name in rayfs.__all__
        path = ROOT.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        assert name in bound_names(parse(path)), (name, module)
    assert rayfs.iter_batches.__module__ == "rayfs.sources.files"
    assert rayfs.write_table.__module__ == "rayfs.sources.files"


def test_the_top_level_exports_config_loading() -> None:
    from rayfs.model import config

    assert rayfs.load_config is config.load_config
    assert rayfs.StoreConfig is config.StoreConfig


# ------------------------------------------------------------------------------------------------ errors
def exception_classes(path: Path, tree: ast.Module) -> list[str]:
    """Classes of a module that derive from an exception (by base name, followed within the module)."""
    known = {n for n in dir(rayfs.errors) if isinstance(getattr(rayfs.errors, n), type)} | {
        n for n in dir(builtins) if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n),
                                                                                     BaseException)}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                     for b in node.bases}
            if bases & (known | set(found)) or any(b.endswith(("Error", "Exception")) for b in bases):
                found.append(node.name)
    return found


def test_every_exception_class_is_a_rayfs_error_defined_in_errors_and_exported() -> None:
    elsewhere = [(rel(p), c) for p in MODULES if rel(p) != "errors.py"
                 for c in exception_classes(p, parse(p)) if (rel(p), c) not in INTERNAL_EXCEPTIONS]
    assert elsewhere == []
    defined = exception_classes(ROOT / "errors.py", parse(ROOT / "errors.py"))
    assert len(defined) >= 16
    for name in defined:
        cls = getattr(rayfs.errors, name)
        assert issubclass(cls, rayfs.RayfsError), name
        assert name in rayfs.errors.__all__ and name in rayfs.__all__, name
        assert getattr(rayfs, name) is cls


def test_the_error_list_is_complete_at_run_time() -> None:
    classes = {n for n, c in inspect.getmembers(rayfs.errors, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ == "rayfs.errors"}
    assert classes == set(rayfs.errors.__all__)


class RaiseScan(ast.NodeVisitor):
    """Raises of a banned exception not lexically inside a try that catches it, with their function."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.catching: list[set[str]] = []
        self.found: list[tuple[str, str, int]] = []

    def visit_FunctionDef(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Try(self, node: ast.Try) -> None:
        caught: set[str] = set()
        for h in node.handlers:
            types = [] if h.type is None else h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            caught |= {"Exception"} if h.type is None else {t.id for t in types if isinstance(t, ast.Name)}
        self.catching.append(caught)
        for stmt in node.body:
            self.visit(stmt)
        self.catching.pop()
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(exc, ast.Name) and exc.id in BANNED:
            if not any(exc.id in c or "Exception" in c for c in self.catching):
                self.found.append((".".join(self.scope), exc.id, node.lineno))


def test_no_bare_value_type_or_key_error_on_a_user_input_path() -> None:
    found = []
    for path in MODULES:
        scan = RaiseScan()
        scan.visit(parse(path))
        found += [(rel(path), where, exc, line) for where, exc, line in scan.found
                  if (rel(path), where) not in ALLOWED_RAISES]
    assert found == []


def test_the_raise_scan_finds_what_it_looks_for() -> None:
    scan = RaiseScan()
    scan.visit(ast.parse("def f(x):\n    if x:\n        raise ValueError(x)\n    try:\n        raise KeyError(x)\n"
                         "    except KeyError:\n        pass\n    try:\n        raise TypeError\n"
                         "    except ValueError:\n        pass\n"))
    assert [(w, e) for w, e, _ in scan.found] == [("f", "ValueError"), ("f", "TypeError")]


def test_errors_survive_pickling_with_their_fields() -> None:
    import pickle

    e = rayfs.FileFormatError("x.csv", "bad", line=3)
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is rayfs.FileFormatError and (again.path, again.line, str(again)) == ("x.csv", 3, str(e))
    c = rayfs.ConfigError("c.toml", 2, "store.path", "missing")
    again = pickle.loads(pickle.dumps(c))
    assert type(again) is rayfs.ConfigError and str(again) == "c.toml:2: store.path: missing"


# --------------------------------------------------------------------------------------------- constants
# Constants allowed to be written in more than one module with the same value, and why.
SAME_VALUE_ELSEWHERE = {
    "_INT64_MAX": "a property of int64 (2**63 - 1), not a setting that could drift",
    "_MAP_SIZE": "each LMDB environment's own address-space reservation (snapshot and online table)",
}


def module_constants(tree: ast.Module) -> dict[str, str]:
    """UPPER_CASE names a module assigns at its top level -> the source form of their value (type variables,
    ``_T = TypeVar("_T")``, are no constants)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "TypeVar":
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id.lstrip("_").isupper():
                    out[t.id] = ast.dump(node.value)
    return out


def test_each_constant_is_defined_once() -> None:
    """A setting such as DURABILITY is written in one module and imported everywhere else."""
    where: dict[tuple[str, str], list[str]] = {}
    for path in MODULES:
        for name, value in module_constants(parse(path)).items():
            where.setdefault((name, value), []).append(rel(path))
    twice = {name: paths for (name, _), paths in where.items() if len(paths) > 1 and name not in SAME_VALUE_ELSEWHERE}
    assert twice == {}
    assert module_constants(ast.parse("A = 1\n_B: int = 2\nc = 3\n_T = TypeVar('_T')\n")) == {
        "A": ast.dump(ast.Constant(1)), "_B": ast.dump(ast.Constant(2))}


# ------------------------------------------------------------------------------------------- module map
def readme_module_map(text: str) -> set[str]:
    """The modules the README's module map names, as paths relative to the package."""
    start = text.index("| package | what it holds |")
    end = text.find("\n\n", start)
    listed: set[str] = set()
    for line in text[start:end].splitlines()[2:]:
        package = line.split("|")[1]
        folder = re.search(r"`(\w+)/`", package)
        for name in re.findall(r"`(\w+\.py)`", line):
            listed.add(f"{folder.group(1)}/{name}" if folder else name)
    return listed


def test_the_readme_module_map_matches_the_tree() -> None:
    listed = readme_module_map((ROOT.parent / "README.md").read_text())
    assert sorted(listed - {rel(p) for p in MODULES}) == [], "the README names modules that do not exist"
    required = {rel(p) for p in MODULES if p.name != "__init__.py" or p.parent == ROOT}  # a package's own may go
    assert sorted(required - listed) == [], "modules missing from the README's module map"
    sample = "| package | what it holds |\n|---|---|\n| `store/` | `api.py` x, `reads.py` |\n| top | `cli.py` |\n"
    assert readme_module_map(sample) == {"store/api.py", "store/reads.py", "cli.py"}
