"""docs/squad.md's study tables: generated from the committed results file, paired by seed within one run."""
from __future__ import annotations

import json
import re
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import squad_table  # noqa: E402
from squad_seeds import load_recipe, recipe_hash  # noqa: E402


def record(seed, variant, f1, on="heldout", recipe="r1", commit="c" * 40, code="k1"):
    return {"seed": seed, "variant": variant, "on": on, "f1": f1, "exact_match": f1 - 10, "recipe": recipe,
            "commit": commit, "code": code, "device": "NVIDIA H100 80GB HBM3", "versions": {"torch": "2.11.0"}}


def written(tmp_path, records):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_docs_squad_md_holds_the_tables_the_committed_results_give():
    doc = squad_table.DOC.read_text()
    records = squad_table.read_records(squad_table.RESULTS)
    assert squad_table.with_tables(doc, records) == doc, "stale: python benchmarks/squad_table.py --write"


def test_the_readme_holds_the_accuracy_summary_the_committed_results_give():
    readme = squad_table.README.read_text()
    summary = squad_table.readme_summary(squad_table.read_records(squad_table.RESULTS))
    assert squad_table.between(readme, squad_table.README_BEGIN, squad_table.README_END, summary) == readme, \
        "stale: python benchmarks/squad_table.py --write"


def test_the_readme_summary_waits_for_a_final_run_then_names_epochs_seeds_intervals_and_split():
    heldout_only = [record(1, "dense", 80.0), record(1, "sparse", 79.0)]
    assert squad_table.readme_summary(heldout_only) == (
        "No final run yet: the held-out split chose distilled-4ep (2 dense + 4 2:4 epochs), fixed in "
        "[final.yaml](docs/results/squad-recipes/final.yaml) before SQuAD dev is scored with seeds 1, 2, 3, 4, 5 "
        "([docs/squad.md](docs/squad.md)).")
    path = REPO / "docs" / "results" / "squad-recipes" / "distilled-4ep.yaml"
    recipe = recipe_hash(load_recipe(path))
    final = [record(seed, variant, f1, on="dev", recipe=recipe)
             for seed, dense, sparse, control, int8 in ((1, 82.0, 82.5, 82.2, 82.4), (2, 83.0, 82.8, 83.1, 82.8),
                                                         (3, 82.5, 82.9, 82.6, 82.7))
             for variant, f1 in (("dense", dense), ("sparse", sparse), ("control", control), ("int8", int8))]
    text = squad_table.readme_summary(heldout_only + final)
    row = text.splitlines()[2]
    # sparse - dense per seed +0.5, -0.2, +0.4: mean +0.233, sd 0.379, half-width 4.303 * 0.379 / sqrt(3) = 0.942
    assert row.startswith("| [distilled-4ep](docs/results/squad-recipes/distilled-4ep.yaml): 2 dense + 4 2:4 epochs "
                          "| 5% of SQuAD train, held out by article (seed 0) | 3 of 5 | 82.50 | 82.73 | +0.23 [-0.71, +1.17] |")
    assert "| +0.10 [" in row  # against the control: +0.3, -0.3, +0.3
    assert row.endswith("| NVIDIA H100 80GB HBM3, `cccccccc` |") and len(text.splitlines()) == 3
    every_seed = final + [record(seed, variant, 82.0, on="dev", recipe=recipe) for seed in (4, 5)
                          for variant in ("dense", "sparse", "control", "int8")]
    assert "held out by article (seed 0) | 5 | " in squad_table.readme_summary(every_seed)  # all final.yaml's seeds
    with pytest.raises(ValueError, match="the final run's recipe r9 is not among the committed recipes"):
        squad_table.readme_summary([record(1, "dense", 80.0, on="dev", recipe="r9")])


