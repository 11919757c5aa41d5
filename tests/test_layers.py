"""Dependencies point down and never in a circle, read from the source (every import, also inside functions).

Layers, bottom to top: core (errors, fsutil, paths, devices, ...) -> io -> preprocess/phantom -> model ->
runtime -> train/export -> sample -> evaluate/segmentation -> cli. ``runtime`` (ONNX Runtime sessions, the
sampling backends) sits below ``export`` because export verifies its graphs with runtime's sessions.
A package ``__init__``'s lazy re-exports (:mod:`meddiff_cli.lazy`) count as imports of the named submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "meddiff_cli"
LAYERS = [
    {"meddiff_cli", "errors", "fsutil", "signals", "paths", "devices", "lazy", "modality"},
    {"io"},
    {"preprocess", "phantom"},
    {"model"},
    {"runtime"},
    {"train", "export"},
    {"sample"},
    {"evaluate", "segmentation"},
    {"cli", "__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 350
LONG_MODULE_REASON = "Longer than"  # a module over MAX_LINES says why at its top, starting with this


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    return _imports_of(path.read_text(encoding="utf-8"), _module_name(path), modules)


def _imports_of(source: str, this: str, modules: dict[str, Path]) -> set[str]:
    """meddiff_cli modules that module ``this`` imports (submodules resolved; lazy re-exports included)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("meddiff_cli")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("meddiff_cli"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            found |= {f"{this}.{key.value}" for key in node.args[1].keys}
    return {name for name in found if name in modules and name != this}


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else parts[0]]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert all(_layer(name) >= 0 for name in _modules())


def test_no_import_points_up_a_layer():
    upward = [f"{module} -> {target}" for module, targets in _graph().items() for target in targets
              if _layer(target) > _layer(module)]
    assert upward == []


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_function_level_and_lazy_imports():
    """The rules above would be blind if the parser missed imports hidden in functions or lazy re-exports."""
    modules = _modules()
    assert "meddiff_cli.runtime.onnx" in _imports(PACKAGE / "export" / "graphs.py", modules)
    assert "meddiff_cli.sample.pipeline" in _imports(PACKAGE / "sample" / "__init__.py", modules)
    assert "meddiff_cli.sample" in _imports(PACKAGE / "cli" / "sample.py", modules)  # imported in the command body
    hidden = "def f():\n    from meddiff_cli.sample.pipeline import sample_volumes\n"
    found = _imports_of(hidden, "meddiff_cli.model.x", modules)
    assert found == {"meddiff_cli.sample.pipeline"} and _layer("meddiff_cli.sample.pipeline") > _layer("meddiff_cli.model.x")


def test_modules_stay_short_or_say_why():
    long = [f"{name} ({len(path.read_text().splitlines())} lines)" for name, path in _modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES
            and LONG_MODULE_REASON not in "\n".join(path.read_text().splitlines()[:15])]
    assert long == []
