"""As run on the lent GPU (2026-11-26, fourth run): issue #6, can a fully 2:4 model get within 0.5
F1 of dense by pruning in steps, or by distilling the attention maps too? One seed per process
(processes run side by side on one GPU, each in its own scratch directory). Each seed trains its
own dense baseline, then every recipe below starts from it; all score on XQuAD validation.
Usage (repository root, this folder as .explore/): python .explore/gradual.py OUT SEED
(ONLY=name,name runs only those recipes; SMOKE=1: two steps per training, for a CPU check)"""
import copy, json, os, sys, time
from pathlib import Path

import torch
import transformers, transformers.trainer  # noqa: F401  (before the datasets stand-in is installed)

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here)); sys.path.insert(0, str(here.parent))
import fakedatasets
sys.modules["datasets"] = fakedatasets

import yaml
from transformers import AutoModel, AutoTokenizer
import stages.training as training
from stages.evaluate import evaluate
from stages.finetune_sparse import finetune_sparse
from stages.modeling import load_qa_model, load_tokenizer, save_model
from stages.params import validate
from stages.prune import MASKS_FILE, attach_sparsifier, prunable_linears, prune, sparsity_report, summarize
from stages.train_baseline import train_baseline

out, seed = Path(sys.argv[1]).resolve(), int(sys.argv[2])
xquad = here / "features"
raw = yaml.safe_load((here.parent / "params.yaml").read_text())
work = Path(f"/tmp/gradual/seed{seed}"); work.mkdir(parents=True, exist_ok=True)
os.chdir(work)  # the Trainer's .checkpoints/ are per stage name: one directory per process
embedded = work / "embedded"
AutoModel.from_pretrained(here / "embedded16", dtype=torch.float32).float().save_pretrained(embedded)
AutoTokenizer.from_pretrained(here / "embedded16").save_pretrained(embedded)

raw["seed"] = seed
raw["model"]["name"] = str(embedded)
raw["data"]["source"] = "json"
raw["train"].update(epochs=4, batch_size=16)
raw["prune"].update(method="sparsegpt", sequential=True)
raw["finetune"].update(batch_size=16, distill=True, distill_alpha=0.9, distill_hidden=10.0, epochs=8)
if os.environ.get("SMOKE"):
    raw["train"]["max_steps"] = raw["finetune"]["max_steps"] = 2
    raw["prune"]["calibration_batches"] = 1
ATTENTION_ONLY = r"pooler|intermediate|layer\.\d+\.output\."  # exclude FFNs: prune the attention Linears
FFN_ONLY = r"pooler|attention"
RECIPES = {  # name: (kind, settings), most wanted first
    "recipe": ("steps", [("pooler", 8)]),  # the chosen recipe: all at once, 8 epochs
    "ffn-then-attention": ("steps", [(FFN_ONLY, 4), (ATTENTION_ONLY, 4)]),
    "recipe+attention-maps": ("attention", 1.0),  # + KL between student and teacher attention maps
    "attention-maps-3": ("attention", 3.0),
    "attention-maps-10": ("attention", 10.0),
    "gmp": ("gmp", 0.5),  # gradual magnitude: 2:4 on a cubic share of blocks over the first half
    "attention-then-ffn": ("steps", [(ATTENTION_ONLY, 4), (FFN_ONLY, 4)]),
    # SparseGPT calibrated on all 948 train features (60 batches of 16) instead of 8 batches
    "calibrate-all": ("steps", [("pooler", 8)], {"calibration_batches": 60}),
    "calibrate-all+attention-maps-10": ("attention", 10.0, "calibrate-all"),
}
if os.environ.get("ONLY"):
    RECIPES = {name: RECIPES[name] for name in os.environ["ONLY"].split(",")}


