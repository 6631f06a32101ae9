"""The project's modules import one another without a circle.

The graph is built statically (``ast``, nothing is imported) over every ``.py`` file under
``fastrobust/``, ``kernels/`` and ``benchmarks/``. Module names:

* ``fastrobust/a/b.py`` is ``fastrobust.a.b``; a package's ``__init__.py`` is the package;
* ``kernels/x.py`` is ``fastrobust.kernels.x`` (setup.py installs ``kernels/`` under that name);
* ``benchmarks/x/y.py`` is ``benchmarks.x.y``. The benchmark scripts put their own folder (and
  the GPU runner's summary ``benchmarks/speed/``) on ``sys.path`` and import their helpers by bare
  name (``from _util import ...``): a bare name that is not a project module resolves to a file of
  the importing file's folder, then to one in ``benchmarks/speed/``.

Edges. Every ``import`` and ``from ... import`` statement counts, at module level or inside a
function (a deferred import still ties the two modules together: the reader must know both, and
the import runs as soon as the function does); relative imports are resolved against the
importing module's package. Imports under ``if TYPE_CHECKING:`` count too: they never run, but a
module that names another's types in its signatures depends on it as much as one that calls it (the
reader and the type checker must know both). Names passed to ``importlib.import_module`` (lazy
re-exports of a package ``__init__``, the method registry's built-ins) are left out.

Packages. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, but that
alone is no edge to them: a package ``__init__`` that re-exports its submodules would otherwise
close a circle with each of them. ``from a.b import c`` is an edge to the submodule ``a.b.c``
when ``c`` is one, and to the package ``a.b`` when ``c`` is a name defined by its ``__init__``.
So a circle through a package counts exactly when a submodule imports the package's own names
back while the package imports that submodule.

A circle is a strongly connected component of more than one module. The test prints each one
as a path ``a -> b -> a`` with the file and line of every import on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the dotted name its files are imported under.
TREES = {"fastrobust": "fastrobust", "kernels": "fastrobust.kernels", "benchmarks": "benchmarks"}

# Circles that are known and being removed. Each entry must still be a circle of the graph: the
# test fails as soon as one is fixed, so that its allowance goes with it.
ALLOWED: set[frozenset[str]] = set()


def module_files() -> dict[str, Path]:
    """{dotted module name: file} of every project module."""
    out = {}
    for folder, dotted in TREES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([dotted, *parts])] = path
    return out


def _imports(tree: ast.AST, *, type_only: bool = True):
    """Every Import / ImportFrom node; those under ``if TYPE_CHECKING:`` only when ``type_only``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not type_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, importer: str, modules: dict[str, Path]) -> str | None:
    """The project module an absolute import of ``name`` by ``importer`` loads, if any."""
    if name in modules:
        return name
    if importer.startswith("benchmarks") and "." not in name:
        # Script-style import of a helper: the importer's folder, then benchmarks/speed/ (module doc).
        folder = modules[importer].parent
        for candidate, path in modules.items():
            if candidate.startswith("benchmarks") and path.parent == folder and path.stem == name:
                return candidate
        if f"benchmarks.speed.{name}" in modules:
            return f"benchmarks.speed.{name}"
    return None


def _package(module: str, modules: dict[str, Path]) -> str:
    """The package relative imports of ``module`` start from."""
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def import_edges(modules: dict[str, Path], *, type_only: bool = True) -> dict[str, dict[str, int]]:
    """{importer: {imported module: line of the first such import}} over project modules (with the
    imports under ``if TYPE_CHECKING:`` unless ``type_only`` is False)."""
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree, type_only=type_only):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_resolve(alias.name, module, modules) for alias in node.names]
            else:
                if node.level:
                    base = _package(module, modules)
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = _resolve(f"{source}.{alias.name}", module, modules)
                    targets.append(sub if sub is not None else _resolve(source, module, modules))
            for target in targets:
                if target is not None and target != module:
                    edges[module].setdefault(target, node.lineno)
    return edges


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def describe(
    component: list[str], edges: dict[str, dict[str, int]], modules: dict[str, Path], root: Path = ROOT
) -> str:
    """One circle of ``component`` as ``a -> b -> a`` with where each import stands (paths from root)."""
    members = set(component)
    start = component[0]
    # Breadth-first search inside the component for the shortest way back to start.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        nxt = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child in members and child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    path = [start]
    while True:
        node = previous[path[-1]]
        path.append(node)
        if node == start:
            break
    path.reverse()
    hops = [f"  {a} -> {b}  ({modules[a].relative_to(root)}:{edges[a][b]})" for a, b in zip(path, path[1:])]
    return f"circle of {len(component)} modules {component}:\n" + "\n".join(hops)


def test_no_import_circle_beyond_the_known_ones() -> None:
    modules = module_files()
    edges = import_edges(modules)
    found = circles(edges)
    new = [c for c in found if frozenset(c) not in ALLOWED]
    assert not new, "import circles:\n" + "\n".join(describe(c, edges, modules) for c in new)
    fixed = ALLOWED - {frozenset(c) for c in found}
    assert not fixed, f"no longer a circle, remove it from ALLOWED: {[sorted(c) for c in fixed]}"


def test_the_graph_sees_the_imports_it_must() -> None:
    """Spot checks that the resolution rules above find real edges of each kind."""
    modules = module_files()
    edges = import_edges(modules)
    assert "fastrobust.kernels.noise" in modules and "fastrobust.kernels.common" in modules
    assert "fastrobust.validation" in edges["fastrobust.ops"]  # from fastrobust import validation
    assert "fastrobust.kernels.noise" in edges["fastrobust._library"]  # function-level import
    assert "fastrobust.kernels.common" in edges["fastrobust.kernels.noise"]  # kernels/ renamed
    assert "benchmarks.speed._util" in edges["benchmarks.speed._ops_grid"]  # bare, same folder
    assert "benchmarks.speed._ops_summary" in edges["benchmarks.gpu.summary"]  # bare, from gpu/
    assert "benchmarks.real.protocol" in edges["benchmarks.real.study"]


def test_a_new_circle_is_found_and_printed(tmp_path: Path) -> None:
    """The detector itself: a circle through a function-level and a relative import."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from pkg import a\n\ng = 1\n")
    (pkg / "c.py").write_text("from pkg import f\n")  # the package's names: an edge to pkg
    modules = {"pkg": pkg / "__init__.py", **{f"pkg.{n}": pkg / f"{n}.py" for n in "abc"}}
    edges = import_edges(modules)
    assert edges["pkg.a"] == {"pkg.b": 2} and edges["pkg.b"] == {"pkg.a": 1}
    assert edges["pkg.c"] == {"pkg": 1}
    # The package imports a, but neither a nor b imports the package's names: one circle, a <-> b.
    assert circles(edges) == [["pkg.a", "pkg.b"]]
    text = describe(["pkg.a", "pkg.b"], edges, modules, root=tmp_path)
    assert "pkg.a -> pkg.b  (pkg/a.py:2)" in text and "pkg.b -> pkg.a  (pkg/b.py:1)" in text
