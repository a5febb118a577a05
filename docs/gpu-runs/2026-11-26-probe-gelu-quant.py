"""Probe, as run on the lent H100 (2026-11-26, torch 2.11.0+cu130, triton of that image): can a hand-written Triton GELU+int8-quantize kernel beat inductor's fused one?
Times at bert-base FFN shapes (tokens x 3072), fp16 in, int8 out, per-column multipliers."""
import os, glob, shutil
from pathlib import Path
import torch, torch.nn.functional as F
import triton, triton.language as tl
from triton.testing import do_bench

OUT = Path(os.environ.get("OUT", "/tmp"))

@triton.jit
def gelu_quant_kernel(x_ptr, m_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + cols, mask=mask)
    g = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    q = tl.extra.cuda.libdevice.rint(g * m)
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(out_ptr + row * n_cols + cols, q.to(tl.int8), mask=mask)

@triton.jit
def gelu_quant_flat(x_ptr, m_ptr, out_ptr, n, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs % n_cols, mask=mask)
    g = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    q = tl.extra.cuda.libdevice.rint(g * m)
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(out_ptr + offs, q.to(tl.int8), mask=mask)

def triton_rows(x, m, block):
    out = torch.empty_like(x, dtype=torch.int8)
    gelu_quant_kernel[(x.shape[0], triton.cdiv(x.shape[1], block))](x, m, out, x.shape[1], BLOCK=block)
    return out

def triton_flat(x, m, block):
    out = torch.empty_like(x, dtype=torch.int8)
    gelu_quant_flat[(triton.cdiv(x.numel(), block),)](x, m, out, x.numel(), x.shape[1], BLOCK=block)
    return out

def eager_ref(x, m):
    return (F.gelu(x).float() * m).round().clamp(-127, 127).to(torch.int8)

@torch.compile(dynamic=False)
def inductor_gelu_quant(x, m):
    return (F.gelu(x).float() * m).round().clamp(-127, 127).to(torch.int8)

@torch.compile(dynamic=False)
def inductor_gelu(x):
    return F.gelu(x)

@torch.compile(dynamic=False)
def inductor_copy(x):
    return x * 2

for tokens in (6144, 24576, 98304):
    x = torch.randn(tokens, 3072, device="cuda", dtype=torch.float16) * 3
    m = torch.rand(3072, device="cuda") * 20 + 1
    ref = eager_ref(x, m)
    rows = {}
    for name, fn in [("inductor gelu+quant", lambda: inductor_gelu_quant(x, m)),
                     ("inductor gelu only (fp16 out)", lambda: inductor_gelu(x)),
                     ("inductor x*2 (fp16 copy)", lambda: inductor_copy(x)),
                     ("triton rows 1024", lambda: triton_rows(x, m, 1024)),
                     ("triton rows 3072->4096", lambda: triton_rows(x, m, 4096)),
                     ("triton flat 1024", lambda: triton_flat(x, m, 1024)),
                     ("triton flat 4096", lambda: triton_flat(x, m, 4096))]:
        out = fn()
        diff = (out.int() - ref.int()).abs().max().item() if out.dtype == torch.int8 else None
        ms = do_bench(fn, warmup=25, rep=200)
        nbytes = x.numel() * 2 + out.numel() * out.element_size()
        print(f"tokens {tokens:>6} {name:<32} {ms*1000:8.1f} us  {nbytes/ms/1e9:6.2f} TB/s  max|diff| {diff}", flush=True)

for f in glob.glob("/tmp/torchinductor_*/**/*.py", recursive=True):
    text = Path(f).read_text()
    if "gelu" in text.lower() and "int8" in text and "triton_heuristics" in text:
        shutil.copy(f, OUT / ("inductor_" + Path(f).name)); break