def log(record):
    print(json.dumps(record), flush=True)
    with open(out / "gradual.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def score(params, model_dir):
    return evaluate(params, xquad, {"m": model_dir})["m"]


class Trainer(training.DistillationTrainer):
    """The pipeline's distillation trainer, plus what the recipes here try: attention-map KL
    (attention_weight) and a gradual magnitude schedule stepped every step (sparsifier, ramp_steps)."""
    attention_weight, sparsifier, ramp_steps = 0.0, None, 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.attention_weight:
            for m in (self.model, self.teacher):
                m.set_attn_implementation("eager")  # sdpa returns no attention maps

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step
        if self.sparsifier is not None and step <= self.ramp_steps:
            level = 1 - (1 - min(1.0, (step + 1) / self.ramp_steps)) ** 3
            for group in self.sparsifier.groups:
                group["sparsity_level"] = level
            self.sparsifier.step()
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.attention_weight:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
        with torch.no_grad():
            targets = self.teacher(**{k: v for k, v in inputs.items() if k not in training.LABELS},
                                   output_hidden_states=True, output_attentions=True)
        distill = (training.distillation_loss(outputs.start_logits, targets.start_logits, self.temperature)
                   + training.distillation_loss(outputs.end_logits, targets.end_logits, self.temperature)) / 2
        loss = self.alpha * distill + (1 - self.alpha) * outputs.loss
        real = inputs["attention_mask"].bool()
        loss = loss + self.hidden_weight * training.hidden_state_loss(outputs.hidden_states, targets.hidden_states,
                                                                      inputs["attention_mask"])
        kl = []
        for s, t in zip(outputs.attentions, targets.attentions):  # (batch, heads, query, key)
            per_query = (t * (torch.log(t + 1e-9) - torch.log(s + 1e-9))).sum(-1)  # KL per query row
            kl.append(per_query.permute(0, 2, 1)[real].mean())
        loss = loss + self.attention_weight * torch.stack(kl).mean()
        return (loss, outputs) if return_outputs else loss


training.DistillationTrainer = Trainer

cfg = validate(copy.deepcopy(raw))
dense = work / "dense"
t = time.time(); train_baseline(cfg, xquad, dense)
log({"seed": seed, "variant": "dense", **score(cfg, dense), "s": round(time.time() - t, 1)})

for name, (kind, setting, *extra) in RECIPES.items():
    t = time.time()
    try:
        if kind == "steps":  # prune the step's Linears (SparseGPT on the model so far), fine-tune, repeat
            model_dir, masks = dense, {}
            for i, (exclude, epochs) in enumerate(setting):
                run = copy.deepcopy(raw); run["prune"]["exclude"] = exclude; run["finetune"]["epochs"] = epochs
                run["prune"].update(*extra)
                pruned = work / f"{name}-pruned{i}"
                prune(validate(run), model_dir, pruned, xquad)
                masks.update(torch.load(pruned / MASKS_FILE))
                torch.save(masks, pruned / MASKS_FILE)  # hold the earlier steps' masks too
                log({"seed": seed, "variant": f"{name}/pruned{i}", "layers_held": len(masks), **score(cfg, pruned)})
                model_dir = work / f"{name}-sparse{i}"
                stats = finetune_sparse(validate(run), xquad, pruned, model_dir, dense)
        elif kind == "attention":
            pruned = work / f"{extra[0] if extra else 'recipe'}-pruned0"  # that recipe's pruned model, when it ran first
            if not pruned.exists():
                prune(cfg, dense, pruned, xquad)
            Trainer.attention_weight = setting
            model_dir = work / name
            stats = finetune_sparse(cfg, xquad, pruned, model_dir, dense)
            Trainer.attention_weight = 0.0
        else:  # gmp
            model = load_qa_model(str(dense)); tokenizer = load_tokenizer(str(dense))
            names = list(prunable_linears(model, cfg["prune.exclude"]))
            Trainer.sparsifier = attach_sparsifier(model, names, cfg)
            steps_per_epoch = -(-len(fakedatasets.load_from_disk(str(xquad / "train"))) // 16)
            Trainer.ramp_steps = cfg["finetune.max_steps"] or int(setting * 8 * steps_per_epoch)
            stats = training.train_qa(model, tokenizer, fakedatasets.load_from_disk(str(xquad / "train")),
                                      cfg["finetune"], seed, load_qa_model(str(dense)))
            Trainer.sparsifier.squash_mask(); Trainer.sparsifier = None
            assert summarize(sparsity_report(model, names))["pattern_2of4_holds"]
            model_dir = work / name
            save_model(model, tokenizer, model_dir)
        log({"seed": seed, "variant": name, **score(cfg, model_dir), "steps": stats["steps"],
             "s": round(time.time() - t, 1)})
    except Exception as error:  # one recipe's failure must not lose the others' runs
        log({"seed": seed, "variant": name, "error": repr(error)[:300]})
        Trainer.attention_weight, Trainer.sparsifier = 0.0, None
