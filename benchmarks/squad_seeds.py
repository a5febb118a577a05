"""The SQuAD accuracy study: the pipeline's own stage functions, once per seed, paired.

Every choice of recipe is made on a held-out split, never on SQuAD dev. Every model trains on SQuAD
train less a seeded ~5% of its articles (stages/tokenize.split_by_article) and is scored on those
articles. SQuAD dev (and --extra-validation, e.g. XQuAD-en, a subset of dev) is scored only with
--final RECIPE_FILE, and then alone: a recipe file, committed before the run, fixes every setting. Each score
record names the recipe's hash, the code (commit and content hash), the device and the versions;
benchmarks/squad_table.py makes docs/squad.md's tables from the committed records.

Each seed trains its own dense baseline, prunes it with every method (zero-shot scores) and fine-tunes
the 2:4 model from the recipe's prune.method. With the variant `control`, also the compute-matched
dense control: the dense baseline fine-tuned on the 2:4 model's schedule and objective, distilling
from itself (stages/finetune_sparse.finetune_dense). With `int8`, the accelerate stage's int8 plan of
the 2:4 model. Seeds run as processes side by side on one GPU (or one after another with --parallel
1). It needs only torch, transformers and datasets: no DVC or Prefect, so it runs on a bare GPU machine.

A run stopped part-way (a time limit) resumes when started again with the same arguments: every
model is written whole or not at all, in a folder named by the settings it depends on (candidate
recipes that share a dense baseline share its folder, and --final reuses the models a selection run
of the same recipe trained), the recipe's scores already in OUT/results.jsonl are skipped, and
fine-tuning resumes from its last checkpoint.

    # selection: on the held-out split; OUT/recipe-<hash>.yaml is the recipe as run
    python benchmarks/squad_seeds.py --data-dir DIR --train train-v1.1.json.gz --out runs/squad \
        [--recipe FILE] [-S finetune.epochs=6 ...] [--seeds 1 2 3] [--control] [--int8]
    # final: the committed recipe's settings, scored on SQuAD dev
    python benchmarks/squad_seeds.py --data-dir DIR --train train-v1.1.json.gz \
        --validation dev-v1.1.json.gz --final docs/results/squad-recipe.yaml --out runs/squad

A recipe file (YAML): `params` (params.yaml overrides, dotted keys as -S takes them), `heldout`
(`fraction`, `seed`: the split), `seeds`, `variants` (of `control`, `int8`).

The official files: https://rajpurkar.github.io/SQuAD-explorer/ (or the hub's rajpurkar/squad).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = ("magnitude", "wanda", "sparsegpt")
VARIANTS = ("control", "int8")  # what a recipe may add to dense, zero-shot and 2:4 fine-tuned
HELDOUT = {"fraction": 0.05, "seed": 0}
DEFAULT_SEEDS = [1, 2, 3, 4, 5]
RECIPE_FIELDS = ("seeds", "heldout", "variants", "params")
# Where things are on this machine, not how the models are made: the only -S --final takes, and
# left out of the recipe's hash.
LOCAL_KEYS = ("model.name", "model.watch")
# The code a score depends on: its last commit and a hash of its files are in every record.
CODE = ("stages", "engine", "pruning", "metrics_lib", "benchmarks/squad_seeds.py", "params.yaml")
COMMIT_ENV = "TWOFOUR_COMMIT"  # that commit, where the checkout is a copy without .git (the GPU machine)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """`-S key=value` pairs, values read as YAML (as `dvc exp run -S` does)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-S {pair!r}: expected key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def with_overrides(raw: dict, overrides: dict[str, object]) -> dict:
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return raw


