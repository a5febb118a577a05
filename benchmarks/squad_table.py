"""docs/squad.md's study tables and the README's accuracy summary, generated from the one committed
results file of benchmarks/squad_seeds.py:

    python benchmarks/squad_table.py                      # print the tables of docs/results/squad-study.jsonl
    python benchmarks/squad_table.py --write              # replace them in docs/squad.md and the summary in
                                                          # README.md (each between its markers), and draw
                                                          # the gaps in docs/squad-gaps.svg
    python benchmarks/squad_table.py RUN/results.jsonl    # a run's own records, before they are committed

Each row belongs to one run: one recipe hash, one code commit and one code hash. Records of different
runs never meet in a row. The differences are paired by seed (each seed's 2:4 model against that seed's
own dense baseline and control), with mean, standard deviation, count and the 95% t-interval of the
mean. The README's summary is the last run scored on SQuAD dev: a final run, whose recipe was chosen
on the held-out split and committed first; until one exists it says so. tests/test_squad_table.py
fails while docs/squad.md, README.md or the chart differs from what the file gives.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

from squad_seeds import load_recipe, recipe_hash
from stages import charts  # squad_seeds put the repository on sys.path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results" / "squad-study.jsonl"
DOC = REPO / "docs" / "squad.md"
RECIPES = REPO / "docs" / "results" / "squad-recipes"  # the committed recipes, candidates and final
FINAL_RECIPE = "final"  # RECIPES/final.yaml: the chosen recipe, not a candidate
BEGIN, END = "<!-- study:begin (benchmarks/squad_table.py) -->", "<!-- study:end -->"
README = REPO / "README.md"
CHART = REPO / "docs" / "squad-gaps.svg"  # the gaps of docs/squad.md as intervals, drawn
README_BEGIN, README_END = "<!-- accuracy:begin (benchmarks/squad_table.py) -->", "<!-- accuracy:end -->"
VERDICTS_BEGIN, VERDICTS_END = "<!-- verdicts:begin (benchmarks/squad_table.py) -->", "<!-- verdicts:end -->"
RUN = ("recipe", "commit", "code")
FIELDS = ("seed", "variant", "on", "f1", "exact_match", *RUN, "device", "versions")
# (variant, what it is held to), seed by seed: what 2:4 costs against the baseline and against the
# dense model given the same extra training, then what the int8 plan costs on top of 2:4.
PAIRED = (("sparse", "dense"), ("sparse", "control"), ("int8", "sparse"))
NAMES = {"dense": "dense baseline", "control": "dense control (the 2:4 model's extra fine-tuning)",
         "zero-shot-magnitude": "2:4 zero-shot, magnitude", "zero-shot-wanda": "2:4 zero-shot, Wanda",
         "zero-shot-sparsegpt": "2:4 zero-shot, SparseGPT", "sparse": "2:4 fine-tuned",
         "int8": "int8 plan of the 2:4 model"}
GAP_NAMES = {"sparse": "2:4", "dense": "dense", "control": "dense control", "int8": "int8 plan"}
# Issue 31's targets on SQuAD dev, per paired difference: what it asks, and whether an interval meets it.
TARGETS = {("sparse", "dense"): ("mean >= 0, the interval's low end > -0.3",
                                 lambda gap: gap["mean"] >= 0 and gap["low"] > -0.3),
           ("sparse", "control"): ("mean within 0.3", lambda gap: abs(gap["mean"]) <= 0.3),
           ("int8", "sparse"): ("mean within 0.3", lambda gap: abs(gap["mean"]) <= 0.3)}
ORDER = ("dense", "control", "zero-shot-magnitude", "zero-shot-wanda", "zero-shot-sparsegpt", "sparse", "int8")
SPLITS = ("heldout", "dev", "extra")
# Plan variants (engine/planner.py) that run no int8 layer: their "int8 plan" is the fp16 2:4 model.
WITHOUT_INT8 = ("dense_masked", "fp16_2of4")
# Student's t distribution, two-sided 95% (its 0.975 quantile), by degrees of freedom.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def read_records(path: Path) -> list[dict]:
    """The score records of a results file (its tokenize lines left out), every field there; a seed's
    variant scored twice on one split by one run is refused, as the table could not say which counts."""
    records, seen = [], {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
        if "tokenize" in record:
            continue
        if missing := [field for field in FIELDS if field not in record]:
            raise ValueError(f"{path}:{number}: field '{missing[0]}' missing (not a squad_seeds.py score record)")
        if record["on"] not in SPLITS:
            raise ValueError(f"{path}:{number}: field 'on' is {record['on']!r}, not one of {', '.join(SPLITS)}")
        key = (run_of(record), record["seed"], record["variant"], record["on"])
        if key in seen:
            raise ValueError(f"{path}:{number}: seed {record['seed']} {record['variant']} on {record['on']} of "
                             f"recipe {record['recipe']} at commit {record['commit']} is already on line {seen[key]}")
        seen[key] = number
        records.append(record)
    return records


def run_of(record: dict) -> tuple:
    return tuple(record[field] for field in RUN)


def paired_differences(records: list[dict], variant: str, reference: str, split: str) -> dict[int, float]:
    """Per seed that has both, variant's F1 minus reference's on `split`. Records of more than one run
    (recipe, commit, code) are refused: a difference pairs two models of one run."""
    runs = {run_of(record) for record in records}
    if len(runs) > 1:
        raise ValueError(f"records of {len(runs)} runs (recipe, commit, code): {sorted(runs)[0]} and "
                         f"{sorted(runs)[1]}: a paired difference is taken within one run")
    f1 = {(record["seed"], record["variant"]): record["f1"] for record in records if record["on"] == split}
    seeds = sorted({seed for seed, _ in f1})
    return {seed: f1[seed, variant] - f1[seed, reference] for seed in seeds
            if (seed, variant) in f1 and (seed, reference) in f1}


def interval(values: list[float]) -> dict:
    """Mean, sample standard deviation, count and the 95% t-interval of the mean (none for one value)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "low": None, "high": None}
    if n - 1 not in T_975:
        raise ValueError(f"{n} paired seeds: T_975 holds t for up to {max(T_975) + 1}")
    sd = statistics.stdev(values)
    half = T_975[n - 1] * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def committed_recipes() -> dict[str, list[tuple[Path, dict]]]:
    """Recipe hash -> the committed recipe files that have it, each with its recipe."""
    recipes: dict[str, list[tuple[Path, dict]]] = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = load_recipe(path)
        recipes.setdefault(recipe_hash(recipe), []).append((path, recipe))
    return recipes