def test_paired_differences_mean_sd_and_t_interval_by_hand(tmp_path):
    records = [record(seed, variant, f1) for seed, dense, sparse in ((1, 80.0, 79.0), (2, 84.0, 82.0), (3, 82.0, 82.0))
               for variant, f1 in (("dense", dense), ("sparse", sparse))]
    assert squad_table.paired_differences(records, "sparse", "dense", "heldout") == {1: -1.0, 2: -2.0, 3: 0.0}
    # gaps -1, -2, 0: mean -1, sd 1; t(0.975, 2 df) = 4.303, so the half-width is 4.303 / sqrt(3) = 2.484
    gap = squad_table.interval([-1.0, -2.0, 0.0])
    assert (gap["n"], gap["mean"], gap["sd"]) == (3, -1.0, 1.0)
    assert gap["low"] == pytest.approx(-3.4843, abs=1e-4) and gap["high"] == pytest.approx(1.4843, abs=1e-4)
    text = squad_table.tables(squad_table.read_records(written(tmp_path, records)))
    assert "| heldout | sparse - dense | 3 | -1.00 | 1.00 | [-3.48, +1.48] | 1: -1.00, 2: -2.00, 3: +0.00 |" in text
    assert "| heldout | 2:4 fine-tuned | 3 | 81.00 (1.73) | 71.00 | NVIDIA H100 80GB HBM3 |" in text
    assert squad_table.interval([0.5])["sd"] is None  # one seed: no spread, no interval


def test_the_t_table_is_students():
    stats = pytest.importorskip("scipy.stats")
    for df, t in squad_table.T_975.items():
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)


def test_records_of_different_recipes_or_commits_are_never_paired(tmp_path):
    dense = [record(seed, "dense", 80.0) for seed in (1, 2, 3)]
    other_recipe = [record(seed, "sparse", 79.0, recipe="r2") for seed in (1, 2, 3)]
    other_commit = [record(seed, "sparse", 79.0, commit="d" * 40) for seed in (1, 2, 3)]
    for mixed in (dense + other_recipe, dense + other_commit):
        with pytest.raises(ValueError, match="records of 2 runs"):
            squad_table.paired_differences(mixed, "sparse", "dense", "heldout")
        text = squad_table.tables(squad_table.read_records(written(tmp_path, mixed)))
        assert "sparse - dense" not in text and text.count("**Recipe") == 2


