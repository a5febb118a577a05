"""DVC stage `summary`: reports/{evaluate,benchmark}.json and the loss histories -> the scores
(metrics/scores.json, what `dvc metrics show` shows) and the charts (plots/*.svg)."""
from pathlib import Path

from flows.common import PLOTS_DIR, REPORTS_DIR, main, stage_flow
from stages.common import read_json
from stages.summary import summarize

SCORES = Path("metrics/scores.json")
LOSS_HISTORIES = {
    "dense baseline (train_baseline)": PLOTS_DIR / "train_baseline_loss_history.json",
    "2:4 sparse fine-tuning (finetune_sparse)": PLOTS_DIR / "finetune_sparse_loss_history.json",
}


def work(params, out_dir):
    losses = {name: read_json(path) for name, path in LOSS_HISTORIES.items()}
    return summarize(read_json(REPORTS_DIR / "evaluate.json"), read_json(REPORTS_DIR / "benchmark.json"), losses,
                     PLOTS_DIR, SCORES)


def score_table(summary: dict) -> list[dict]:
    """The Prefect artifact: F1 per variant, and the headline speedup with where it was measured."""
    headline = summary["headline_speedup"]
    where = f"batch {headline['batch_size']}, {headline['mode']}" if headline else "not measured"
    return [*({"score": f"F1 {variant}", "value": f1} for variant, f1 in summary["scores"]["f1"].items()),
            {"score": f"speedup ({where})", "value": summary["scores"]["speedup"]}]


summary_flow = stage_flow("summary", work, table=score_table)

if __name__ == "__main__":
    main(summary_flow)