def recipe_names() -> dict[str, str]:
    """Recipe hash -> the committed recipe files that have it (links from docs/)."""
    return {recipe: ", ".join(f"[{path.stem}]({path.relative_to(DOC.parent)})" for path, _ in files)
            for recipe, files in committed_recipes().items()}


def run_title(run: tuple, names: dict[str, str]) -> str:
    recipe, commit, code = run
    named = f" ({names[recipe]})" if recipe in names else ""
    return f"**Recipe `{recipe}`{named}, code at commit `{commit[:8]}` (code hash `{code}`)**"


def order(variant: str) -> tuple:
    return (ORDER.index(variant) if variant in ORDER else len(ORDER), variant)


SCORES = "| split | variant | seeds | F1 mean (sd) | EM mean | device |\n|---|---|---|---|---|---|"
DIFFERENCES = ("| split | paired difference (F1) | seeds | mean | sd | 95% interval | per seed |\n"
               "|---|---|---|---|---|---|---|")


def score_rows(split: str, records: list[dict]) -> list[str]:
    """Each variant's F1 (mean, sd over its seeds) and EM on `split`, records of one run."""
    rows = []
    for variant in sorted({record["variant"] for record in records}, key=order):
        chosen = [record for record in records if record["variant"] == variant]
        f1 = interval([record["f1"] for record in chosen])
        sd = "" if f1["sd"] is None else f" ({f1['sd']:.2f})"
        em = statistics.fmean(record["exact_match"] for record in chosen)
        devices = ", ".join(sorted({record["device"] for record in chosen}))
        rows.append(f"| {split} | {NAMES.get(variant, variant)} | {f1['n']} | {f1['mean']:.2f}{sd} | {em:.2f} | "
                    f"{devices} |")
    return rows