def test_one_runs_seed_scored_twice_is_refused_in_one_line(tmp_path):
    path = written(tmp_path, [record(1, "dense", 80.0), record(1, "sparse", 79.0), record(1, "dense", 81.0)])
    with pytest.raises(ValueError, match=rf"^{path}:3: seed 1 dense on heldout of recipe r1 .* already on line 1$"):
        squad_table.read_records(path)
    path.write_text(json.dumps({"tokenize": "heldout", "train_examples": 4}) + "\n"
                    + json.dumps({k: v for k, v in record(1, "dense", 80.0).items() if k != "recipe"}) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: field 'recipe' missing"):
        squad_table.read_records(path)


def test_a_committed_recipe_is_named_by_its_hash():
    recipes = REPO / "docs" / "results" / "squad-recipes"
    recipe = recipe_hash(load_recipe(recipes / "gradual-4ep.yaml"))
    text = squad_table.tables([record(1, "dense", 80.0, recipe=recipe)])
    assert f"**Recipe `{recipe}` ([gradual-4ep](results/squad-recipes/gradual-4ep.yaml))" in text


def test_the_final_recipe_is_named_beside_the_candidate_it_repeats():
    recipes = REPO / "docs" / "results" / "squad-recipes"
    final = load_recipe(recipes / "final.yaml")
    assert final["seeds"] == [1, 2, 3, 4, 5] and set(final["variants"]) == {"control", "int8"}
    recipe = recipe_hash(final)
    assert recipe == recipe_hash(load_recipe(recipes / "distilled-4ep.yaml"))
    text = squad_table.tables([record(1, "dense", 80.0, recipe=recipe)])
    assert (f"**Recipe `{recipe}` ([distilled-4ep](results/squad-recipes/distilled-4ep.yaml), "
            "[final](results/squad-recipes/final.yaml))") in text


def gap(mean, low, high):
    return {"n": 3, "mean": mean, "sd": 0.3, "low": low, "high": high}


def test_the_rule_takes_the_best_gap_unless_a_shorter_schedule_is_as_good():
    assert squad_table.overlap_share(gap(0, -1, 1), gap(0.5, 0, 2)) == 0.5  # shares [0, 1]: half of each
    assert squad_table.overlap_share(gap(0, -1, 1), gap(0, -0.2, 0.2)) == 1.0  # the narrower inside the wider
    assert squad_table.overlap_share(gap(0, -1, 0), gap(1, 0.5, 1.5)) == 0.0
    # 6 epochs best, a 4-epoch interval sharing most of it: the shorter schedule
    assert squad_table.choose({"a-4ep": (4, gap(-0.1, -0.9, 0.7)), "b-6ep": (6, gap(0.1, -0.5, 0.7)),
                               "c-4ep": (4, gap(-0.3, -0.6, 0.0))}) == "a-4ep"
    # sharing exactly half is not more than half: the best stays
    assert squad_table.choose({"a-4ep": (4, gap(-0.5, -1, 0)), "b-6ep": (6, gap(0.5, -0.5, 1.5))}) == "b-6ep"
    # among equal schedules the highest mean, whatever the overlap
    assert squad_table.choose({"a-4ep": (4, gap(-0.1, -0.9, 0.7)), "c-4ep": (4, gap(0.0, -0.1, 0.1))}) == "c-4ep"


def test_the_selection_waits_for_every_candidate_then_names_the_rules_choice(monkeypatch, tmp_path):
    recipes = {}
    for name, epochs in (("short", 4), ("long", 6)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"seeds: [1, 2, 3]\nheldout: {{fraction: 0.05, seed: 0}}\nvariants: []\n"
                        f"params: {{finetune.epochs: {epochs}, finetune.learning_rate: {epochs}.0e-5}}\n")
        recipes[name] = recipe_hash(load_recipe(path))
    monkeypatch.setattr(squad_table, "RECIPES", tmp_path)

    def run(recipe, sparse, commit="c" * 40):
        return [r for seed, f1 in enumerate(sparse, 1)
                for r in (record(seed, "dense", 80.0, recipe=recipe, commit=commit),
                          record(seed, "sparse", 80.0 + f1, recipe=recipe, commit=commit))]

    short_runs = run(recipes["short"], (-2.0, -1.0, -1.5), commit="a" * 40) + run(recipes["short"], (0.0, 0.2, -0.1))
    text = squad_table.selection(short_runs)
    assert "| short | 4 | `cccccccc` | 3 | +0.03 [" in text  # the latest run, not the first
    assert "| long | 6 | not run yet | | |" in text
    assert text.endswith("Not chosen yet: long still to run.")
    # short's interval [-0.35, +0.41]; long's [+0.65, +1.15] shares none of it: the better, longer schedule
    chosen = squad_table.selection(short_runs + run(recipes["long"], (0.8, 1.0, 0.9)))
    assert "| long | 6 | `cccccccc` | 3 | +0.90 [+0.65, +1.15] |" in chosen
    assert chosen.endswith("The rule chooses **long**.")
    # long's [-0.31, +0.45] better by a little, sharing nearly all of it: the shorter schedule
    assert squad_table.selection(short_runs + run(recipes["long"], (0.1, -0.1, 0.2))).endswith(
        "The rule chooses **short**.")


def test_a_final_recipe_other_than_the_rules_choice_is_refused(monkeypatch, tmp_path):
    for name, epochs in (("short", 4), ("long", 6)):
        (tmp_path / f"{name}.yaml").write_text(
            f"seeds: [1, 2, 3]\nheldout: {{fraction: 0.05, seed: 0}}\nvariants: []\n"
            f"params: {{finetune.epochs: {epochs}}}\n")
    monkeypatch.setattr(squad_table, "RECIPES", tmp_path)
    recipes = {path.stem: recipe for recipe, files in squad_table.committed_recipes().items() for path, _ in files}
    records = [r for recipe, gaps in ((recipes["short"], (0.0, 0.2, -0.1)), (recipes["long"], (0.8, 1.0, 0.9)))
               for seed, gap in enumerate(gaps, 1)
               for r in (record(seed, "dense", 80.0, recipe=recipe), record(seed, "sparse", 80.0 + gap, recipe=recipe))]
    final = tmp_path / "final.yaml"
    final.write_text((tmp_path / "short.yaml").read_text().replace("[1, 2, 3]", "[1, 2, 3, 4, 5]"))
    with pytest.raises(ValueError, match=r"final.yaml: its recipe \w+ is not the rule's choice \(long\)"):
        squad_table.selection(records)
    final.write_text((tmp_path / "long.yaml").read_text().replace("variants: []", "variants: [control, int8]"))
    chosen = squad_table.selection(records)
    assert chosen.endswith("The rule chooses **long**; final.yaml holds it.") and "| final |" not in chosen
    with pytest.raises(ValueError, match="none yet: long still to run"):
        squad_table.selection(records[:6])  # short's run alone: the choice is not made yet


def test_an_int8_plan_that_runs_no_int8_layer_is_named_in_the_table_and_the_readme():
    path = REPO / "docs" / "results" / "squad-recipes" / "distilled-4ep.yaml"
    recipe = recipe_hash(load_recipe(path))
    final = []
    for seed, plan in ((1, "int8_gelu"), (2, "dense_masked"), (3, "fp16_2of4")):
        final += [record(seed, "dense", 82.0, on="dev", recipe=recipe), record(seed, "sparse", 82.0, on="dev", recipe=recipe),
                  record(seed, "control", 82.0, on="dev", recipe=recipe),
                  {**record(seed, "int8", 82.0 - (plan == "int8_gelu") * 0.3, on="dev", recipe=recipe), "plan_variant": plan}]
    assert squad_table.int8_note(final) == (
        "The int8 plans as the engine picked them (plan variant at the scored batch size, per seed): 1: int8_gelu, "
        "2: dense_masked, 3: fp16_2of4. A plan of dense_masked or fp16_2of4 runs no int8 layer, so its model is the "
        "fp16 2:4 model and scores its F1: int8 ran in 1 of 3 seeds' plans.")
    assert squad_table.int8_note(final).split(". A plan")[0] in squad_table.tables(final)
    assert "| -0.10 [-0.53, +0.33]; int8 ran in 1 of 3 plans |" in squad_table.readme_summary(final)
    every_plan_int8 = [{**r, "plan_variant": "int8_fused"} if r["variant"] == "int8" else r for r in final]
    assert "int8 ran in" not in squad_table.readme_summary(every_plan_int8)
    assert squad_table.int8_note([record(1, "int8", 80.0)]) is None  # records from before plans were named


def test_the_verdicts_hold_each_gap_against_issue_31s_target_and_say_which_way_the_control_goes():
    def final_run(sparse, control, int8, plans=("int8_gelu",) * 3):
        records = []
        for seed, plan in zip((1, 2, 3), plans):
            f1 = 80.0 + sparse[seed - 1]  # the 2:4 model's
            records += [record(seed, "dense", 80.0, on="dev"), record(seed, "sparse", f1, on="dev"),
                        record(seed, "control", f1 - control[seed - 1], on="dev"),
                        {**record(seed, "int8", f1 + int8[seed - 1], on="dev"), "plan_variant": plan}]
        lines = squad_table.verdicts(records).splitlines()[2:]
        return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]

    # 2:4 ahead of dense by 0.2 +- 0.1: met; the control 0.2 behind 2:4; int8 within 0.3
    rows = final_run(sparse=(0.1, 0.2, 0.3), control=(0.2, 0.1, 0.3), int8=(-0.1, 0.0, -0.2))
    assert [row[0] for row in rows] == ["2:4 − dense", "2:4 − dense control", "int8 plan − 2:4"]
    assert rows[0][1] == "+0.20 [-0.05, +0.45]" and rows[0][-1] == "met"
    assert rows[1][1].startswith("+0.20") and rows[1][-1] == "met, 2:4 ahead"
    assert rows[2][-1] == "met"
    # a mean at or above zero whose interval reaches below -0.3 is not met; nor a control 0.4 ahead
    rows = final_run(sparse=(-0.5, 0.0, 0.5), control=(-0.4, -0.4, -0.4), int8=(0.0, 0.0, 0.0),
                     plans=("int8_gelu", "dense_masked", "dense_masked"))
    assert rows[0][1].startswith("+0.00 [-1.24") and rows[0][-1] == "not met"
    assert rows[1][-1] == "not met, the control ahead"
    assert rows[2][-1] == "met (int8 ran in 1 of 3 plans)"
    assert squad_table.verdicts([record(1, "dense", 80.0)]) == "No final run yet: SQuAD dev has not been scored."


