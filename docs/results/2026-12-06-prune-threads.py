"""Issue 33: how far the default's zero-shot SparseGPT prune moves with float rounding alone.
Prunes the committed models/baseline again (1 and 2 CPU threads), and a copy of it whose every
weight moved by one float32 step (torch.nextafter, up or down at random, seeded): the size of
difference another CPU's kernels or another torch make. Compares each result's zeros with the
committed models/pruned and scores it on the default's validation questions.
    PYTHONPATH=. python docs/results/2026-12-06-prune-threads.py   (after `dvc repro`, in the checkout)
"""
import json
import tempfile
from pathlib import Path

import torch

from engine.adapters import encoder_linears
from engine.models import load_qa_model, load_tokenizer
from stages.evaluate import evaluate
from stages.modeling import save_model
from stages.params import load_params
from stages.prune import prune

BASELINE = Path("models/baseline")


def zeros(model_dir: Path) -> dict[str, torch.Tensor]:
    return {name: linear.weight == 0 for name, linear in encoder_linears(load_qa_model(str(model_dir))).items()}


def one_step_off(out_dir: Path) -> None:
    """The baseline with every weight one float32 step up or down (seeded)."""
    model = load_qa_model(str(BASELINE))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            up = torch.rand(parameter.shape, generator=generator) < 0.5
            parameter.copy_(torch.nextafter(parameter, torch.where(up, torch.inf, -torch.inf)))
    save_model(model, load_tokenizer(str(BASELINE)), out_dir)


def main() -> None:
    params = load_params()
    committed = zeros(Path("models/pruned"))
    total = sum(mask.numel() for mask in committed.values())
    rows = {"committed": evaluate(params, Path("features"), {"pruned": Path("models/pruned")})["pruned"]}
    cases = {"1 thread": (1, None), "2 threads": (2, None), "weights one float32 step off, 2 threads": (2, one_step_off)}
    for case, (threads, change) in cases.items():
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            baseline = BASELINE
            if change is not None:
                baseline = Path(tmp) / "baseline"
                change(baseline)
            pruned = Path(tmp) / "pruned"
            prune(params, baseline, pruned)
            here = zeros(pruned)
            moved = sum(int((here[name] != committed[name]).sum()) for name in committed)
            rows[case] = {**evaluate(params, Path("features"), {"pruned": pruned})["pruned"],
                          "mask_positions_changed": f"{moved} of {total} ({moved / total:.3%})"}
        print(json.dumps({case: rows[case]}), flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
