"""The package's import arrows point one way: cli -> pipelines / training -> sampling -> flow -> nn.

Each subpackage may import only from layers below it (and itself); pipelines never import training
(training uses pipelines for its sample grids and its export, not the other way round)."""
import ast
from pathlib import Path

import starflow

ROOT = Path(starflow.__file__).parent
# layer of each subpackage; an import must go to a layer strictly below, or stay inside the subpackage
LAYERS = {"strict": 0, "outputs": 0, "_cpu": 0, "_malloc": 0, "nn": 1, "config": 1, "flow": 2, "sampling": 3, "data": 2,
          "conditioning": 2, "autoencoders": 3, "evaluation": 5.5, "pipelines": 4, "training": 5, "serve": 5, "cli": 6,
          "__init__": 2.5}   # the top-level package re-exports config and flow


def _imports(path: Path) -> set[str]:
    rel = path.relative_to(ROOT).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(rel[:-1])[:len(rel) - node.level] if node.level > 1 else list(rel[:-1])
            parts = base + (node.module.split(".") if node.module else [])
            out.add(parts[0] if parts else "__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("starflow."):
            out.add(node.module.split(".")[1])
    return out


def test_imports_point_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        pkg = rel[0] if len(rel) > 1 else rel[0][:-3]
        for target in _imports(path) - {pkg}:
            if target not in LAYERS or pkg not in LAYERS:
                bad.append(f"{path.relative_to(ROOT)}: unknown package {target!r} or {pkg!r}")
            elif LAYERS[target] >= LAYERS[pkg]:
                bad.append(f"{path.relative_to(ROOT)} ({pkg}) imports {target}")
    assert not bad, "\n".join(bad)
