"""Imports run one way (docs/ARCHITECTURE.md, "Layers"), checked on the source with `ast`.

    cli → server → service → scheduler → engine → {backends, bundle} → model → leaves

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import still
makes its module depend on the other. A module may import its own layer and any layer
below it; an import of a higher layer is an *upward* import and fails, naming the file,
line and target.

The decisions that ARCHITECTURE's table leaves open:

- **Leaves** (`text`, `audio`, `voices`, `metrics`, `metrics_http`, `playback`, `settings`,
  `security`, the package root and `_tools`) import no layer above them. They may import
  each other (`metrics` serves itself through `metrics_http`, `security` reads `settings`)
  as long as no two leaves import each other, directly or round about.
- The **service** layer is every module of a request's life on the event loop:
  `validation`, `streams`, `rpc`, `replies`, `service`, `streaming_service`.
- **`backends`** (what the engine applies to the model) and **`bundle`** (the files a model
  is built from) sit between the engine and the model: both use the model, the model uses
  neither.
- The product package never imports `loadtest` or `benchmarks`, with one exception below:
  the `bench` command, which imports its benchmark when it runs.
- The light client (`clients/python/supertonic_client`) imports neither `supertonic_grpc`
  nor torch: it must install without them.

Exceptions are listed in `ALLOWED` with their reason; each must be a function-level import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "supertonic_grpc"
CLIENT = REPO / "clients" / "python" / "supertonic_client"

# (module prefix, layer, rank): a module belongs to its longest matching prefix; a layer may
# import layers of lower or equal rank. Leaves are each their own layer, all at rank 0.
LAYERS: tuple[tuple[str, str, int], ...] = (
    ("supertonic_grpc", "root", 0),
    ("supertonic_grpc._tools", "_tools", 0),
    ("supertonic_grpc.text", "text", 0),
    ("supertonic_grpc.audio", "audio", 0),
    ("supertonic_grpc.voices", "voices", 0),
    ("supertonic_grpc.metrics", "metrics", 0),
    ("supertonic_grpc.metrics_http", "metrics_http", 0),
    ("supertonic_grpc.playback", "playback", 0),
    ("supertonic_grpc.settings", "settings", 0),
    ("supertonic_grpc.security", "security", 0),
    ("supertonic_grpc.model", "model", 1),
    ("supertonic_grpc.backends", "backends", 2),
    ("supertonic_grpc.bundle", "bundle", 2),
    ("supertonic_grpc.engine", "engine", 3),
    ("supertonic_grpc.scheduler", "scheduler", 4),
    ("supertonic_grpc.validation", "service", 5),
    ("supertonic_grpc.streams", "service", 5),
    ("supertonic_grpc.rpc", "service", 5),
    ("supertonic_grpc.replies", "service", 5),
    ("supertonic_grpc.service", "service", 5),
    ("supertonic_grpc.streaming_service", "service", 5),
    ("supertonic_grpc.server", "server", 6),
    ("supertonic_grpc.cli", "cli", 7),
)

# (importing module, imported module prefix) -> why it is allowed. Function-level only.
ALLOWED: dict[tuple[str, str], str] = {
    ("supertonic_grpc.cli", "benchmarks"): (
        "`supertonic-grpc bench` runs the benchmark beside the package, imported when it runs"
    ),
    ("supertonic_grpc.settings", "supertonic_grpc.backends.precision"): (
        "--precision is validated at start-up by the backend's own parser (one list of names)"
    ),
}

# Known violations, each an xfail(strict) until fixed, so a fix fails the test until its
# mark goes. None today: issue 13's layout work removed the last (model/hub -> bundle).
KNOWN: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a submodule when `from pkg import submodule`)
    path: Path
    line: int
    lazy: bool  # inside a function

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at module level"
        shown = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{shown}:{self.line}: {self.module} imports {self.target} ({where})"


def module_name(path: Path, root: Path) -> str:
    """`root/a/b.py` -> `a.b` (with `root/a/__init__.py` -> `a`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_in(package: Path) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _function_lines(tree: ast.AST) -> set[int]:
    """Line numbers of import statements nested in a function body."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def imports_of(path: Path, module: str, known: Iterable[str] = ()) -> list[Import]:
    """Every import in one file, resolved to absolute module names. `from pkg import x`
    names `pkg.x` when that is one of the `known` modules, else `pkg`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    known_set = set(known)
    lazy_lines = _function_lines(tree)
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known_set else base)
        else:
            continue
        lazy = node.lineno in lazy_lines
        found += [Import(module, t, path, node.lineno, lazy) for t in dict.fromkeys(targets)]
    return found


def layer_of(module: str, layers: tuple[tuple[str, str, int], ...] = LAYERS) -> tuple[str, int]:
    best: tuple[str, str, int] | None = None
    for prefix, layer, rank in layers:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer, rank)
    if best is None:
        raise KeyError(f"{module} has no layer: add it to LAYERS (see ARCHITECTURE.md)")
    return best[1], best[2]


def _allowed(imp: Import, allowed: dict[tuple[str, str], str]) -> bool:
    return imp.lazy and any(
        (imp.module == m or imp.module.startswith(m + ".")) and imp.target.startswith(t)
        for m, t in allowed
    )


