"""The tree's layers: pipeline stages import no other stage, and the engine imports nothing from the
pipeline (stages/, flows/), so it can be lifted out of the repository."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ("validate", "tokenize", "train_baseline", "prune", "finetune_sparse", "accelerate", "evaluate", "benchmark",
          "summary")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it, as absolute names (stages' relative imports resolved)."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, [package, base]))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from . import prune`
    return found


def repo_file(module: str) -> Path | None:
    path = REPO / (module.replace(".", "/") + ".py")
    return path if path.exists() else None


def imported_files(start: Path) -> set[str]:
    """The repository's Python files `start` imports, transitively (itself and package __init__s included)."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            todo += [found for found in (repo_file(module), repo_file(f"{module}.__init__")) if found]
    return {str(path.relative_to(REPO)) for path in seen}


def stage_imports(path: Path) -> set[str]:
    return {name for name in imported_modules(path) if name in {f"stages.{stage}" for stage in STAGES}}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage):
    assert stage_imports(REPO / "stages" / f"{stage}.py") - {f"stages.{stage}"} == set()


# The libraries below the pipeline, and what each may import from the repository.
LIBRARIES = {"engine": ("engine/",), "pruning": ("pruning/", "engine/")}


@pytest.mark.parametrize("module", sorted(str(path.relative_to(REPO)) for library in LIBRARIES
                                          for path in (REPO / library).glob("*.py")))
def test_a_library_reaches_nothing_above_it(module):
    """Its whole import graph, not only its direct imports: a helper module would hide a way up."""
    allowed = LIBRARIES[module.split("/")[0]]
    assert {name for name in imported_files(REPO / module) if not name.startswith(allowed)} == set()


def test_the_import_graph_follows_an_engine_module_up_to_the_pipeline(tmp_path, monkeypatch):
    for folder in ("engine", "stages"):
        (tmp_path / folder).mkdir()
    (tmp_path / "engine" / "plan.py").write_text("from .helper import x\n")
    (tmp_path / "engine" / "helper.py").write_text("from stages.common import x\n")
    (tmp_path / "stages" / "common.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert imported_files(tmp_path / "engine" / "plan.py") == {"engine/plan.py", "engine/helper.py", "stages/common.py"}


def test_the_libraries_import_with_the_pipeline_deleted(tmp_path):
    """A copy of the tree's packages without stages/ and flows/: the engine, its planner, its CLI and
    pruning import."""
    for package in REPO.glob("*/__init__.py"):
        if package.parent.name not in ("stages", "flows", "tests"):
            shutil.copytree(package.parent, tmp_path / package.parent.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import engine, engine.plan, engine.planner, engine.qa, pruning.masks; "
            f"assert engine.__file__.startswith({str(tmp_path)!r}), engine.__file__")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_the_import_check_sees_relative_and_absolute_imports(tmp_path):
    (tmp_path / "stages").mkdir()
    source = tmp_path / "stages" / "evaluate.py"
    source.write_text("from .accelerate import load_accelerated\nfrom . import prune\nimport stages.tokenize\n"
                      "from .common import StageError\n")
    assert stage_imports(source) == {"stages.accelerate", "stages.prune", "stages.tokenize"}