def test_the_committed_gap_chart_is_what_the_results_give():
    records = squad_table.read_records(squad_table.RESULTS)
    assert squad_table.CHART.read_text() == squad_table.gap_chart(records), "stale: python benchmarks/squad_table.py --write"
    assert "](squad-gaps.svg)" in squad_table.DOC.read_text()


def test_the_gap_chart_draws_each_gap_at_its_mean_within_its_interval_beside_zero():
    import xml.etree.ElementTree as ET
    path = REPO / "docs" / "results" / "squad-recipes" / "distilled-4ep.yaml"
    recipe = recipe_hash(load_recipe(path))
    final = [record(seed, variant, f1, on="dev", recipe=recipe)
             for seed, dense, sparse, control in ((1, 82.0, 81.0, 83.0), (2, 82.0, 81.2, 83.1), (3, 82.0, 81.1, 83.3))
             for variant, f1 in (("dense", dense), ("sparse", sparse), ("control", control))]
    assert [(split, label) for split, label, _ in squad_table.gap_rows(final)] == [
        ("dev", "2:4 − dense"), ("dev", "2:4 − dense control")]
    svg = ET.fromstring(squad_table.gap_chart(final))
    ns = {"svg": "http://www.w3.org/2000/svg"}
    zero = next(float(line.get("x1")) for line in svg.findall("svg:line", ns) if line.get("stroke") == "#555555")
    groups = {group.get("data-series"): group for group in svg.findall("svg:g", ns)}
    for name in ("dev · 2:4 − dense", "dev · 2:4 − dense control"):
        bar = groups[name].find("svg:line", ns)
        low, high = sorted((float(bar.get("x1")), float(bar.get("x2"))))
        mean, *seeds = [float(circle.get("cx")) for circle in groups[name].findall("svg:circle", ns)]
        assert low < mean < high and len(seeds) == 3
        assert high < zero  # -0.90 [-1.15, -0.65], -2.03 [-2.41, -1.65]
    dense_gap, control_gap = (float(groups[name].find("svg:circle", ns).get("cx"))
                              for name in ("dev · 2:4 − dense", "dev · 2:4 − dense control"))
    assert control_gap < dense_gap  # -2.03 left of -0.90