def difference_rows(split: str, records: list[dict]) -> list[str]:
    """Each PAIRED difference on `split` that some seed has both sides of, records of one run."""
    rows = []
    for variant, reference in PAIRED:
        if not (differences := paired_differences(records, variant, reference, split)):
            continue
        gap = interval(list(differences.values()))
        sd, bounds = ("", "") if gap["sd"] is None else (f"{gap['sd']:.2f}", f"[{gap['low']:+.2f}, {gap['high']:+.2f}]")
        per_seed = ", ".join(f"{seed}: {value:+.2f}" for seed, value in differences.items())
        rows.append(f"| {split} | {variant} - {reference} | {gap['n']} | {gap['mean']:+.2f} | {sd} | {bounds} | "
                    f"{per_seed} |")
    return rows


def int8_plans(records: list[dict]) -> dict[int, str]:
    """Seed -> the plan variant the engine picked for its int8 model, records of one run."""
    return {record["seed"]: record["plan_variant"] for record in sorted(records, key=lambda r: r["seed"])
            if record["variant"] == "int8" and "plan_variant" in record}


def plans_running_int8(plans: dict[int, str]) -> int:
    return sum(plan not in WITHOUT_INT8 for plan in plans.values())


def int8_in_plans(records: list[dict]) -> str:
    """"int8 ran in N of M plans" where some seed's int8 plan ran no int8 layer, records of one run; else ""."""
    plans = int8_plans(records)
    ran = plans_running_int8(plans)
    return f"int8 ran in {ran} of {len(plans)} plans" if ran < len(plans) else ""


def int8_note(records: list[dict]) -> str | None:
    """Which int8 plans ran int8 at all, records of one run (None where no record names its plan)."""
    if not (plans := int8_plans(records)):
        return None
    per_seed = ", ".join(f"{seed}: {plan}" for seed, plan in plans.items())
    return (f"The int8 plans as the engine picked them (plan variant at the scored batch size, per seed): {per_seed}. "
            f"A plan of {' or '.join(WITHOUT_INT8)} runs no int8 layer, so its model is the fp16 2:4 model and "
            f"scores its F1: int8 ran in {plans_running_int8(plans)} of {len(plans)} seeds' plans.")


def tables(records: list[dict]) -> str:
    """Per run: each variant's mean scores per split, then the paired differences."""
    if not records:
        return "No run of this protocol is recorded yet."
    names = recipe_names()
    runs: dict[tuple, list[dict]] = {}
    for record in records:
        runs.setdefault(run_of(record), []).append(record)
    sections = []
    for run, members in runs.items():
        scores, differences = [SCORES], [DIFFERENCES]
        for split in sorted({record["on"] for record in members}, key=SPLITS.index):
            on_split = [record for record in members if record["on"] == split]
            scores += score_rows(split, on_split)
            differences += difference_rows(split, on_split)
        note = int8_note(members)
        sections.append("\n\n".join([run_title(run, names), "\n".join(scores), "\n".join(differences),
                                      *([note] if note else [])]))
    return "\n\n".join(sections)


def overlap_share(first: dict, second: dict) -> float:
    """How much of the narrower of two intervals the two share, 0 to 1."""
    shared = min(first["high"], second["high"]) - max(first["low"], second["low"])
    return max(0.0, shared) / min(first["high"] - first["low"], second["high"] - second["low"])


def choose(gaps: dict[str, tuple[float, dict]]) -> str:
    """docs/squad.md's rule over candidates (name -> (fine-tuning epochs, sparse - dense interval)): the
    highest mean gap, unless a shorter schedule's interval shares more than half of the narrower one
    with the best's; then the shortest of those (the higher mean among equals)."""
    best = max(gaps, key=lambda name: gaps[name][1]["mean"])
    near = [name for name, (epochs, gap) in gaps.items()
            if name == best or epochs < gaps[best][0] and overlap_share(gap, gaps[best][1]) > 0.5]
    return min(near, key=lambda name: (gaps[name][0], -gaps[name][1]["mean"]))