def log(path: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The train file, where results and work go, and -S overrides: what every SQuAD driver takes."""
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding the SQuAD files")
    parser.add_argument("--train", required=True, help="train file name in --data-dir (.json or .json.gz)")
    parser.add_argument("--out", type=Path, required=True, help="results.jsonl and logs go here")
    parser.add_argument("--work", type=Path, default=None, help="features, models, checkpoints (default: OUT/work)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml value, as dvc exp run -S does")


def full_data_params() -> dict:
    """params.yaml with no cap on the questions used: all of the files, unless -S says otherwise."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(max_train_examples=0, max_validation_examples=0)
    return raw


def identity(*depends) -> str:
    """A short hash of settings: names a recipe, and a folder by what its contents depend on."""
    return hashlib.sha256(json.dumps(depends, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- recipes
def checked_recipe(recipe: dict, source: str) -> dict:
    """The recipe with its defaults filled in and every field checked; errors name `source` and the field."""
    def need(ok: bool, field: str, what: str) -> None:
        if not ok:
            raise SystemExit(f"{source}: field '{field}': expected {what}")

    heldout = recipe.get("heldout", HELDOUT)
    need(isinstance(heldout, dict) and set(heldout) == set(HELDOUT), "heldout", f"the fields {', '.join(HELDOUT)}")
    need(isinstance(heldout["fraction"], float) and 0 < heldout["fraction"] < 1, "heldout.fraction",
         "a number between 0 and 1 (exclusive)")
    need(type(heldout["seed"]) is int, "heldout.seed", "a whole number")
    seeds = recipe.get("seeds", DEFAULT_SEEDS)
    need(isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds) and len(set(seeds)) == len(seeds),
         "seeds", "a non-empty list of distinct whole numbers")
    variants = recipe.get("variants", [])
    need(isinstance(variants, list) and set(variants) <= set(VARIANTS), "variants", f"a list of {', '.join(VARIANTS)}")
    params = recipe.get("params", {})
    need(isinstance(params, dict) and all(isinstance(key, str) for key in params), "params",
         "a mapping of params.yaml keys (dotted, as -S takes them) to values")
    return {"seeds": list(seeds), "heldout": dict(heldout), "variants": sorted(set(variants)), "params": dict(params)}


def load_recipe(path: Path) -> dict:
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SystemExit(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SystemExit(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise SystemExit(f"{path}: expected a mapping of {', '.join(RECIPE_FIELDS)}")
    if unknown := sorted(set(recipe) - set(RECIPE_FIELDS)):
        raise SystemExit(f"{path}: unknown field '{unknown[0]}' (a recipe has {', '.join(RECIPE_FIELDS)})")
    return checked_recipe(recipe, str(path))


def recipe_hash(recipe: dict) -> str:
    """What the models and the split depend on: the params overrides (less LOCAL_KEYS) and the held-out
    split. Not the seeds or the variants: chunks of seeds, and runs with or without the control, share it."""
    return identity({key: value for key, value in recipe["params"].items() if key not in LOCAL_KEYS},
                    recipe["heldout"])


def run_recipe(args) -> dict:
    """The recipe a run follows. Without --final: --recipe's file (or params.yaml's settings) with -S
    and the variant flags on top, scored on the held-out split. With --final: its file as it is (-S may
    name LOCAL_KEYS only), scored on SQuAD dev (and --extra-validation) instead."""
    overrides = parse_overrides(args.overrides)
    if args.final is None:
        if named := args.validation or args.extra_validation:
            raise SystemExit(f"--validation/--extra-validation {named}: SQuAD dev (and XQuAD-en, a subset of it) is "
                             f"scored only with --final RECIPE_FILE, a recipe chosen on the held-out split and "
                             f"committed before the run")
        recipe = load_recipe(args.recipe) if args.recipe else checked_recipe({}, "the default recipe")
        recipe["params"].update(overrides)
        recipe["variants"] = sorted(set(recipe["variants"]) | {name for name in VARIANTS if getattr(args, name)})
        recipe["seeds"] = args.seeds or recipe["seeds"]
        return recipe
    if args.recipe or args.control or args.int8:
        raise SystemExit(f"--final {args.final}: the recipe file fixes the settings and variants "
                         f"(no --recipe, --control or --int8 beside it)")
    if not args.validation:
        raise SystemExit(f"--final {args.final}: name SQuAD dev with --validation")
    if fixed := [key for key in overrides if key not in LOCAL_KEYS]:
        raise SystemExit(f"--final {args.final}: -S {fixed[0]}: the recipe file fixes every setting "
                         f"(-S may say only where things are: {', '.join(LOCAL_KEYS)})")
    recipe = load_recipe(args.final)
    recipe["params"].update(overrides)
    if args.seeds:
        if unknown := sorted(set(args.seeds) - set(recipe["seeds"])):
            raise SystemExit(f"--seeds: {unknown[0]} is not among {args.final}'s seeds {recipe['seeds']}")
        recipe["seeds"] = args.seeds
    return recipe


# --------------------------------------------------------------------------- provenance
def code_commit() -> str | None:
    """The last commit that changed the CODE: $TWOFOUR_COMMIT, else git's. Not HEAD: committing results
    or docs between two chunks of one study must not split its records into two runs."""
    if commit := os.environ.get(COMMIT_ENV):
        return commit
    try:
        result = subprocess.run(["git", "log", "-1", "--format=%H", "--", *CODE], cwd=REPO, capture_output=True,
                                text=True)
    except OSError:  # no git on this machine
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def code_hash() -> str:
    """A hash of the CODE's files: a commit named by hand can be wrong, and a checkout differ from it."""
    files = []
    for name in CODE:
        path = REPO / name
        files += sorted(p for p in path.rglob("*") if p.suffix in (".py", ".c")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def provenance() -> dict:
    """What a score record names besides its recipe: the code, the device and the library versions."""
    import datasets

    from stages.common import device_facts

    facts = device_facts()
    versions = {key: facts[key] for key in ("torch", "transformers", "cuda", "cusparselt") if key in facts}
    return {"commit": code_commit(), "code": code_hash(), "device": facts.get("gpu", facts["cpu_model"]),
            "versions": {**versions, "datasets": datasets.__version__}}


# --------------------------------------------------------------------------- data
def files_config(raw: dict, data_dir: Path, train: str, validation: str | None = None) -> dict:
    """raw reading the SQuAD files: `train`, and `validation` to score on; without one, tokenize splits
    `train` by article (data.validation_fraction, seeded by the config's seed)."""
    cfg = copy.deepcopy(raw)
    cfg["data"].update(source="files", dir=str(data_dir), train_files=[train],
                       validation_files=[validation] if validation else [])
    return cfg


def feature_sets(raw: dict, args, recipe: dict) -> dict[str, dict]:
    """Tokenize's config for each set a run scores: the held-out split always (its train part is what
    every model trains on); with --final, dev and the extra validation file too."""
    heldout = files_config(raw, args.data_dir, args.train)
    heldout["data"]["validation_fraction"] = recipe["heldout"]["fraction"]
    heldout["seed"] = recipe["heldout"]["seed"]
    sets = {"heldout": heldout}
    if args.final:
        for name, validation in (("dev", args.validation), ("extra", args.extra_validation)):
            if validation:
                sets[name] = files_config(raw, args.data_dir, args.train, validation)
                sets[name]["data"]["max_train_examples"] = 1  # the train features come from the held-out split's
    return sets


def feature_folders(sets: dict[str, dict], work: Path) -> dict[str, Path]:
    """Each set's features folder, named by what tokenize makes them from."""
    return {name: work / f"features-{name}-{identity(cfg['seed'], cfg['model'], cfg['data'], cfg['tokenize'])}"
            for name, cfg in sets.items()}


def tokenize_sets(sets: dict[str, dict], work: Path, results: Path) -> dict[str, Path]:
    """Each set's features folder, made where it is not yet (its figures logged)."""
    from engine.models import load_tokenizer
    from stages.model_source import resolve_model_source
    from stages.params import validate
    from stages.tokenize import tokenize

    folders = feature_folders(sets, work)
    for name, cfg in sets.items():
        if folders[name].exists():
            continue
        tokenizer = load_tokenizer(resolve_model_source(cfg["model"]["name"]))
        start = time.perf_counter()
        stats = {}
        built(folders[name], lambda tmp: stats.update(tokenize(validate(cfg), tokenizer, tmp)))
        log(results, {"tokenize": name, **stats, "s": round(time.perf_counter() - start, 1)})
    return folders


def logged(path: Path, recipe: str) -> set[tuple]:
    """(seed, variant, on) of every score of `recipe` already in results.jsonl."""
    if not path.exists():
        return set()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["seed"], r["variant"], r["on"]) for r in records if "seed" in r and r.get("recipe") == recipe}


def built(directory: Path, build) -> Path:
    """`build(tmp)` into a temporary sibling renamed to `directory` once whole; skipped if it exists."""
    from stages.common import atomic_dir

    if not directory.exists():
        with atomic_dir(directory) as tmp:
            build(tmp)
    return directory


# --------------------------------------------------------------------------- one seed
def run_seed(raw: dict, recipe: dict, seed: int, args, features: dict[str, Path], work: Path) -> None:
    """One seed: dense baseline, zero-shot 2:4 per method, the recipe's fine-tune (its int8 plan) and
    the dense control where the recipe asks; every score logged, every step already done skipped."""
    from stages import training
    from stages.evaluate import evaluate
    from stages.finetune_sparse import finetune_dense, finetune_sparse
    from stages.params import validate
    from stages.prune import prune
    from stages.train_baseline import train_baseline

    # Seeds side by side must not share (and so clear) one checkpoint folder.
    training.CHECKPOINTS = work / f"checkpoints-{seed}"
    results = args.out / "results.jsonl"
    key = recipe_hash(recipe)
    done = logged(results, key)
    cfg = copy.deepcopy(raw)
    cfg["seed"] = seed
    params = validate(cfg)
    train_features = features["heldout"]  # its train part: the held-out articles are never trained on
    stamp = {"recipe": key, **provenance()}
    # Selection scores the held-out split; --final dev (and the extra file) alone, so that its records
    # never repeat a selection run's.
    scored = [name for name in features if (name != "heldout") == bool(args.final)]
    scored_sets = [name for name in scored if name != "extra"]  # zero-shot and int8: not the extra file

    def folder(name: str, *depends) -> Path:
        return work / f"{name}-{seed}-{identity(train_features.name, cfg['model'], *depends)}"

    def scores(variant: str, model_dir: Path, on=tuple(scored), loaded_as: str = "dense", **extra) -> None:
        """`loaded_as` "accelerated" loads the model with its plan (evaluate's variant names)."""
        for name in on:
            if (seed, variant, name) not in done:
                score = evaluate(params, features[name], {loaded_as: model_dir})[loaded_as]
                log(results, {"seed": seed, "variant": variant, "on": name, **score, **stamp, **extra})

    def trained(variant: str, model_dir: Path, train) -> None:
        """Train into model_dir unless it exists, then score it with the training figures."""
        stats, start = {}, time.perf_counter()
        built(model_dir, lambda tmp: stats.update(train(tmp)))
        figures = {key: stats[key] for key in ("samples_per_second", "steps", "precision", "resumed_from_step")
                   if key in stats}
        scores(variant, model_dir, **figures, **({"train_s": round(time.perf_counter() - start, 1)} if stats else {}))

    dense = folder("dense", cfg["train"])
    trained("dense", dense, lambda tmp: train_baseline(params, train_features, tmp))
    recipe_method = params["prune.method"]
    for method in sorted(METHODS, key=lambda m: m != recipe_method):  # the recipe's method first
        method_cfg = copy.deepcopy(cfg)
        method_cfg["prune"]["method"] = method
        pruned = folder(f"pruned-{method}", cfg["train"], method_cfg["prune"])
        start = time.perf_counter()
        built(pruned, lambda tmp: prune(validate(method_cfg), dense, tmp, train_features))
        scores(f"zero-shot-{method}", pruned, on=scored_sets, prune_s=round(time.perf_counter() - start, 1))
        if method == recipe_method and not args.zero_shot_only:
            sparse = folder("sparse", cfg["train"], cfg["prune"], cfg["finetune"])
            trained("sparse", sparse, lambda tmp: finetune_sparse(params, train_features, pruned, tmp, dense))
            if "int8" in recipe["variants"]:
                int8 = folder("int8", cfg["train"], cfg["prune"], cfg["finetune"], cfg["accelerate"], cfg["evaluate"])
                scores("int8", int8, on=scored_sets, loaded_as="accelerated",
                       **int8_plan(params, cfg, sparse, int8, train_features))
    if "control" in recipe["variants"] and not args.zero_shot_only:
        control = folder("control", cfg["train"], cfg["finetune"])
        trained("control", control, lambda tmp: finetune_dense(params, train_features, dense, tmp))


def int8_plan(params, cfg: dict, sparse: Path, out_dir: Path, features_dir: Path) -> dict:
    """The accelerate stage's int8 plan of the fine-tuned model in out_dir (made unless there), and what
    it chose: the recipe's accelerate.mode (all: int8 on every layer that passes its accuracy check;
    auto: where it also measured faster), made at evaluate's batch size and not compiled, as accuracy,
    not speed, is measured here."""
    from engine.plan import PLAN_FILE, Plan
    from stages.accelerate import run as accelerate
    from stages.params import validate

    int8_cfg = copy.deepcopy(cfg)
    int8_cfg["accelerate"].update(precision="int8", compile=False, max_alg_id=3)
    batch = params["evaluate.batch_size"]
    int8_cfg["benchmark"]["batch_sizes"] = [batch]
    built(out_dir, lambda tmp: accelerate(validate(int8_cfg), sparse, tmp, features_dir))
    plan = Plan.load(out_dir / PLAN_FILE)
    return {"accelerate_mode": plan.mode, "plan_variant": plan.variants.get(batch),
            "layers_int8_ok": sum(layer.precision == "int8" for layer in plan.layers.values()),
            "layers_checked": len(plan.int8_layer_error)}


# --------------------------------------------------------------------------- the run
def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--recipe", type=Path, help="a recipe file to run on the held-out split (-S on top)")
    parser.add_argument("--final", type=Path, metavar="RECIPE_FILE",
                        help="also score SQuAD dev, with every setting from this committed recipe file")
    parser.add_argument("--validation", help="SQuAD dev in --data-dir: scored only with --final")
    parser.add_argument("--extra-validation", help="a second file in --data-dir (e.g. XQuAD-en): only with --final")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"default: the recipe's ({DEFAULT_SEEDS} without one)")
    parser.add_argument("--parallel", type=int, default=0, help="seeds at a time (0: all)")
    parser.add_argument("--zero-shot-only", action="store_true", help="dense and zero-shot 2:4 only, no fine-tuning")
    parser.add_argument("--control", action="store_true",
                        help="also the compute-matched dense control (the baseline fine-tuned as the 2:4 model is)")
    parser.add_argument("--int8", action="store_true",
                        help="also score the accelerate stage's int8 2:4 plan of the fine-tuned model")
    parser.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    import squad_table

    args = arguments().parse_args()
    recipe = run_recipe(args)
    if not (commit := code_commit()):
        raise SystemExit(f"no git checkout here to name the code's commit: set {COMMIT_ENV}=<the commit>")
    os.environ[COMMIT_ENV] = commit  # the seeds' processes record the same one
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    raw = full_data_params()
    # Seeds run side by side, one process each: not each one torchrun over every GPU (unless -S says so).
    raw["train"]["num_processes"] = raw["finetune"]["num_processes"] = 1
    raw = with_overrides(raw, recipe["params"])
    sets = feature_sets(raw, args, recipe)
    if args.one_seed is not None:
        run_seed(raw, recipe, args.one_seed, args, feature_folders(sets, work), work)
        return
    from stages.common import write_text
    from stages.params import validate

    validate(raw, str(args.final or args.recipe or "-S"))  # a bad setting fails here, not in every seed
    if not args.final:  # the recipe as run: commit it, unchanged, as the final one
        shared = {**recipe, "params": {k: v for k, v in recipe["params"].items() if k not in LOCAL_KEYS}}
        write_text(args.out / f"recipe-{recipe_hash(recipe)}.yaml", yaml.safe_dump(shared, sort_keys=False))
    tokenize_sets(sets, work, results)
    seeds = recipe["seeds"]
    at_once = args.parallel or len(seeds)
    pending = list(seeds)
    running: list[tuple[int, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < at_once:
            seed = pending.pop(0)
            log_file = open(args.out / f"seed-{seed}.log", "w")
            command = [sys.executable, __file__, *sys.argv[1:], "--one-seed", str(seed)]
            # Seeds side by side share the CPU cores instead of each taking all of them.
            threads = str(max(1, (os.cpu_count() or 1) // min(len(seeds), at_once)))
            running.append((seed, subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": threads})))
        time.sleep(5)
        for seed, process in list(running):
            if process.poll() is not None:
                running.remove((seed, process))
                if process.returncode:
                    failed.append(seed)
    print(squad_table.tables(squad_table.read_records(results)))
    if failed:
        raise SystemExit(f"seeds {failed} failed: see {args.out}/seed-<seed>.log")


if __name__ == "__main__":
    main()
