"""DVC stage `summary`: reports/{evaluate,benchmark}.json and the loss histories -> the scores
(metrics/scores.json, what `dvc metrics show` shows) and the charts (plots/*.svg)."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from flows.common import PLOTS_DIR, REPORTS_DIR, StageFlow, main  # noqa: E402
from stages.common import read_json  # noqa: E402
from stages.summary import data_name, summarize  # noqa: E402

SCORES = Path("metrics/scores.json")
TRAINING_RUNS = {"dense baseline": "train_baseline", "2:4 sparse fine-tuning": "finetune_sparse"}


def work(params, out_dir):
    losses = {run: {"objective": read_json(REPORTS_DIR / f"{stage}.json")["objective"],
                    "history": read_json(PLOTS_DIR / f"{stage}_loss_history.json")}
              for run, stage in TRAINING_RUNS.items()}
    data = data_name(params, read_json(REPORTS_DIR / "tokenize.json")["validation_examples"])
    return summarize(read_json(REPORTS_DIR / "evaluate.json"), read_json(REPORTS_DIR / "benchmark.json"), losses,
                     data, PLOTS_DIR, SCORES)


def score_table(summary: dict) -> list[dict]:
    """The Prefect artifact: F1 per variant, and the headline speedup with where it was measured."""
    headline, speedup = summary["headline_speedup"], summary["scores"]["speedup"]
    where = (f" (batch {headline['batch_size']}, {headline['mode']})" if headline
             else "" if isinstance(speedup, str) else " (not measured)")  # a string: why there is none
    return [*({"score": f"F1 {variant}", "value": f1} for variant, f1 in summary["scores"]["f1"].items()),
            {"score": f"speedup{where}", "value": speedup}]


summary_flow = StageFlow("summary", work, table=score_table)

if __name__ == "__main__":
    main(summary_flow, ARGS)