def candidate_gaps(records: list[dict]) -> tuple[list[tuple], str | None]:
    """([(candidate name, its recipe hash, fine-tuning epochs, latest run or None, its held-out sparse -
    dense per seed)] for each committed candidate, the final recipe's hash or None)."""
    latest: dict[str, tuple] = {}
    for record in records:
        if record["on"] == "heldout":
            latest[record["recipe"]] = run_of(record)  # file order: a later run of a recipe replaces an earlier
    candidates, final = [], None
    for recipe, files in committed_recipes().items():
        for path, candidate in files:
            if path.stem == FINAL_RECIPE:
                final = recipe
                continue
            run = latest.get(recipe)
            differences = paired_differences([r for r in records if run_of(r) == run], "sparse", "dense",
                                             "heldout") if run else {}
            candidates.append((path.stem, recipe, candidate["params"].get("finetune.epochs"), run, differences))
    return candidates, final


def selection(records: list[dict]) -> str:
    """The candidates' held-out gaps, each from the latest run of its recipe, and the rule's choice once
    every committed candidate (the recipe files other than final.yaml) has a run with an interval."""
    rows, gaps, pending, hashes = [], {}, [], {}
    candidates, final = candidate_gaps(records)
    for name, recipe, epochs, run, differences in candidates:
        hashes[name] = recipe
        if len(differences) < 2:
            pending.append(name)
            rows.append(f"| {name} | {epochs} | not run yet | | |")
            continue
        gap = gaps[name] = (epochs, interval(list(differences.values())))
        rows.append(f"| {name} | {epochs} | `{run[1][:8]}` | {gap[1]['n']} | {gap[1]['mean']:+.2f} "
                    f"[{gap[1]['low']:+.2f}, {gap[1]['high']:+.2f}] |")
    chosen = None if pending or not gaps else choose(gaps)
    if final is not None and (chosen is None or hashes[chosen] != final):
        raise ValueError(f"{RECIPES / FINAL_RECIPE}.yaml: its recipe {final} is not the rule's choice "
                         f"({chosen or 'none yet: ' + ', '.join(pending) + ' still to run'}): dev is scored only "
                         "for the recipe chosen on the held-out split")
    verdict = (f"Not chosen yet: {', '.join(pending)} still to run." if chosen is None else
               f"The rule chooses **{chosen}**" + (f"; {FINAL_RECIPE}.yaml holds it." if final else "."))
    return "\n".join(["**Selection** (held-out split; each candidate's latest run):", "",
                      "| candidate | fine-tuning epochs | code commit | seeds | 2:4 − dense [95% interval] |",
                      "|---|---|---|---|---|", *sorted(rows), "", verdict])


def with_tables(doc: str, records: list[dict]) -> str:
    doc = between(doc, VERDICTS_BEGIN, VERDICTS_END, verdicts(records))
    return between(doc, BEGIN, END, f"{tables(records)}\n\n{selection(records)}")


def verdicts(records: list[dict]) -> str:
    """The last final run's paired dev differences against issue 31's targets (TARGETS)."""
    if last_final_run(records) is None:
        return "No final run yet: SQuAD dev has not been scored."
    rows = ["| SQuAD dev, paired by seed | mean [95% interval] | seeds | target | verdict |", "|---|---|---|---|---|"]
    for variant, reference, differences, ran in dev_gaps(records):
        target, met = TARGETS[variant, reference]
        gap = interval(list(differences.values()))
        verdict = "met" if met(gap) else "not met"
        if reference == "control":
            verdict += ", the control ahead" if gap["mean"] < 0 else ", 2:4 ahead"
        if ran:
            verdict += f" ({ran})"
        rows.append(f"| {GAP_NAMES[variant]} − {GAP_NAMES[reference]} | {gap_text(gap)} | {gap['n']} | {target} | "
                    f"{verdict} |")
    return "\n".join(rows)


def between(doc: str, begin_marker: str, end_marker: str, text: str) -> str:
    begin, end = doc.index(begin_marker) + len(begin_marker), doc.index(end_marker)
    return f"{doc[:begin]}\n{text}\n{doc[end:]}"


