"""Probe, as run on the lent H100 (2026-11-26, torch 2.11.0+cu130, triton of that image): the layout of cuSPARSELt's output (transpose_result=True), eager and as inductor sees it,
and what the GELU+quantize between FFN-in and FFN-out costs in each layout."""
import torch, torch.nn.functional as F
from triton.testing import do_bench
from stages.sparse_engine import _cslt_tokens_mm

torch.manual_seed(0)
tokens = 24576
w = (torch.randn(3072, 768, device="cuda") * torch.tensor([0, 0, 1, 1.], device="cuda").tile(3072, 192) * 30).clamp(-127, 127).to(torch.int8)
packed = torch._cslt_compress(w)
xq = torch.randint(-127, 127, (tokens, 768), device="cuda", dtype=torch.int8)
alpha = torch.rand(3072, device="cuda") / 1000
bias = torch.randn(3072, device="cuda", dtype=torch.float16)
m = torch.rand(3072, device="cuda") * 20

def ffn_in(xq):
    return _cslt_tokens_mm(packed, xq, alpha=alpha, bias=bias, out_dtype=torch.float16, alg_id=14)

out = ffn_in(xq)
print("eager int8 out shape", tuple(out.shape), "strides", out.stride(), "contiguous", out.is_contiguous(), flush=True)
wf = (w.half() / 30)
packed16 = torch._cslt_compress(wf)
o16 = _cslt_tokens_mm(packed16, torch.randn(tokens, 768, device="cuda", dtype=torch.float16), bias=bias, alg_id=0)
print("eager fp16 out strides", o16.stride(), flush=True)

from torch._subclasses.fake_tensor import FakeTensorMode
with FakeTensorMode() as mode:
    fx = mode.from_tensor(xq)
    fo = torch._cslt_sparse_mm(mode.from_tensor(packed), fx.t(), alpha=mode.from_tensor(alpha), bias=mode.from_tensor(bias),
                               out_dtype=torch.float16, transpose_result=True, alg_id=14)
    print("fake (meta) int8 out shape", tuple(fo.shape), "strides", fo.stride(), flush=True)

def gelu_q(y):
    return (F.gelu(y).float() * m).round().clamp(-127, 127).to(torch.int8)

both = torch.compile(lambda xq: gelu_q(ffn_in(xq)), dynamic=False)
mm_only = torch.compile(ffn_in, dynamic=False)
gq = torch.compile(gelu_q, dynamic=False)
row_major = out.contiguous()
col_major = out.t().contiguous().t()
print("compiled out strides", mm_only(xq).stride(), flush=True)
for name, fn in [("matmul alone (compiled)", lambda: mm_only(xq)),
                 ("matmul + gelu/quant (compiled together)", lambda: both(xq)),
                 ("gelu/quant on row-major input", lambda: gq(row_major)),
                 ("gelu/quant on column-major input", lambda: gq(col_major))]:
    print(f"{name:<42} {do_bench(fn, warmup=25, rep=200) * 1000:8.1f} us", flush=True)
