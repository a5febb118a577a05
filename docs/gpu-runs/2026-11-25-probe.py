"""Device probe: where kernel-timing time goes; int8 2:4 kernel correctness and speed; int8 model."""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
from stages import int8  # noqa: E402
from stages.sparse_engine import (LinearProblem, graph_time_ms, sparse_mm, int8_sparse_mm, median_ms,  # noqa: E402
                                  CudaGraphRunner, swap_linears, Int8SparseLinear)

OUT = os.environ.get("OUT", "/tmp")
LOG = open(f"{OUT}/probe_{sys.argv[1]}.log", "w")


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.write(s + "\n")
    LOG.flush()


def wall(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return r, time.perf_counter() - t


def section_a():
    say("versions", torch.__version__, torch.version.cuda, torch.backends.cusparselt.version(),
        torch.cuda.get_device_name(), os.environ.get("CUDA_MODULE_LOADING"))
    p, s = wall(lambda: LinearProblem(3072, 768, 6144, torch.float16))
    say(f"problem build {s:.3f}s sets={p.sets} count={p.count}")
    d, s = wall(p.dense_ms)
    say(f"dense_ms {d:.4f} wall {s:.3f}s")
    for rep in range(2):
        for alg in range(6):
            ms, s = wall(lambda: p.sparse_ms(alg))
            say(f"rep{rep} alg{alg} {ms:.4f} ms wall {s:.3f}s")
    for alg in (6, 7):
        _, s1 = wall(lambda: sparse_mm(p.packed[0], p.inputs[0], p.bias, alg))
        _, s2 = wall(lambda: sparse_mm(p.packed[0], p.inputs[0], p.bias, alg))
        g = torch.cuda.CUDAGraph()
        t = time.perf_counter()
        with torch.cuda.graph(g):
            for i in range(p.count):
                sparse_mm(p.packed[i % p.sets], p.inputs[i % p.sets], p.bias, alg)
        cap = time.perf_counter() - t
        _, rep = wall(g.replay)
        say(f"alg{alg}: first eager {s1:.3f}s second {s2:.4f}s capture {cap:.3f}s replay {rep:.4f}s")
    # a new shape: is the cost per (shape, alg) or per alg?
    q, _ = wall(lambda: LinearProblem(768, 3072, 6144, torch.float16))
    for alg in range(3):
        ms, s = wall(lambda: q.sparse_ms(alg))
        say(f"768x3072 alg{alg} {ms:.4f} ms wall {s:.3f}s")


class Int8Problem:
    def __init__(self, out_f, in_f, tokens):
        dev = "cuda"
        pattern = torch.tensor([0, 0, 1, 1], device=dev, dtype=torch.int8).tile(out_f, in_f // 4)
        self.sets = 4
        self.wq = [torch.randint(-127, 128, (out_f, in_f), device=dev, dtype=torch.int8) * pattern for _ in range(4)]
        self.packed = [torch._cslt_compress(w) for w in self.wq]
        self.xq = [torch.randint(-127, 128, (tokens, in_f), device=dev, dtype=torch.int8) for _ in range(4)]
        self.x = [torch.randn(tokens, in_f, device=dev, dtype=torch.float16) for _ in range(4)]
        self.alpha = torch.rand(out_f, device=dev) * 1e-3
        self.bias = torch.randn(out_f, device=dev, dtype=torch.float16)

    def check(self, alg):
        out = int8_sparse_mm(self.packed[0], self.xq[0][:-3], self.alpha, alg)
        ref = (self.xq[0][:-3].double() @ self.wq[0].double().t()) * self.alpha.double()
        return ((out.double() - ref).norm() / ref.norm()).item(), out.dtype, tuple(out.shape)

    def mm_ms(self, alg):
        return graph_time_ms(lambda i: int8_sparse_mm(self.packed[i % 4], self.xq[i % 4], self.alpha, alg), 4)

    def full_ms(self, alg, fn):
        return graph_time_ms(lambda i: fn(self.x[i % 4], self.packed[i % 4], alg), 4)


def int8_linear_ops(x, packed, alg, alpha=None, bias=None):
    ts = int8.absmax_scales(x)
    out = int8_sparse_mm(packed, int8.quantize(x, ts), alpha, alg)
    return (out * ts.unsqueeze(-1) + bias).to(x.dtype)


def section_b():
    best = {}
    for out_f, in_f in ((3072, 768), (768, 3072), (768, 768)):
        for tokens in (6144, 24576, 98304):
            t0 = time.perf_counter()
            p = LinearProblem(out_f, in_f, tokens, torch.float16)
            dense = p.dense_ms()
            fp16 = {a: p.sparse_ms(a) for a in range(3)}
            del p
            q = Int8Problem(out_f, in_f, tokens)
            row = {}
            for alg in range(4):
                try:
                    err, dt, shp = q.check(alg)
                    row[alg] = q.mm_ms(alg)
                    if alg == 0:
                        say(f"  int8 check rel err {err:.2e} dtype {dt} shape {shp}")
                except Exception as e:  # noqa: BLE001
                    say(f"  int8 alg{alg} failed: {str(e)[:200]}")
                    break
            ba = min(row, key=row.get)
            ops = lambda x, pk, a: int8_linear_ops(x, pk, a, q.alpha, q.bias)  # noqa: E731
            full = q.full_ms(ba, ops)
            compiled = torch.compile(ops, dynamic=False)
            try:
                full_c = q.full_ms(ba, compiled)
            except Exception as e:  # noqa: BLE001
                full_c = f"failed {str(e)[:150]}"
            bf = min(fp16, key=fp16.get)
            best[f"{out_f}x{in_f}@{tokens}"] = {"dense": dense, "fp16": fp16, "int8": row, "int8_full": full,
                                                 "int8_full_compiled": full_c}
            say(f"{out_f}x{in_f} tokens {tokens}: dense {dense:.4f}  fp16 2:4 best a{bf} {fp16[bf]:.4f} "
                f"(x{dense / fp16[bf]:.2f})  int8 mm best a{ba} {row[ba]:.4f} (x{dense / row[ba]:.2f})  "
                f"int8 linear ops {full:.4f} (x{dense / full:.2f}) compiled {full_c}  [{time.perf_counter() - t0:.1f}s]")
            say("   int8 all:", {a: round(v, 4) for a, v in row.items()}, "fp16 all:", {a: round(v, 4) for a, v in fp16.items()})
            json.dump(best, open(f"{OUT}/int8_kernels.json", "w"), indent=1)
            del q
            torch.cuda.empty_cache()


def section_c():
    from transformers import BertConfig, BertForQuestionAnswering
    sys.path.insert(0, "benchmarks")
    from gpu_engine import BERT_BASE_CASED, two_four_mask
    from stages.modeling import encoder_linears
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval()
    with torch.no_grad():
        for lin in encoder_linears(model).values():
            lin.weight.mul_(two_four_mask(lin.weight))
    model = model.half().cuda()
    batch, seq = int(sys.argv[2]) if len(sys.argv) > 2 else 64, 384
    tokens = batch * seq
    ids = torch.randint(0, 28996, (batch, seq), device="cuda")
    import copy
    res = {}

    def timeit(name, fn):
        t = time.perf_counter()
        with torch.inference_mode():
            ms = median_ms(fn, 3, 20, torch.device("cuda"))
        res[name] = ms
        say(f"bs{batch} {name}: {ms:.3f} ms  [{time.perf_counter() - t:.1f}s incl. warmup/compile]")
        json.dump(res, open(f"{OUT}/model_bs{batch}.json", "w"), indent=1)

    with torch.inference_mode():
        ref = model(input_ids=ids).start_logits.float()
    dense_runner = CudaGraphRunner(model)
    timeit("dense_graphed", lambda: dense_runner(input_ids=ids))
    fp16_alg = {(3072, 768): 1, (768, 3072): 1, (768, 768): 1}
    int8_alg = {(3072, 768): 0, (768, 3072): 0, (768, 768): 0}
    kern = json.load(open(f"{OUT}/int8_kernels.json")) if os.path.exists(f"{OUT}/int8_kernels.json") else {}
    for shape in int8_alg:
        k = kern.get(f"{shape[0]}x{shape[1]}@{tokens}")
        if k:
            int8_alg[shape] = int(min(k["int8"], key=k["int8"].get))
            fp16_alg[shape] = int(min(k["fp16"], key=k["fp16"].get))
    say("algs fp16", fp16_alg, "int8", int8_alg)
    names = encoder_linears(model)
    sp = swap_linears(copy.deepcopy(model), {n: {tokens: fp16_alg[tuple(l.weight.shape)]} for n, l in names.items()})
    runner = CudaGraphRunner(sp)
    timeit("fp16_2of4_graphed", lambda: runner(input_ids=ids))
    q8 = copy.deepcopy(model)
    for n, l in encoder_linears(q8).items():
        parent, _, child = n.rpartition(".")
        setattr(q8.get_submodule(parent), child, Int8SparseLinear(l, {tokens: int8_alg[tuple(l.weight.shape)]}))
    with torch.inference_mode():
        out = q8(input_ids=ids).start_logits.float()
    say(f"int8 eager rel err vs masked fp16: {((out - ref).norm() / ref.norm()).item():.3e}")
    r8 = CudaGraphRunner(q8)
    timeit("int8_graphed", lambda: r8(input_ids=ids))
    del runner, r8
    torch.cuda.empty_cache()
    dc = torch.compile(model, dynamic=False, mode="reduce-overhead")
    timeit("dense_compiled", lambda: dc(input_ids=ids))
    q8c = torch.compile(q8, dynamic=False, mode="reduce-overhead")
    timeit("int8_compiled", lambda: q8c(input_ids=ids))
    with torch.inference_mode():
        out = q8c(input_ids=ids).start_logits.float()
    say(f"int8 compiled rel err vs masked fp16: {((out - ref).norm() / ref.norm()).item():.3e}")
    spc = torch.compile(sp, dynamic=False, mode="reduce-overhead")
    timeit("fp16_2of4_compiled", lambda: spc(input_ids=ids))
    say("RESULT", json.dumps({k: round(v, 3) for k, v in res.items()}))



def section_d():
    import transformers
    say("transformers", transformers.__version__)
    x = torch.randn(6144, 768, device="cuda", dtype=torch.float16)
    pattern = torch.tensor([0, 0, 1, 1], device="cuda", dtype=torch.float16).tile(3072, 192)
    w = torch.randn(3072, 768, device="cuda", dtype=torch.float16) * pattern
    pk = torch._cslt_compress(w)
    bias = torch.randn(3072, device="cuda", dtype=torch.float16)
    ones = torch.ones(3072, device="cuda")
    xt = x.t().contiguous()
    pk8 = torch._cslt_compress((w * 10).to(torch.int8))
    x8 = (x * 10).to(torch.int8)
    variants = {
        "fp16 bias": lambda: torch._cslt_sparse_mm(pk, x.t(), bias=bias, transpose_result=True, alg_id=1),
        "fp16 nobias": lambda: torch._cslt_sparse_mm(pk, x.t(), transpose_result=True, alg_id=1),
        "fp16 nobias notrans": lambda: torch._cslt_sparse_mm(pk, x.t(), alg_id=1),
        "fp16 bias notrans": lambda: torch._cslt_sparse_mm(pk, x.t(), bias=bias, alg_id=1),
        "fp16 bias notrans alg0": lambda: torch._cslt_sparse_mm(pk, x.t(), bias=bias),
        "fp16 bias notrans contiguous-x.t()": lambda: torch._cslt_sparse_mm(pk, xt, bias=bias, alg_id=1),
        "fp16 trans contiguous-x.t()": lambda: torch._cslt_sparse_mm(pk, xt, bias=bias, transpose_result=True, alg_id=1),
        "int8 trans": lambda: torch._cslt_sparse_mm(pk8, x8.t(), alpha=ones, out_dtype=torch.bfloat16, transpose_result=True),
        "int8 notrans": lambda: torch._cslt_sparse_mm(pk8, x8.t(), alpha=ones, out_dtype=torch.bfloat16),
        "int8 trans fp16 out": lambda: torch._cslt_sparse_mm(pk8, x8.t(), alpha=ones, out_dtype=torch.float16, transpose_result=True),
    }
    for name, fn in variants.items():
        times = [wall(fn)[1] for _ in range(4)]
        say(f"host+gpu per call {name}: " + " ".join(f"{t * 1000:.2f}ms" for t in times))
    from transformers import BertConfig, BertForQuestionAnswering
    sys.path.insert(0, "benchmarks")
    from gpu_engine import BERT_BASE_CASED
    model = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval().half().cuda()
    say("attn impl", model.config._attn_implementation)
    ids = torch.randint(0, 28996, (64, 384), device="cuda")
    from torch.profiler import profile, ProfilerActivity
    for label, m in (("graphed", CudaGraphRunner(model)), ("compiled", torch.compile(model, dynamic=False))):
        with torch.inference_mode():
            for _ in range(3):
                m(input_ids=ids)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                m(input_ids=ids) if label == "compiled" else model(input_ids=ids)
                torch.cuda.synchronize()
        say(f"== {label} (profiled eagerly for graphed) ==")
        say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))



