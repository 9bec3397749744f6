"""The house's import contracts, read from the source (every import, function-local ones included):

- no import circle among the modules of ``dept`` and ``pipelines``;
- ``dept`` (the method library) never imports ``pipelines``, Ray or MLflow;
- ``pipelines`` in layers, each importing only its own layer and those below:
  ``cli`` > ``tune`` / ``report`` / ``analysis`` > ``trial`` > ``featurize`` / ``tracking`` > ``store``;
- ``import dept`` and building the CLI (``--help``) load no torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dept", "pipelines")
#: pipelines' layers, top first; a module may import its own layer's and lower layers' modules only.
LAYERS = (
    ("pipelines.cli",),
    ("pipelines.tune", "pipelines.report", "pipelines.analysis"),
    ("pipelines.trial",),
    ("pipelines.featurize", "pipelines.tracking"),
    ("pipelines.store",),
)
FORBIDDEN_IN_DEPT = ("pipelines", "ray", "mlflow")


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports (a ``from pkg import sub`` that names a submodule counts as that submodule;
    imports under ``if TYPE_CHECKING:`` run nothing and are left out)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
    return {m for m in found if m != name}


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Imports between modules, a package's ``__init__`` left out: a package re-exporting its modules is not a loop
    of its own."""
    inits = {m for m, p in module_files().items() if p.name == "__init__.py"}
    return {m: {t for t in ts if t not in inits} for m, ts in edges.items() if m not in inits}


def test_no_import_circle():
    found = cycles(package_edges(graph()))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_contract_check_finds_a_circle():
    """The check itself: a planted loop is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_dept_imports_no_orchestration():
    bad = sorted(f"{m} -> {t}" for m, ts in graph().items() if within(m, "dept")
                 for t in ts if any(within(t, f) for f in FORBIDDEN_IN_DEPT))
    assert not bad, "the method library imports orchestration: " + ", ".join(bad)


def test_pipelines_layers():
    level = {prefix: i for i, layer in enumerate(LAYERS) for prefix in layer}

    def layer_of(module: str) -> int | None:
        hits = [level[p] for p in level if within(module, p)]
        return hits[0] if hits else None

    bad = []
    for m, ts in graph().items():
        mine = layer_of(m)
        for t in ts:
            theirs = layer_of(t)
            if theirs is None:
                continue
            if mine is None:
                # a shared module (figures, selection, secrets, ...): below every layer that is not the bottom one
                if theirs < len(LAYERS) - 2:
                    bad.append(f"{m} -> {t}")
            elif theirs < mine:
                bad.append(f"{m} -> {t}")
    assert not bad, "imports that run up the layers: " + ", ".join(sorted(bad))


@pytest.mark.parametrize("code", [
    "import dept, dept.config, dept.protocols, dept.datasets",
    "from click.testing import CliRunner; from pipelines.cli import main; "
    "r = CliRunner().invoke(main, ['train', '--help']); assert r.exit_code == 0, r.output; "
    "r = CliRunner().invoke(main, ['tune', '--help']); assert r.exit_code == 0, r.output",
])
def test_cheap_imports_load_no_torch(code):
    """``import dept`` and the CLI's help are lazy: torch (seconds to import on a small CPU) is not loaded."""
    probe = f"import sys; {code}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout


def test_dept_names_load_on_first_use():
    """The lazy namespace still gives every public name, and ``dept.train`` is the function, not a module."""
    import dept

    for name in dept.__all__:
        assert getattr(dept, name) is not None, name
    assert callable(dept.train) and not isinstance(dept.train, type(dept))
