"""Write gpu/dvc.yaml from the root dvc.yaml: the same stages, run from gpu/ on gpu/params.yaml.

DVC runs each stage of gpu/dvc.yaml in gpu/, so the stages' relative paths (features, models/,
reports/, plots/, metrics/, logs/, params.yaml) all land in gpu/ and the CPU default's stay as they
are. Only the code the stages run is rebased to the root (../stages/...), and the root is put on
the module path of each command. Edit ../dvc.yaml, then run

    python gpu/sync_dvc_yaml.py

(tests/test_gpu_pipeline.py fails while the two disagree).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_DVC_YAML = ROOT / "gpu" / "dvc.yaml"
CODE_DIRS = ("stages/", "engine/", "pruning/", "flows/", "metrics_lib/")
HEADER = "# Generated from ../dvc.yaml by gpu/sync_dvc_yaml.py: edit that file, then run the script.\n"


def rebased(stage: dict) -> dict:
    """A root stage as it runs from gpu/: the code it runs and depends on taken from the root."""
    stage = dict(stage)
    stage["cmd"] = f"PYTHONPATH=.. {stage['cmd']}"
    stage["deps"] = [f"../{dep}" if dep.startswith(CODE_DIRS) else dep for dep in stage.get("deps", [])]
    return stage


def gpu_dvc_yaml(root_dvc_yaml: str) -> str:
    pipeline = yaml.safe_load(root_dvc_yaml)
    stages = {name: rebased(stage) for name, stage in pipeline["stages"].items()}
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


if __name__ == "__main__":
    GPU_DVC_YAML.write_text(gpu_dvc_yaml((ROOT / "dvc.yaml").read_text()))
    print(f"wrote {GPU_DVC_YAML.relative_to(ROOT)}", file=sys.stderr)
