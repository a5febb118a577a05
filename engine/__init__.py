"""The 2:4 inference engine, apart from the pipeline built on it: it imports nothing from stages/ or
flows/ (tests/test_layout.py checks its import graph), and the stages import what they share from it.

- accelerate: the one call from a 2:4-pruned model directory to an accelerated one (AccelerateOptions,
  Calibration): planned, checked against the masked dense model, written whole or not at all; also
  `python -m engine.accelerate`.
- config: EngineConfig, how the engine runs (cuSPARSELt library, plan cache, attention), passed to
  load_accelerated and planner.measure and recorded in the plan; the environment gives its defaults.
  A model built under a config keeps it: its Linears hold the 2:4 call it chose (no process-wide switch).
- plan: the typed, versioned plan (Plan, LayerPlan), its summary, and load_accelerated (served as
  CUDA graphs, or eager=True: the kernels timed fastest when called eagerly).
- planner: making a plan on a GPU from kernel and whole-model timings (graphed and eager).
- kernels: the 2:4 fp16, int8 2:4, int8 reference and fp8 dense Linears behind one swap_linears call;
  int8_gelu, the int8 kernel whose epilogue applies GELU and quantizes for the next int8 layer.
- quantize_kernel: the int8 input quantization as one Triton kernel, for int8 layers run eagerly.
- plan_cache: each cuSPARSELt matmul plan made once per shape (a small C library, optional).
- runtime: which cuSPARSELt the process loads (TWOFOUR_CUSPARSELT) and the version it reports.
- tuning: timing cuSPARSELt configs against cuBLAS in child processes.
- timing: every speed comparison's timing: variants interleaved in rounds, the median ratio with its
  bootstrap interval (trusted within ±3%), GPU clocks and power from nvidia-smi.
- int8_dense: the int8 dense Linear (torch._int_mm, the int8 2:4 layers' scaling), an 8-bit dense baseline.
- gelu_epilogue: fp16 Linears with GELU in the matmul's epilogue (dense: cuBLASLt; 2:4: cuSPARSELt), the
  benchmark's fp16 cells given the fusion int8_gelu has.
- fp8_epilogue: fp8 dense Linears through cuBLASLt with GELU and the cast to fp8 in the epilogue (a small C
  library), the benchmark's 8-bit dense cell given the same fusion.
- native: compiling those C libraries against the CUDA library the process loaded.
- graphs: CUDA graph capture and replay; any input shape padded up to a captured bucket.
- qa: answering questions with a model directory (Python and CLI), the answer span selection.
- adapters: what the engine knows of each architecture family (BERT, RoBERTa, DistilBERT): its
  prunable Linears, query/key/value fusion, GELU pairs, the Linears fed by attention; a registry
  keyed by encoder layer class, and the generic per-Linear path for any other architecture.
- attention: the fused query/key/value attention of each family and sdpa masks the fused kernels take.
- calibration: each Linear's inputs, the int8 smoothing and scales, fp8 scales.
- errors: InputError, the engine's error for bad input (the pipeline's StageError is one), and the first line
  of an error's message that one-line errors quote.
- common: atomic JSON writes, the default device, relative_error.
- models: loading a question-answering model and tokenizer, its positions, its encoder's Linears
  (as its adapter says).
- spans: token offsets as character spans of the context.
- sparsity: the 2:4 pattern and the check that a weight follows it (masks are made by pruning/).
"""
