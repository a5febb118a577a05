"""As run on the lent H200 (2026-11-26, torch 2.11.0+cu130, transformers 5.17.0), from the repository root with this folder as .explore/ and PYTHONPATH=.: issue #6 recipes from the XQuAD-en baseline, through the stage
functions. Usage: python .explore/sweep.py OUT_DIR EXPERIMENTS_JSON"""
import copy, json, os, sys, time
from pathlib import Path

import torch
import transformers, transformers.trainer  # noqa: F401  (before the datasets stand-in is installed)

sys.path.insert(0, str(Path(__file__).parent))
import fakedatasets
sys.modules["datasets"] = fakedatasets

import yaml
from stages.params import validate
from stages.prune import prune
from stages.finetune_sparse import finetune_sparse
from stages.evaluate import evaluate
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

out, experiments = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
here = Path(__file__).parent
features = here / "features"
work = Path("/tmp/sweep"); work.mkdir(exist_ok=True)
baseline = work / "baseline"
if not baseline.exists():
    AutoModelForQuestionAnswering.from_pretrained(here / "baseline16", dtype=torch.float32).float().save_pretrained(baseline)
    AutoTokenizer.from_pretrained(here / "baseline16").save_pretrained(baseline)

raw = yaml.safe_load(Path("params.yaml").read_text())
raw["data"]["source"] = "json"
raw["train"].update(epochs=4, batch_size=16)
raw["prune"].update(method="sparsegpt")
raw["finetune"].update(epochs=4, batch_size=16, distill=True, distill_alpha=0.9)

def log(record):
    print(json.dumps(record), flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")

log({"name": "dense", **evaluate(validate(raw), features, {"dense": baseline})["dense"]})
pruned_cache = {}
for exp in experiments:
    try:
        cfg = copy.deepcopy(raw)
        for section in ("prune", "finetune"):
            cfg[section].update(exp.get(section, {}))
        cfg["seed"] = exp.get("seed", 42)
        params = validate(cfg)
        key = json.dumps([cfg["prune"], cfg["seed"] if exp.get("prune_seeded") else 42], sort_keys=True)
        record = {"name": exp["name"]}
        if key not in pruned_cache:
            pruned_dir = work / f"pruned{len(pruned_cache)}"
            t = time.time(); prune(params, baseline, pruned_dir, features)
            pruned_cache[key] = pruned_dir
            zs = evaluate(params, features, {"p": pruned_dir})["p"]
            log({"name": exp["name"] + "/zero-shot", **zs, "prune_s": round(time.time() - t, 1)})
        if exp.get("finetune") is None:
            continue
        sparse_dir = work / ("sparse_" + exp["name"])
        t = time.time()
        stats = finetune_sparse(params, features, pruned_cache[key], sparse_dir, baseline)
        scores = evaluate(params, features, {"s": sparse_dir})["s"]
        log({**record, **scores, "final_loss": stats["final_loss"], "steps": stats["steps"],
             "finetune_s": round(time.time() - t, 1), "cfg": exp})
    except Exception as err:  # keep the sweep going; the failure is in the log
        log({"name": exp["name"], "error": repr(err)[:500]})
