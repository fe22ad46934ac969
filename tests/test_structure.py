"""The package's shape: no import circles among its modules, no overlong source files."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "sccvae"
PACKAGE = PACKAGE_ROOT.name
MAX_LINES = 500


def _module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__)."""
    names = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``: they never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
            if name == "TYPE_CHECKING":
                skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package imported anywhere in ``path`` (module level or in functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_only(tree)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # relative: the containing package, up ``level - 1`` more packages
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            # ``from package import submodule`` imports the submodule
            found |= {f"{source}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules and name != module}


def _import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_import_graph_sees_relative_absolute_and_function_imports():
    graph = _import_graph()
    assert "sccvae._perturbations" in graph["sccvae.splits._designs"]  # absolute, module level
    assert "sccvae.metrics._core" in graph["sccvae.metrics._evaluate"]  # relative
    assert "sccvae.data" in graph["sccvae.benchmark._data"]  # inside a function
    assert "sccvae.benchmark._fold" not in graph["sccvae.benchmark._methods"]  # type-only


def test_no_import_circles():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "Import circle: " + " -> ".join(cycle)


#: What each layer may not import: the module is pure torch (no training, no AnnData model),
#: training knows nothing of the model, and nothing below the benchmark imports it.
FORBIDDEN = {
    "sccvae.module": ("sccvae.model", "sccvae.train", "sccvae.benchmark", "sccvae.baselines"),
    "sccvae.train": ("sccvae.model", "sccvae.benchmark", "sccvae.baselines"),
    "sccvae.model": ("sccvae.benchmark", "sccvae.baselines"),
}


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_layers_import_downwards_only():
    graph = _import_graph()
    assert any(_inside(name, "sccvae.module") for name in graph)  # the layers exist
    upward = {
        (name, imported)
        for layer, above in FORBIDDEN.items()
        for name, imports in graph.items()
        if _inside(name, layer)
        for imported in imports
        if any(_inside(imported, package) for package in above)
    }
    assert not upward, f"Imports that run up the layers: {sorted(upward)}"


def test_no_source_file_over_500_lines():
    lengths = {
        str(path.relative_to(PACKAGE_ROOT.parent)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
    }
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"Source files over {MAX_LINES} lines (split them): {too_long}"


def test_benchmark_scripts_import_names_that_exist():
    """The scripts under ``benchmarks/`` import package names that exist (moves break them)."""
    import importlib

    scripts = sorted((PACKAGE_ROOT.parents[1] / "benchmarks").glob("*.py"))
    assert scripts
    missing = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(PACKAGE):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, f"benchmark scripts import names that do not exist: {missing}"