def upward_imports(
    imports: Iterable[Import],
    package: str = "supertonic_grpc",
    layers: tuple[tuple[str, str, int], ...] = LAYERS,
    allowed: dict[tuple[str, str], str] = ALLOWED,
) -> list[str]:
    """Each import of a higher layer, of another leaf that imports back, or of the load
    tester or benchmarks, as a readable line."""
    problems = []
    for imp in imports:
        if _allowed(imp, allowed):
            continue
        top = imp.target.split(".")[0]
        if top in ("loadtest", "benchmarks"):
            problems.append(f"{imp}: the product package must not import {top}")
            continue
        if top != package:
            continue
        (mine, my_rank), (theirs, their_rank) = (
            layer_of(imp.module, layers),
            layer_of(imp.target, layers),
        )
        if their_rank > my_rank:
            problems.append(f"{imp}: upward, {mine} (rank {my_rank}) -> {theirs} ({their_rank})")
    return problems


def layer_cycles(
    imports: Iterable[Import],
    package: str = "supertonic_grpc",
    layers: tuple[tuple[str, str, int], ...] = LAYERS,
    allowed: dict[tuple[str, str], str] = ALLOWED,
) -> list[list[str]]:
    """Cycles in the graph of layers (an edge per import between two different layers)."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if _allowed(imp, allowed) or imp.target.split(".")[0] != package:
            continue
        a, b = layer_of(imp.module, layers)[0], layer_of(imp.target, layers)[0]
        if a != b:
            edges.setdefault(a, set()).add(b)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return cycles


def package_imports() -> list[Import]:
    mods = modules_in(PACKAGE)
    return [imp for m, p in mods.items() for imp in imports_of(p, m, mods)]


PACKAGE_MODULES = sorted(modules_in(PACKAGE))


def _marked(module: str) -> object:
    if module in KNOWN:
        return pytest.param(module, marks=pytest.mark.xfail(strict=True, reason=KNOWN[module]))
    return module


# --- the package -------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    for module in PACKAGE_MODULES:
        layer_of(module)  # raises, naming the module, when it has none


@pytest.mark.parametrize("module", [_marked(m) for m in PACKAGE_MODULES])
def test_module_imports_only_its_own_layer_and_below(module: str) -> None:
    mods = modules_in(PACKAGE)
    problems = upward_imports(imports_of(mods[module], module, mods))
    assert not problems, "\n".join(problems)


def test_no_cycle_between_layers() -> None:
    imports = [i for i in package_imports() if i.module not in KNOWN]
    assert layer_cycles(imports) == []


def test_exceptions_are_function_level_imports_that_still_exist() -> None:
    imports = package_imports()
    for module, target in ALLOWED:
        uses = [i for i in imports if i.module.startswith(module) and i.target.startswith(target)]
        assert uses, f"ALLOWED lists {module} -> {target}, which no longer happens: drop it"
        assert all(i.lazy for i in uses), [str(i) for i in uses if not i.lazy]


# --- the light client ----------------------------------------------------------------------


def test_light_client_imports_neither_the_server_nor_torch() -> None:
    mods = modules_in(CLIENT)
    bad = [
        str(imp)
        for m, p in mods.items()
        if not m.startswith("supertonic_client._proto")
        for imp in imports_of(p, m, mods)
        if imp.target.split(".")[0] in ("supertonic_grpc", "torch", "loadtest", "benchmarks")
    ]
    assert not bad, "\n".join(bad)


# --- the checker itself --------------------------------------------------------------------

SYNTHETIC_LAYERS = (
    ("pkg", "root", 0),
    ("pkg.leaf", "leaf", 0),
    ("pkg.other_leaf", "other_leaf", 0),
    ("pkg.low", "low", 1),
    ("pkg.high", "high", 2),
)


def _synthetic(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in files.items():
        (root / f"{name}.py").write_text(text)
    mods = modules_in(root)
    return [imp for m, p in mods.items() for imp in imports_of(p, m, mods)]


def test_checker_catches_upward_imports_at_module_level_and_in_functions(tmp_path: Path) -> None:
    imports = _synthetic(
        tmp_path,
        {
            "leaf": "import json\n",
            "other_leaf": "from pkg import leaf\n",
            "low": "from pkg import leaf\n\ndef f():\n    from pkg.high import thing\n",
            "high": "from . import low\nfrom pkg.low import x\nimport loadtest.runner\n",
        },
    )
    problems = sorted(upward_imports(imports, "pkg", SYNTHETIC_LAYERS, {}))
    assert len(problems) == 2, problems
    assert problems[0].endswith(
        "pkg/high.py:3: pkg.high imports loadtest.runner (at module level): "
        "the product package must not import loadtest"
    )
    assert problems[1].endswith(
        "pkg/low.py:4: pkg.low imports pkg.high (inside a function): "
        "upward, low (rank 1) -> high (2)"
    )
    # The same lazy import, listed as an exception, passes; at module level it would not.
    assert len(upward_imports(imports, "pkg", SYNTHETIC_LAYERS, {("pkg.low", "pkg.high"): ""})) == 1


def test_checker_catches_a_cycle_between_leaves(tmp_path: Path) -> None:
    imports = _synthetic(
        tmp_path,
        {
            "leaf": "from pkg.other_leaf import y\n",
            "other_leaf": "import pkg.leaf\n",
            "low": "",
            "high": "",
        },
    )
    assert upward_imports(imports, "pkg", SYNTHETIC_LAYERS, {}) == []  # same rank
    assert layer_cycles(imports, "pkg", SYNTHETIC_LAYERS, {}) == [["leaf", "other_leaf", "leaf"]]


def test_checker_needs_a_layer_for_every_module() -> None:
    with pytest.raises(KeyError, match=r"pkg\.nowhere has no layer"):
        layer_of("pkg.nowhere", SYNTHETIC_LAYERS[1:])
