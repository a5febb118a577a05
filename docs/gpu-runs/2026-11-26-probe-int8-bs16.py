"""Probe, as run on the lent H100 (2026-11-26): where the int8 2:4 model (the pipeline's
Int8SparseLinear, SmoothQuant static scales) spends its time at batch 16, where it loses to dense,
against batch 64, where it wins. Kernel-level profile of one compiled forward each (the profile
function of 2026-11-26-probe-int8-profile.py); int8 alg_ids are the best per shape and token count
in docs/gpu-runs/2026-11-26-int8-smoothquant-h100.json.
Run from the repository root: python docs/gpu-runs/2026-11-26-probe-int8-bs16.py
"""
import copy
import importlib.util
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("profile_probe", HERE / "2026-11-26-probe-int8-profile.py")
second = importlib.util.module_from_spec(spec)
spec.loader.exec_module(second)
first = second.first

from stages import int8  # noqa: E402
from stages.accelerate import best_alg  # noqa: E402
from stages.modeling import encoder_linears  # noqa: E402
from stages.sparse_engine import swap_linears  # noqa: E402


def int8_kernels():
    plan = json.loads((HERE / "2026-11-26-int8-smoothquant-h100.json").read_text())["plan"]
    kernels = {}
    for key, per_bucket in plan["shape_timings"].items():
        if key.startswith("int8:"):
            out_f, in_f = map(int, key.removeprefix("int8:").split("x"))
            kernels[(out_f, in_f)] = {int(b): int(best_alg({"sparse_ms": t["sparse_ms"]})) for b, t in per_bucket.items()}
    return kernels


def main():
    dense = first.build()
    kernels = int8_kernels()
    print("int8 alg_ids:", kernels, flush=True)
    linears = encoder_linears(dense)
    calibration = int8.calibrate(dense, linears, {"input_ids": torch.randint(0, 28996, (16, 128), device="cuda")}, 0.8)
    model = swap_linears(copy.deepcopy(dense), {n: kernels[tuple(lin.weight.shape)] for n, lin in linears.items()},
                         int8_calibration={n: (s.cuda(), scale) for n, (s, scale, _) in calibration.items()})
    for batch in (16, 64):
        ids = torch.randint(0, 28996, (batch, first.SEQ), device="cuda")
        second.profile(f"dense compiled, batch {batch}", dense, ids)
        torch.compiler.reset()
        second.profile(f"int8 2:4 compiled, batch {batch}", model, ids)
        torch.compiler.reset()


if __name__ == "__main__":
    main()
