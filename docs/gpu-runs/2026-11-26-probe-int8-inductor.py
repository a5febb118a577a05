"""Probe, as run on the lent GPU (2026-11-26): does inductor's coordinate-descent tuning of its
pointwise kernels (block sizes, warps) recover the int8 model's slow fused GELU + quantize kernel
(287 us per layer in the model at batch 64, 145 us alone)? Times the pipeline's int8 2:4 model
(Int8SparseLinear, query/key/value quantized once) as compiled CUDA graphs, default inductor
config against coordinate_descent_tuning, dense default beside them; saves inductor's code.
Run from the repository root: PYTHONPATH=. python docs/gpu-runs/2026-11-26-probe-int8-inductor.py"""
import copy
import glob
import importlib.util
import os
import shutil
from pathlib import Path

import torch

HERE = Path("docs/gpu-runs").resolve()
spec = importlib.util.spec_from_file_location("bs16_probe", HERE / "2026-11-26-probe-int8-bs16.py")
bs16 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bs16)

from stages import int8  # noqa: E402
from stages.attention import capture_context  # noqa: E402
from stages.modeling import encoder_linears  # noqa: E402
from stages.sparse_engine import CudaGraphRunner, median_ms, swap_linears  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp"))
CUDA = torch.device("cuda")


def timed(label, model, config):
    torch.compiler.reset()
    with torch._inductor.config.patch(**config):
        runner = CudaGraphRunner(model, compile=True, capture_context=capture_context)
        for batch in (16, 64):
            ids = torch.randint(0, 28996, (batch, bs16.first.SEQ), device="cuda")
            ms = median_ms(lambda: runner(input_ids=ids), 3, 30, CUDA)
            print(f"{label:<40} batch {batch:>3}: {ms:8.3f} ms", flush=True)


def main():
    dense = bs16.first.build()
    kernels = bs16.int8_kernels()
    linears = encoder_linears(dense)
    calibration = int8.calibrate(dense, linears, {"input_ids": torch.randint(0, 28996, (16, 128), device="cuda")}, 0.8)
    model = swap_linears(copy.deepcopy(dense), {n: kernels[tuple(lin.weight.shape)] for n, lin in linears.items()},
                         int8_calibration={n: (s.cuda(), scale) for n, (s, scale, _) in calibration.items()})
    timed("dense, default inductor", dense, {})
    timed("int8 2:4, default inductor", model, {})
    saved = 0
    for path in glob.glob("/tmp/torchinductor_*/**/*.py", recursive=True):
        text = Path(path).read_text()
        if "gelu" in text.lower() and "int8" in text and saved < 3:
            shutil.copy(path, OUT / f"inductor_int8_{saved}.py")
            saved += 1
    timed("int8 2:4, coordinate_descent_tuning", model, {"coordinate_descent_tuning": True})
    timed("dense, coordinate_descent_tuning", dense, {"coordinate_descent_tuning": True})


if __name__ == "__main__":
    main()
