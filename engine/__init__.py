"""The 2:4 inference engine, apart from the pipeline's stages: it imports no stage module, only the
helpers the stages share (stages.common for errors and JSON, stages.modeling to load a model).

- plan: the typed, versioned plan (Plan, LayerPlan), its summary, and load_accelerated.
- planner: making a plan on a GPU from kernel and whole-model timings.
- kernels: the 2:4 fp16, int8 2:4, int8 reference and fp8 Linears behind one swap_linears call.
- tuning: timing every cuSPARSELt config against cuBLAS in child processes.
- graphs: CUDA graph capture and replay; any input shape padded up to a captured bucket.
- qa: answering questions with a model directory (Python and CLI), the answer span selection.
- attention: fused query/key/value and sdpa masks the fused kernels take.
- calibration: each Linear's inputs, the int8 smoothing and scales, fp8 scales.
- sparsity: 2:4 masks (magnitude, Wanda, SparseGPT) and the 2:4 check.
- runtime: the cuSPARSELt library named by TWOFOUR_CUSPARSELT, loaded here, before any engine module
  imports torch; the version loaded.
- plan_cache: optional (TWOFOUR_PLAN_CACHE=1): 2:4 calls whose cuSPARSELt plans are made once, not
  per call (a small C file, cslt_plans.c, compiled on first use and checked against torch's calls).
"""
from .runtime import load_cusparselt

load_cusparselt()
