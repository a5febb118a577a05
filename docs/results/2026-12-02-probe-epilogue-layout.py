"""Probe (issue #18): drives 2026-12-02-probe-epilogue-layout.c on the GPU. For each operand layout,
precision and activation: does cuSPARSELt plan it (else the step that fails), do its outputs match
torch (bias and alpha per output channel), and how fast is the best config over a few alg_ids,
against cuBLAS + torch's GELU. From the repository root:

    python docs/results/2026-12-02-probe-epilogue-layout.py --alg-ids 12 --tokens 6144 24576
"""
import argparse
import ctypes
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine import plan_cache  # noqa: E402
from engine.runtime import cusparselt_facts, mapped_cusparselt  # noqa: E402

SOURCE = Path(__file__).with_suffix(".c")
ACTS = {0: "none", 1: "relu", 2: "gelu"}


def build() -> ctypes.CDLL:
    built = plan_cache.build()  # the engine's own library: makes the C shim and finds the headers
    folders = plan_cache.include_candidates()
    includes = [plan_cache.choose_header(folders), plan_cache.first_holding("driver_types.h", folders)]
    includes += [plan_cache.first_holding(h, folders) for h in ("library_types.h", "crt/host_defines.h", "cusparse.h")]
    out = built.with_name("probe-epilogue.so")
    command = ["cc", "-O2", "-shared", "-fPIC", "-Wno-deprecated-declarations", "-o", str(out), str(SOURCE),
               *(f"-I{f}" for f in dict.fromkeys(i for i in includes if i)), f"-I{built.parent / 'c-shim'}",
               mapped_cusparselt()[-1]]
    subprocess.run(command, check=True)
    lib = ctypes.CDLL(str(out))
    lib.probe_plan.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.POINTER(ctypes.c_int)]
    lib.probe_sizes.argtypes = [ctypes.POINTER(ctypes.c_size_t)] * 3
    lib.probe_compress.argtypes = [ctypes.c_void_p] * 4
    lib.probe_run.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int]
    return lib


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--alg-ids", type=int, default=12, help="time alg_ids 0..N-1")
    parser.add_argument("--tokens", type=int, nargs="+", default=[6144, 24576])
    args = parser.parse_args()
    lib = build()
    print("cuSPARSELt", cusparselt_facts(), torch.cuda.get_device_name(), torch.__version__, flush=True)
    m, k = 3072, 768
    gen = torch.Generator(device="cuda").manual_seed(0)
    pattern = torch.tensor([0, 0, 1, 1], device="cuda", dtype=torch.float16).tile(m, k // 4)
    weight = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen) * pattern / 16
    bias = torch.randn(m, device="cuda", dtype=torch.float16, generator=gen)
    alpha = torch.rand(m, device="cuda", generator=gen) / 100 + 0.005
    stream = torch.cuda.current_stream().cuda_stream
    step = ctypes.c_int()
    for n in args.tokens:
        x = torch.randn(n, k, device="cuda", dtype=torch.float16, generator=gen)
        xq, wq = (x * 30).round().clamp(-127, 127).to(torch.int8), (weight * 400).round().clamp(-127, 127).to(torch.int8)
        dense = lambda: F.gelu(F.linear(x, weight, bias))  # noqa: E731
        dense()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            dense()
        end.record()
        end.synchronize()
        print(f"tokens {n}: cuBLAS fp16 + bias, then GELU: {start.elapsed_time(end) / 20:.4f} ms", flush=True)
        for layout in (0, 1):
            for dtype in (0, 2):
                for act in (0, 1, 2):
                    name = f"tokens {n} layout {layout} {'int8' if dtype else 'fp16'} act {ACTS[act]}"
                    status = lib.probe_plan(layout, dtype, act, bias.data_ptr(), m, n, k, 0, ctypes.byref(step))
                    if status:
                        print(f"{name}: plan fails at step {step.value}, status {status}", flush=True)
                        continue
                    sizes = [ctypes.c_size_t() for _ in range(3)]
                    assert lib.probe_sizes(*map(ctypes.byref, sizes)) == 0
                    compressed = torch.empty(sizes[0].value, dtype=torch.uint8, device="cuda")
                    buffer = torch.empty(max(sizes[1].value, 1), dtype=torch.uint8, device="cuda")
                    workspace = torch.empty(max(sizes[2].value, 1), dtype=torch.uint8, device="cuda")
                    w_in, x_in = (wq, xq) if dtype else (weight, x)
                    assert lib.probe_compress(w_in.data_ptr(), compressed.data_ptr(), buffer.data_ptr(), stream) == 0
                    d = torch.empty(n, m, dtype=torch.float16, device="cuda")
                    one = ctypes.c_float(1.0)
                    a_ptr = alpha.data_ptr() if dtype else ctypes.addressof(one)
                    run = lambda iters: lib.probe_run(a_ptr, compressed.data_ptr(), x_in.data_ptr(), d.data_ptr(),  # noqa: E731
                                                      workspace.data_ptr(), stream, iters)
                    status = run(1)
                    torch.cuda.synchronize()
                    acc = x_in.double() @ w_in.double().t()
                    scaled = acc * alpha.double() if dtype else acc
                    expected = scaled + bias.double()
                    act_fn = {0: lambda t: t, 1: F.relu, 2: F.gelu}[act]
                    errors = {how: ((d.double() - act_fn(ref)).norm() / act_fn(ref).norm()).item()
                              for how, ref in (("per_channel", expected),
                                               ("tanh_gelu", F.gelu(expected, approximate="tanh") if act == 2 else expected))}
                    best = None
                    for alg in range(args.alg_ids):
                        lib.probe_done()
                        if lib.probe_plan(layout, dtype, act, bias.data_ptr(), m, n, k, alg, ctypes.byref(step)):
                            break
                        assert lib.probe_sizes(*map(ctypes.byref, sizes)) == 0
                        if sizes[2].value > workspace.numel():
                            workspace = torch.empty(sizes[2].value, dtype=torch.uint8, device="cuda")
                        run(2)
                        start.record()
                        run(20)
                        end.record()
                        end.synchronize()
                        ms = start.elapsed_time(end) / 20
                        best = min(best or (ms, alg), (ms, alg))
                    lib.probe_done()
                    print(f"{name}: status {status}, rel. error {errors}, best {best}", flush=True)
                    del compressed, buffer, workspace, d
        del x, xq
        torch.cuda.empty_cache()


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {time.time() - t0:.1f} s")