def test_docs_squad_md_prose_quotes_the_figures_the_verdicts_give():
    """The result's hand-written bullets quote each paired gap in bold, and its heading and intro the number
    of seeds: they must say what the generated verdicts say (another seed moves every figure)."""
    doc = squad_table.DOC.read_text()
    gaps = squad_table.dev_gaps(squad_table.read_records(squad_table.RESULTS))
    names = {("sparse", "dense"): "2:4 − dense baseline", ("sparse", "control"): "2:4 − compute-matched dense control",
             ("int8", "sparse"): "int8 plan − fp16 2:4"}
    expected = [(names[variant, reference], squad_table.gap_text(squad_table.interval(list(differences.values()))))
                for variant, reference, differences, _ in gaps]
    quoted = [(name, f"{mean} {interval}") for name, mean, interval
              in re.findall(r"\*\*([^*]+?): ([+-]\d+\.\d\d) F1 (\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\])", doc)]
    assert quoted == expected, "docs/squad.md's bullets quote other figures than its verdicts table"
    seeds = {len(differences) for _, _, differences, _ in gaps}
    assert len(seeds) == 1
    [n] = seeds
    assert f"## The result: SQuAD dev, seeds 1-{n} of 5" in doc and f"95% t-intervals over {n} seeds" in doc