def section_e():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import BertConfig, BertForQuestionAnswering
    sys.path.insert(0, "benchmarks")
    from gpu_engine import BERT_BASE_CASED, two_four_mask
    from stages.modeling import encoder_linears
    import copy
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval()
    with torch.no_grad():
        for lin in encoder_linears(model).values():
            lin.weight.mul_(two_four_mask(lin.weight))
    model = model.half().cuda()
    batch = int(sys.argv[2])
    tokens = batch * 384
    ids = torch.randint(0, 28996, (batch, 384), device="cuda")
    backends = {"default": None, "flash": [SDPBackend.FLASH_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
                "cudnn": [SDPBackend.CUDNN_ATTENTION]}
    import contextlib

    def ctx(b):
        return contextlib.nullcontext() if backends[b] is None else sdpa_kernel(backends[b])

    def timeit(name, fn, b):
        t = time.perf_counter()
        with torch.inference_mode(), ctx(b):
            ms = median_ms(fn, 3, 20, torch.device("cuda"))
        say(f"bs{batch} {name} attn={b}: {ms:.3f} ms  [{time.perf_counter() - t:.1f}s]")
        return ms

    timeit("dense eager", lambda: model(input_ids=ids), "default")
    for b in backends:
        try:
            with ctx(b):
                timeit("dense eager", lambda: model(input_ids=ids), b)
                r = CudaGraphRunner(model)
                timeit("dense graphed", lambda: r(input_ids=ids), b)
                del r
        except Exception as e:  # noqa: BLE001
            say(f"{b} failed: {str(e)[:100]}")
    with torch.inference_mode():
        ref = model(input_ids=ids).start_logits.float()
    k = json.load(open(".probe/int8_kernels.json"))
    names = encoder_linears(model)
    alg = lambda key, kind, shape: int(min(k[f"{shape[0]}x{shape[1]}@{tokens}"][kind], key=k[f"{shape[0]}x{shape[1]}@{tokens}"][kind].get))  # noqa
    sp = swap_linears(copy.deepcopy(model), {n: {tokens: alg(0, "fp16", tuple(l.weight.shape))} for n, l in names.items()})
    with torch.inference_mode():
        out = sp(input_ids=ids).start_logits.float()
    say(f"fp16 2:4 eager rel err {((out - ref).norm() / ref.norm()).item():.3e}")
    for b in ("efficient", "cudnn"):
        with ctx(b):
            r = CudaGraphRunner(sp)
            timeit("fp16 2:4 graphed", lambda: r(input_ids=ids), b)
            del r
    q8 = copy.deepcopy(model)
    for n, l in encoder_linears(q8).items():
        parent, _, child = n.rpartition(".")
        setattr(q8.get_submodule(parent), child, Int8SparseLinear(l, {tokens: alg(0, "int8", tuple(l.weight.shape))}))
    with ctx(os.environ.get("ATTN", "efficient")):
        r = CudaGraphRunner(q8)
        timeit("int8 graphed", lambda: r(input_ids=ids), os.environ.get("ATTN", "efficient"))
        del r
    for name, m in (("dense", model), ("fp16 2:4", sp), ("int8", q8)):
        torch.compiler.reset()
        with ctx(os.environ.get("ATTN", "efficient")):
            c = torch.compile(m, dynamic=False, mode="reduce-overhead")
            timeit(f"{name} compiled", lambda: c(input_ids=ids), os.environ.get("ATTN", "efficient"))
            with torch.inference_mode():
                out = c(input_ids=ids).start_logits.float()
            say(f"  {name} compiled rel err {((out - ref).norm() / ref.norm()).item():.3e}")
        del c


if __name__ == "__main__":
    {"A": section_a, "B": section_b, "C": section_c, "D": section_d, "E": section_e}[sys.argv[1]]()
