"""The layers: serving (core, inference, ros) imports no training or evaluation module, and
training and evaluation never import each other."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spatialoc_ros"


def imported_modules(path: Path):
    """Every spatialoc_ros module a file imports (at the top or inside functions), dotted."""
    tree = ast.parse(path.read_text(), str(path))
    here = ["spatialoc_ros"] + list(path.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            yield from ([name] if node.module else [f"{name}.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def layer_files(*parts):
    return sorted(PACKAGE.joinpath(*parts).rglob("*.py")) if parts[-1] != "inference.py" \
        else [PACKAGE / "inference.py"]


@pytest.mark.parametrize("files, forbidden", [
    (("core",), ("spatialoc_ros.training", "spatialoc_ros.evaluation", "spatialoc_ros.inference",
                 "spatialoc_ros.ros", "spatialoc_ros.commands", "spatialoc_ros.cli")),
    (("inference.py",), ("spatialoc_ros.training", "spatialoc_ros.evaluation",
                         "spatialoc_ros.ros")),
    (("data",), ("spatialoc_ros.core", "spatialoc_ros.networks", "spatialoc_ros.training",
                 "spatialoc_ros.evaluation", "spatialoc_ros.inference")),
    (("networks",), ("spatialoc_ros.core", "spatialoc_ros.training", "spatialoc_ros.evaluation",
                     "spatialoc_ros.inference")),
    (("training",), ("spatialoc_ros.evaluation",)),
    (("evaluation",), ("spatialoc_ros.training",)),
], ids=["core", "inference", "data", "networks", "training", "evaluation"])
def test_no_layer_imports_from_above_or_beside(files, forbidden):
    wrong = [f"{path.relative_to(PACKAGE)} imports {name}"
             for path in layer_files(*files) for name in imported_modules(path)
             if name.startswith(forbidden)]
    assert not wrong, "\n".join(wrong)


def test_localizing_in_a_fresh_interpreter_loads_no_trainer_or_evaluation(tiny_dataset,
                                                                          tiny_weights):
    code = f"""
import json, sys
from spatialoc_ros.inference import Localizer
loc = Localizer({str(tiny_dataset)!r}, {str(tiny_weights)!r}, scenes=["0010"], device="cpu",
                cache={str(tiny_weights / "cache")!r}, top_k=3)
loc.localize("The pose is north of a gray building. The pose is east of a green pole.")
print(json.dumps(sorted(m for m in sys.modules
                        if m.startswith(("spatialoc_ros.training", "spatialoc_ros.evaluation")))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
