"""Probe, as run on the lent H100 (2026-11-26): does int8 x 2:4 beat dense fp16 end to end once the
whole model is compiled, so that quantization fuses into the LayerNorm / GELU before each Linear?

bert-base-cased shape (random weights, encoder Linears 2:4-masked), seq 384, fp16, fused attention.
Per batch size, each variant is timed as one CUDA graph (CudaGraphRunner) per batch:
  dense_graphed         the masked model, eager modules captured
  dense_compiled        torch.compile(dense) captured
  int8dyn_compiled      every encoder Linear an Int8SparseLinear (per-token scales), compiled, captured
  int8static_compiled   every encoder Linear int8 with one static input scale per layer (calibrated on
                        a random batch): the scale folds into the kernel's alpha, the bias into the kernel
and, at batch 64, torch.compile(mode="reduce-overhead") of dense and int8dyn (the benchmark stage's mode).
Run from the repository root: python docs/gpu-runs/2026-11-26-probe-int8-compiled.py [batch sizes]
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_engine import BERT_BASE_CASED, two_four_mask  # noqa: E402
from stages import int8  # noqa: E402
from stages.attention import capture_context, use_fused_attention  # noqa: E402
from stages.modeling import encoder_linears  # noqa: E402
from stages.sparse_engine import CudaGraphRunner, _cslt_tokens_mm, median_ms, swap_linears  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp"))
SEQ = 384
BATCHES = [int(b) for b in sys.argv[1:]] or [64, 256, 16]
# Best int8 alg_id per weight (out, in) and token count, from docs/gpu-runs/2026-11-25-int8-per-token.json.
INT8_ALG = {(768, 768): {6144: 8, 24576: 8, 98304: 13},
            (768, 3072): {6144: 20, 24576: 8, 98304: 0},
            (3072, 768): {6144: 9, 24576: 4, 98304: 9}}


class StaticInt8SparseLinear(nn.Module):
    """int8 2:4 with a static per-tensor input scale: quantize is pointwise, alpha = w_scale * x_scale."""

    def __init__(self, linear: nn.Linear, kernels: dict, input_scale: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        w_scales = int8.absmax_scales(weight)
        self.register_buffer("packed", torch._cslt_compress(int8.quantize(weight, w_scales)))
        self.register_buffer("alpha", (w_scales * input_scale).float())
        self.register_buffer("bias", linear.bias.detach())
        self.inv_scale = 1.0 / input_scale
        self.kernels = kernels
        self.bias_in_kernel = True

    def forward(self, x):
        x2d = x.reshape(-1, self.in_features)
        x_q = (x2d.float() * self.inv_scale).round().clamp(-127, 127).to(torch.int8)
        alg_id = self.kernels[min((b for b in self.kernels if b >= x2d.shape[0]), default=max(self.kernels))]
        if self.bias_in_kernel:
            out = _cslt_tokens_mm(self.packed, x_q, alpha=self.alpha, bias=self.bias, out_dtype=torch.float16,
                                  alg_id=alg_id)
        else:
            out = _cslt_tokens_mm(self.packed, x_q, alpha=self.alpha, out_dtype=torch.float16, alg_id=alg_id) + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def build():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval()
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            linear.weight.mul_(two_four_mask(linear.weight))
    return use_fused_attention(model.half().cuda())


def kernels_for(linear):
    return dict(INT8_ALG[tuple(linear.weight.shape)])


@torch.inference_mode()
def input_scales(model):
    amax = {}
    hooks = [lin.register_forward_hook(lambda m, a, o, n=name: amax.__setitem__(n, a[0].abs().amax().item()))
             for name, lin in encoder_linears(model).items()]
    model(input_ids=torch.randint(0, 28996, (16, SEQ), device="cuda"))
    for h in hooks:
        h.remove()
    return {name: value / 127 for name, value in amax.items()}


def int8_dynamic(dense):
    import copy
    model = copy.deepcopy(dense)
    linears = encoder_linears(model)
    return swap_linears(model, {n: kernels_for(lin) for n, lin in linears.items()}, int8_layers=set(linears))


def int8_static(dense, scales):
    import copy
    model = copy.deepcopy(dense)
    probe = None
    for name, lin in encoder_linears(model).items():
        module = StaticInt8SparseLinear(lin, kernels_for(lin), scales[name])
        model.set_submodule(name, module)
        probe = probe or module
    x = torch.randn(40, probe.in_features, device="cuda", dtype=torch.float16)
    try:
        probe(x)
        torch.cuda.synchronize()
    except Exception as err:  # bias in an int8 -> fp16 kernel may not be supported
        print(f"bias in kernel failed: {str(err).splitlines()[0][:200]}; adding it after", flush=True)
        for m in model.modules():
            if isinstance(m, StaticInt8SparseLinear):
                m.bias_in_kernel = False
    return model


def main():
    import transformers

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "cusparselt": torch.backends.cusparselt.version(),
             "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(),
             "command": " ".join(sys.argv)}
    print(facts, flush=True)
    results = {"facts": facts, "ms": {}, "errors": {}, "compile_s": {}}
    save = lambda: (OUT / "int8-compiled.json").write_text(json.dumps(results, indent=2))  # noqa: E731
    dense = build()
    scales = input_scales(dense)
    models = {"dense": dense, "int8dyn": int8_dynamic(dense), "int8static": int8_static(dense, scales)}

    with torch.inference_mode():  # correctness first, eager, one batch
        ids = torch.randint(0, 28996, (8, SEQ), device="cuda")
        ref = dense(input_ids=ids).start_logits.float()
        for name in ("int8dyn", "int8static"):
            out = models[name](input_ids=ids).start_logits.float()
            results["errors"][name] = ((out - ref).norm() / ref.norm()).item()
    print("relative error vs dense fp16:", results["errors"], flush=True)

    for batch in BATCHES:
        ids = torch.randint(0, 28996, (batch, SEQ), device="cuda")
        row = results["ms"][f"bs{batch}"] = {}
        plans = [("dense_graphed", lambda: CudaGraphRunner(dense, capture_context=capture_context))]
        for name in ("dense", "int8dyn", "int8static"):
            plans.append((f"{name}_compiled", lambda name=name: CudaGraphRunner(
                torch.compile(models[name], dynamic=False), capture_context=capture_context)))
        if batch == 64:
            for name in ("dense", "int8dyn"):
                plans.append((f"{name}_reduce_overhead", lambda name=name: torch.compile(
                    models[name], dynamic=False, mode="reduce-overhead")))
        for label, make in plans:
            runner = None
            try:
                runner = make()
                start = time.perf_counter()
                with torch.inference_mode():
                    runner(input_ids=ids)
                    torch.cuda.synchronize()
                results["compile_s"][f"bs{batch}_{label}"] = round(time.perf_counter() - start, 1)
                with torch.inference_mode():
                    row[label] = round(median_ms(lambda: runner(input_ids=ids), 3, 20, torch.device("cuda")), 3)
            except Exception:
                row[label] = "failed: " + traceback.format_exc().splitlines()[-1][:300]
                traceback.print_exc()
            print(f"bs{batch} {label}: {row[label]}  (first call {results['compile_s'].get(f'bs{batch}_{label}')} s)",
                  flush=True)
            del runner
            torch.compiler.reset()
            torch.cuda.empty_cache()
            save()
    print("\n== summary (ms; speedup vs the faster dense) ==")
    for batch, row in results["ms"].items():
        nums = {k: v for k, v in row.items() if isinstance(v, float)}
        best_dense = min(v for k, v in nums.items() if k.startswith("dense"))
        print(batch, "  ".join(f"{k}={v} (x{best_dense / v:.3f})" for k, v in nums.items()))


if __name__ == "__main__":
    main()
