"""As run on the lent GPU (2026-11-26): issue #6's recipes over several seeds, dense baseline
included, on XQuAD-en, through the stage functions. Each seed trains its own dense baseline (from
the embedded MiniLM-L6, carried as fp16), prunes it, fine-tunes it two ways, and scores all.
Usage (repository root, this folder as .explore/, PYTHONPATH=.):
    python .explore/seeds.py OUT SEED...                 # the recipes below
    RECIPES=file.json python .explore/seeds.py OUT SEED...  # {name: [prune overrides, finetune overrides]}"""
import copy, json, os, sys, time
from pathlib import Path

import torch
import transformers, transformers.trainer  # noqa: F401  (before the datasets stand-in is installed)

sys.path.insert(0, str(Path(__file__).parent))
import fakedatasets
sys.modules["datasets"] = fakedatasets

import yaml
from transformers import AutoModel, AutoTokenizer
from stages.evaluate import evaluate
from stages.finetune_sparse import finetune_sparse
from stages.params import validate
from stages.prune import prune
from stages.train_baseline import train_baseline

out, seeds = Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]
here = Path(__file__).parent
features = here / "features"
work = Path("/tmp/seeds"); work.mkdir(exist_ok=True)
embedded = work / "embedded"
AutoModel.from_pretrained(here / "embedded16", dtype=torch.float32).float().save_pretrained(embedded)
AutoTokenizer.from_pretrained(here / "embedded16").save_pretrained(embedded)

raw = yaml.safe_load(Path("params.yaml").read_text())
raw["model"]["name"] = str(embedded)
raw["data"]["source"] = "json"
raw["train"].update(epochs=4, batch_size=16)
raw["finetune"].update(batch_size=16, distill=True, distill_alpha=0.9)
RECIPES = {
    "before": ({"method": "sparsegpt", "sequential": False}, {"epochs": 4, "distill_hidden": 0.0}),
    "new": ({"method": "sparsegpt", "sequential": True}, {"epochs": 8, "distill_hidden": 10.0}),
}
if os.environ.get("RECIPES"):
    RECIPES = json.loads(Path(os.environ["RECIPES"]).read_text())

def log(record):
    print(json.dumps(record), flush=True)
    with open(out / "seeds.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")

for seed in seeds:
    cfg = copy.deepcopy(raw); cfg["seed"] = seed
    dense = work / f"dense{seed}"
    t = time.time(); train_baseline(validate(cfg), features, dense)
    log({"seed": seed, "variant": "dense", **evaluate(validate(cfg), features, {"d": dense})["d"], "s": round(time.time() - t, 1)})
    for name, (prune_cfg, finetune_cfg) in RECIPES.items():
        run = copy.deepcopy(cfg); run["prune"].update(prune_cfg); run["finetune"].update(finetune_cfg)
        params = validate(run)
        pruned, sparse = work / f"pruned-{name}{seed}", work / f"sparse-{name}{seed}"
        t = time.time()
        prune(params, dense, pruned, features)
        finetune_sparse(params, features, pruned, sparse, dense)
        scores = evaluate(params, features, {"pruned": pruned, "sparse": sparse})
        log({"seed": seed, "variant": name, "pruned_f1": scores["pruned"]["f1"], **scores["sparse"],
             "s": round(time.time() - t, 1)})
