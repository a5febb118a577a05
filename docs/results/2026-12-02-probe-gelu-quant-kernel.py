"""Probe (issue #18): the kernel before an int8 FFN output Linear, GELU + int8 quantization, which the
compiled-profile probe found slower (1.69 ms a forward at batch 64) than the dense model's plain GELU
(1.29 ms) although it writes half the bytes. GPU time per call (CUDA events, median of 50) of:
inductor's GELU (dense), inductor's fused GELU + quantize_input, engine/quantize_kernel.py's kernel
with GELU at several block sizes and warp counts, and the quantization alone both ways.

    python docs/results/2026-12-02-probe-gelu-quant-kernel.py

Run at commit bc140ac, whose engine/quantize_kernel.py had a GELU option; it was taken out after this
probe (the inductor kernel was faster: see the log), so at later commits the probe does not run as is.
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from engine import quantize_kernel  # noqa: E402
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


def main():
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    for tokens in (64 * 384, 256 * 384):
        x = torch.randn(tokens, 3072, device="cuda", dtype=torch.float16) * 3
        multipliers = torch.rand(3072, device="cuda") * 60 + 10
        out = torch.empty(x.shape, dtype=torch.int8, device="cuda")
        reference = quantize_input(F.gelu(x), multipliers)
        rows = {}
        gelu = torch.compile(F.gelu)
        rows["inductor gelu (dense, fp16 out)"] = gpu_us(lambda: gelu(x))
        fused = torch.compile(lambda x: quantize_input(F.gelu(x), multipliers))
        rows["inductor gelu+quantize"] = gpu_us(lambda: fused(x))
        plain = torch.compile(lambda x: quantize_input(x, multipliers))
        rows["inductor quantize"] = gpu_us(lambda: plain(x))
        for gelu_too in (True, False):
            for block in (1024, 2048, 4096):
                for warps in (4, 8):
                    def run():
                        quantize_kernel._quantize[(triton.cdiv(x.numel(), block),)](
                            x, multipliers, out, x.numel(), 3072, GELU=gelu_too, BLOCK=block, num_warps=warps)
                    name = f"triton {'gelu+' if gelu_too else ''}quantize BLOCK={block} warps={warps}"
                    rows[name] = gpu_us(run)
                    if gelu_too:
                        differ = (out.int() - reference.int()).abs()
                        rows[name + " (values off by 1)"] = int((differ == 1).sum())
                        assert differ.max() <= 1, name
        moved = x.numel() * 3 / 1e6  # MB: fp16 in, int8 out
        print(f"\n== {tokens} tokens x 3072 (fp16 in {x.numel() * 2 / 1e6:.0f} MB, int8 out {x.numel() / 1e6:.0f} MB; "
              f"{moved:.0f} MB moved) ==", flush=True)
        for name, value in rows.items():
            unit = "" if "values off" in name else f" us  ({moved / value:.2f} TB/s)" if "quantize" in name else " us"
            print(f"{value:10.1f}{unit}  {name}" if isinstance(value, float) else f"{value:10d}  {name}", flush=True)
        torch.compiler.reset()


if __name__ == "__main__":
    main()
