"""The layers of the house: stages never import each other or run each other as subprocesses; what they share
lives in `pipeline`, which imports nothing of ours but `interpreter`."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["data_gen", "finetune", "eval"]
OURS = {"interpreter", "pipeline", *STAGES}


def imports(package: str) -> dict[str, set[str]]:
    """Our top-level packages each module of `package` imports (at any depth of the module)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & OURS
    return found


@pytest.mark.parametrize("package, allowed", [(s, {s, "interpreter", "pipeline"}) for s in STAGES] +
                         [("pipeline", {"pipeline", "interpreter"}), ("interpreter", {"interpreter"})])
def test_imports_only_go_down(package, allowed):
    wrong = {module: sorted(names - allowed) for module, names in imports(package).items() if names - allowed}
    assert not wrong, wrong


@pytest.mark.parametrize("package", STAGES + ["pipeline"])
def test_no_stage_runs_another_as_a_subprocess(package):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "subprocess" not in modules, path  # preference sampling runs in-process, not as python -m eval.pairs