def gap_cell(records: list[dict], variant: str, reference: str) -> str:
    """A paired difference on dev as `mean [low, high]`, or n/a where no seed has both."""
    if not (differences := paired_differences(records, variant, reference, "dev")):
        return "n/a"
    return gap_text(interval(list(differences.values())))


def gap_text(gap: dict) -> str:
    """An interval as `mean [low, high]` (the mean alone for one seed)."""
    return f"{gap['mean']:+.2f}" + ("" if gap["sd"] is None else f" [{gap['low']:+.2f}, {gap['high']:+.2f}]")


def pending_summary() -> str:
    """Before any dev score: which recipe the held-out split chose (once final.yaml is committed), or
    that it is being chosen."""
    for files in committed_recipes().values():
        names = [path.stem for path, _ in files]
        if FINAL_RECIPE in names:
            recipe = files[names.index(FINAL_RECIPE)][1]
            chosen = ", ".join(name for name in names if name != FINAL_RECIPE) or FINAL_RECIPE
            params = recipe["params"]
            return (f"No final run yet: the held-out split chose {chosen} ({params.get('train.epochs', '?')} dense + "
                    f"{params.get('finetune.epochs', '?')} 2:4 epochs), fixed in "
                    f"[final.yaml](docs/results/squad-recipes/{FINAL_RECIPE}.yaml) before SQuAD dev is scored with "
                    f"seeds {', '.join(map(str, recipe['seeds']))} ([docs/squad.md](docs/squad.md)).")
    return ("No final run yet: the recipe is being chosen on the held-out split, and SQuAD dev is scored only "
            "after ([docs/squad.md](docs/squad.md)).")


def last_final_run(records: list[dict]) -> tuple | None:
    """The last run scored on SQuAD dev (a final run), None before one."""
    finals = list(dict.fromkeys(run_of(record) for record in records if record["on"] == "dev"))
    return finals[-1] if finals else None


def final_dev(records: list[dict]) -> list[dict]:
    """The last final run's records on SQuAD dev ([] before one)."""
    run = last_final_run(records)
    return [record for record in records if run is not None and run_of(record) == run and record["on"] == "dev"]


def dev_gaps(records: list[dict]) -> list[tuple[str, str, dict[int, float], str]]:
    """The last final run's PAIRED differences on dev that two seeds or more have: (variant, reference,
    difference per seed, "int8 ran in N of M plans" where the int8 row needs saying so, else "")."""
    dev, gaps = final_dev(records), []
    for variant, reference in PAIRED:
        if len(differences := paired_differences(dev, variant, reference, "dev")) >= 2:
            gaps.append((variant, reference, differences, int8_in_plans(dev) if variant == "int8" else ""))
    return gaps


def gap_rows(records: list[dict]) -> list[tuple[str, str, dict[int, float]]]:
    """The chart's rows, (split, label, difference per seed): each candidate's held-out 2:4 - dense
    (its latest run), then the last final run's paired differences on dev."""
    rows = [("held-out", f"{name}: 2:4 − dense", differences)
            for name, _, _, _, differences in candidate_gaps(records)[0] if len(differences) >= 2]
    for variant, reference, differences, ran in dev_gaps(records):
        rows.append(("dev", f"{GAP_NAMES[variant]} − {GAP_NAMES[reference]}" + (f" ({ran})" if ran else ""), differences))
    return rows


