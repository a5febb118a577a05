"""Probe (issue #18): can inductor's GELU + int8 quantization kernel (1.69 ms of a compiled bert-base
forward at batch 64, 140 us a call, slower than the dense model's GELU) run faster: other ways of
writing the same math, and inductor's pointwise autotuning. GPU time per call (CUDA events, median
of 50) at 24,576 x 3072 fp16; F.gelu(approximate="tanh") (another function) only to see what erf costs.

    python docs/results/2026-12-02-probe-gelu-quant-inductor.py
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.kernels import quantize_input  # noqa: E402


def gpu_us(fn, repeats=50):
    for _ in range(5):
        fn()
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs) * 1000


FORMS = {
    "gelu (dense, fp16 out)": lambda x, m: F.gelu(x),
    "quantize_input(gelu)": lambda x, m: quantize_input(F.gelu(x), m),
    "clamp before round": lambda x, m: (F.gelu(x).float() * m).clamp(-127, 127).round().to(torch.int8),
    "through int32": lambda x, m: (F.gelu(x).float() * m).round().clamp(-127, 127).to(torch.int32).to(torch.int8),
    "gelu in float32, no fp16 rounding": lambda x, m: quantize_input(F.gelu(x.float()), m),
    "tanh gelu (another function)": lambda x, m: quantize_input(F.gelu(x, approximate="tanh"), m),
    "quantize only": lambda x, m: quantize_input(x, m),
}
SETTINGS = {"default": {}, "coordinate_descent_tuning": {"coordinate_descent_tuning": True},
            "max_autotune_pointwise": {"max_autotune_pointwise": True}}


def main():
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    x = torch.randn(64 * 384, 3072, device="cuda", dtype=torch.float16) * 3
    m = torch.rand(3072, device="cuda") * 60 + 10
    reference = quantize_input(F.gelu(x), m)
    for setting, options in SETTINGS.items():
        print(f"\n== inductor {setting} ==", flush=True)
        with inductor_config.patch(options):
            for name, form in FORMS.items():
                if setting != "default" and name not in ("gelu (dense, fp16 out)", "quantize_input(gelu)"):
                    continue
                torch.compiler.reset()
                compiled = torch.compile(form)
                us = gpu_us(lambda: compiled(x, m))
                out = compiled(x, m)
                off = "" if out.dtype != torch.int8 else f"  (off by 1 from eager: {int(((out.int() - reference.int()).abs() == 1).sum())})"
                print(f"{us:8.1f} us  {name}{off}", flush=True)


if __name__ == "__main__":
    main()
