"""As run on the lent GPU (2026-11-26): issue #6, does distilling on more text than XQuAD's 948
train features close the gap? Extra text: the default run's 3200 embedded train features (synthetic
biographies, project data). Each seed trains its own dense baseline on XQuAD only, prunes it
(sequential SparseGPT on XQuAD), then fine-tunes the recipes below and scores all on XQuAD validation.
Usage (repository root, this folder as .explore/, PYTHONPATH=.): python .explore/augment.py OUT SEED...
(ONLY=name,name runs only those recipes)"""
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
xquad, augmented, cross = here / "features", here / "features_aug", here / "features_cross"
work = Path("/tmp/augment"); work.mkdir(exist_ok=True)
embedded = work / "embedded"
AutoModel.from_pretrained(here / "embedded16", dtype=torch.float32).float().save_pretrained(embedded)
AutoTokenizer.from_pretrained(here / "embedded16").save_pretrained(embedded)

raw = yaml.safe_load(Path("params.yaml").read_text())
raw["model"]["name"] = str(embedded)
raw["data"]["source"] = "json"
raw["train"].update(epochs=4, batch_size=16)
raw["prune"].update(method="sparsegpt", sequential=True)
raw["finetune"].update(batch_size=16, distill=True, distill_alpha=0.9, distill_hidden=10.0, epochs=8)
RECIPES = {  # name: (train features, finetune overrides[, prune.exclude])
    "xquad-a09-8ep": (xquad, {}),
    "xquad-a1-8ep": (xquad, {"distill_alpha": 1.0}),
    "aug-a1-2ep": (augmented, {"distill_alpha": 1.0, "epochs": 2}),
    "aug-a09-2ep": (augmented, {"epochs": 2}),
    "aug-a1-4ep": (augmented, {"distill_alpha": 1.0, "epochs": 4}),
    # XQuAD train questions paired with the other paragraphs of their article (make_cross.py)
    "cross-a1-4ep": (cross, {"distill_alpha": 1.0, "epochs": 4}),
    # Layers left dense (the accuracy side of a partly 2:4 model): attention, or the first and last layer
    "dense-attention": (xquad, {}, r"pooler|attention"),
    "dense-ends": (xquad, {}, r"pooler|layer\.0\.|layer\.5\."),
}

if os.environ.get("ONLY"):
    RECIPES = {name: RECIPES[name] for name in os.environ["ONLY"].split(",")}

def log(record):
    print(json.dumps(record), flush=True)
    with open(out / "augment.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")

for seed in seeds:
    cfg = copy.deepcopy(raw); cfg["seed"] = seed
    params = validate(cfg)
    dense = work / f"dense{seed}"
    t = time.time(); train_baseline(params, xquad, dense)
    log({"seed": seed, "variant": "dense", **evaluate(params, xquad, {"d": dense})["d"], "s": round(time.time() - t, 1)})
    pruned_by_exclude = {}
    for name, (features, overrides, *exclude) in RECIPES.items():
        run = copy.deepcopy(cfg); run["finetune"].update(overrides)
        run["prune"]["exclude"] = exclude[0] if exclude else cfg["prune"]["exclude"]
        pruned = pruned_by_exclude.get(run["prune"]["exclude"])
        if pruned is None:
            pruned = pruned_by_exclude[run["prune"]["exclude"]] = work / f"pruned{seed}-{len(pruned_by_exclude)}"
            report = prune(validate(run), dense, pruned, xquad)
            log({"seed": seed, "variant": f"pruned-{name}" if exclude else "pruned", "layers_pruned": report["layers_pruned"],
                 **evaluate(params, xquad, {"p": pruned})["p"]})
        sparse = work / f"sparse-{name}{seed}"
        t = time.time()
        stats = finetune_sparse(validate(run), features, pruned, sparse, dense)
        log({"seed": seed, "variant": name, **evaluate(params, xquad, {"s": sparse})["s"],
             "steps": stats["steps"], "s": round(time.time() - t, 1)})