def gap_chart(records: list[dict]) -> str:
    """docs/squad-gaps.svg: each row of gap_rows as its mean (a dot), its 95% t-interval (a bar) and its
    seeds (rings), coloured by split, beside a line at zero."""
    rows = gap_rows(records)
    if not rows:
        return charts.document("2:4's F1 gaps: no run recorded yet", 400, 60, [])
    gaps = [interval(list(differences.values())) for _, _, differences in rows]
    x = charts.linear_axis("F1 difference, points (paired by seed)",
                           [value for gap in gaps for value in (gap["low"], gap["high"])], zero=True)
    colour_of = charts.colours([split for split, _, _ in rows])
    left, band = charts.LEFT + 230, charts.PANEL_HEIGHT / len(rows)
    at = lambda value: left + x.fraction(value) * charts.PANEL_WIDTH  # noqa: E731
    body = charts.frame(left, x, None) + [charts.line(at(0), charts.TOP, at(0), charts.TOP + charts.PANEL_HEIGHT,
                                                      "#555555", 1.5)]
    for index, ((split, label, differences), gap) in enumerate(zip(rows, gaps)):
        y, colour, name = charts.TOP + (index + 0.5) * band, colour_of[split], f"{split} · {label}"
        body += [charts.text(left - 8, y + 4, name, "end"),
                 f'<g data-series={quoteattr(name)}>',
                 charts.line(at(gap["low"]), y, at(gap["high"]), y, colour, 3),
                 f'<circle cx="{at(gap["mean"]):.2f}" cy="{y:.2f}" r="5" fill="{colour}"/>',
                 *(f'<circle cx="{at(value):.2f}" cy="{y - 9:.2f}" r="3" fill="#ffffff" stroke="{colour}"/>'
                   for value in differences.values()),
                 "</g>"]
    body += [charts.text(left + charts.PANEL_WIDTH / 2, charts.TOP + charts.PANEL_HEIGHT + 38, x.label)]
    note = "Dot: the mean; bar: its 95% t-interval; rings: the seeds. Held-out: the candidates; dev: the final recipe."
    return charts.document("2:4's F1 gaps, paired by seed", left + charts.PANEL_WIDTH + charts.RIGHT,
                           charts.TOP + charts.PANEL_HEIGHT + charts.BOTTOM + 10, body, note)


def readme_summary(records: list[dict]) -> str:
    """The README's accuracy summary: the last run scored on SQuAD dev, with its recipe's epochs, its
    seeds, the paired intervals and the split the recipe was chosen on; before one, where things stand."""
    if (run := last_final_run(records)) is None:
        return pending_summary()
    if run[0] not in (recipes := committed_recipes()):
        raise ValueError(f"the final run's recipe {run[0]} is not among the committed recipes ({RECIPES})")
    path, recipe = recipes[run[0]][0]
    dev = final_dev(records)
    f1 = {variant: interval([record["f1"] for record in dev if record["variant"] == variant])
          for variant in ("dense", "sparse")}
    params, heldout = recipe["params"], recipe["heldout"]
    devices = ", ".join(sorted({record["device"] for record in dev}))
    planned = max((len(final["seeds"]) for file, final in recipes[run[0]] if file.stem == FINAL_RECIPE), default=0)
    seeds = f"{f1['sparse']['n']} of {planned}" if planned > f1["sparse"]["n"] else str(f1["sparse"]["n"])
    int8_ran = f"; {ran}" if (ran := int8_in_plans(dev)) else ""
    return "\n".join([
        "| SQuAD v1.1 dev, MiniLM-L6 | chosen on | seeds | F1 dense | F1 2:4 | 2:4 − dense [95% interval] | "
        "2:4 − dense control | int8 plan − fp16 2:4 | device, code |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| [{path.stem}](docs/results/squad-recipes/{path.name}): {params.get('train.epochs', '?')} dense + "
        f"{params.get('finetune.epochs', '?')} 2:4 epochs | {heldout['fraction']:.0%} of SQuAD train, held out by "
        f"article (seed {heldout['seed']}) | {seeds} | {f1['dense']['mean']:.2f} | {f1['sparse']['mean']:.2f} | "
        f"{gap_cell(dev, 'sparse', 'dense')} | {gap_cell(dev, 'sparse', 'control')} | {gap_cell(dev, 'int8', 'sparse')}{int8_ran} "
        f"| {devices}, `{run[1][:8]}` |",
    ])


def main() -> None:
    arguments = sys.argv[1:]
    try:
        if arguments == ["--write"]:
            records = read_records(RESULTS)
            DOC.write_text(with_tables(DOC.read_text(), records))
            README.write_text(between(README.read_text(), README_BEGIN, README_END, readme_summary(records)))
            CHART.write_text(gap_chart(records))
        else:
            print(tables(read_records(Path(arguments[0]) if arguments else RESULTS)))
    except ValueError as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
