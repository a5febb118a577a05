"""engine/fp8_epilogue.py on a CPU: the op computes what cuBLASLt's fp8 epilogue computes (its float32
reference), the model swaps each GELU pair into one producer writing fp8 and one consumer reading it,
the library's build says in one line what is missing, and cublaslt_fp8.c compiles as C++ with its two
entry points under C names (against a stub of the cublasLt.h declarations it uses: no CUDA here)."""
from __future__ import annotations

import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from engine import fp8_epilogue
from engine.adapters import encoder_linears, gelu_pairs
from engine.calibration import fp8_input_scales
from engine.common import relative_error
from engine.fp8_epilogue import Fp8EpilogueError, Fp8EpilogueLinear, fp8_epilogue_mm, fp8_epilogue_model, reference
from engine.gelu_epilogue import AppliedGelu
from engine.kernels import FP8, Fp8Config, Fp8Linear, named, swap_linears
from engine.models import load_qa_model
from engine.native import compile_library


def fp8_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(24, 16, generator=generator).to(FP8)
    x = torch.randn(5, 16, generator=generator).to(FP8)
    bias = torch.randn(24, generator=generator).half()
    return weight, x, bias, torch.tensor(0.5), torch.tensor(0.25)


def test_the_op_is_the_fp8_matmul_with_bias_then_gelu_then_fp8_at_the_next_scale():
    weight, x, bias, x_scale, w_scale = fp8_inputs()
    linear = (x.float() * 0.5) @ (weight.float() * 0.25).t() + bias.float()
    plain = fp8_epilogue_mm(weight, x, bias, x_scale, w_scale, None, False)
    assert plain.dtype == torch.float16 and plain.shape == (5, 24)
    assert torch.allclose(plain.float(), linear, rtol=1e-3, atol=1e-3)
    fused = fp8_epilogue_mm(weight, x, bias, x_scale, w_scale, torch.tensor(4.0), True)
    assert fused.dtype == FP8
    expected = (F.gelu(linear, approximate="tanh") * 4.0).to(FP8)
    assert torch.equal(fused.float(), expected.float())
    assert not torch.equal(fused.float(), (linear * 4.0).to(FP8).float())  # GELU applied


def fp8_model(tiny_model):
    model = load_qa_model(str(tiny_model)).eval()
    inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))}
    scales = fp8_input_scales(model, encoder_linears(model), inputs)
    return swap_linears(model, lambda name: Fp8Config(scales[name]), named(scales)), inputs


def test_the_model_pairs_a_producer_writing_fp8_with_a_consumer_reading_it(tiny_model):
    model, inputs = fp8_model(tiny_model)
    pairs = gelu_pairs(model)
    converted = fp8_epilogue_model(model)
    assert len(pairs) == model.config.num_hidden_layers
    for first, second in pairs.items():
        producer, consumer = converted.get_submodule(first), converted.get_submodule(second)
        assert isinstance(producer, Fp8EpilogueLinear) and producer.gelu and producer.out_scale_inverse is not None
        assert torch.allclose(producer.out_scale_inverse * model.get_submodule(second).input_scale, torch.tensor(1.0))
        assert isinstance(consumer, Fp8EpilogueLinear) and not consumer.gelu and consumer.out_scale_inverse is None
    assert sum(isinstance(module, AppliedGelu) for module in converted.modules()) == len(pairs)
    assert not any(isinstance(module, Fp8EpilogueLinear) for module in model.modules())  # a copy
    others = [name for name, module in converted.named_modules() if isinstance(module, Fp8Linear)]
    assert len(others) == 4 * len(pairs)  # query, key, value and attention output keep _scaled_mm
    seen = {}
    first = next(iter(pairs))
    converted.get_submodule(first).register_forward_hook(lambda module, args, out: seen.update(dtype=out.dtype))
    with torch.no_grad():
        error = relative_error(model(**inputs).start_logits, converted(**inputs).start_logits)
    assert seen["dtype"] == FP8  # the FFN activation crosses in fp8
    assert 0 < error < 2e-2  # GELU once (tanh form), the same fp8 rounding of the FFN activation


def test_a_pair_that_is_not_fp8_on_both_sides_is_left_as_it_is(tiny_model):
    model, _ = fp8_model(tiny_model)
    first, second = next(iter(gelu_pairs(model).items()))
    model.set_submodule(second, torch.nn.Linear(model.get_submodule(second).in_features,
                                                 model.get_submodule(second).out_features))
    converted = fp8_epilogue_model(model)
    assert isinstance(converted.get_submodule(first), Fp8Linear)
    assert sum(isinstance(module, AppliedGelu) for module in converted.modules()) == len(gelu_pairs(model)) - 1


def test_build_names_what_is_missing_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(fp8_epilogue, "mapped_libraries", lambda name: [])
    with pytest.raises(Fp8EpilogueError, match="^no cuBLASLt loaded in this process"):
        fp8_epilogue.build(tmp_path)
    library = tmp_path / "nvidia" / "cu13" / "lib" / "libcublasLt.so.13"
    monkeypatch.setattr(fp8_epilogue, "mapped_libraries", lambda name: [str(library)])
    monkeypatch.setattr(fp8_epilogue, "include_candidates", lambda: [])
    monkeypatch.delenv(fp8_epilogue.INCLUDE_ENV, raising=False)
    with pytest.raises(Fp8EpilogueError, match=f"^cublasLt.h not found: set {fp8_epilogue.INCLUDE_ENV}") as err:
        fp8_epilogue.build(tmp_path)
    assert "\n" not in str(err.value)


def test_on_a_machine_without_cuda_the_epilogue_is_off_with_the_reason(monkeypatch):
    monkeypatch.setattr(fp8_epilogue, "_state", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fp8_epilogue.enable() == "no CUDA device"
    with pytest.raises(Fp8EpilogueError, match="^the fp8 epilogue is off: no CUDA device$"):
        fp8_epilogue.plans()


# What cublaslt_fp8.c uses of cublasLt.h, declared as cuBLASLt declares it (no values it relies on).
STUB_HEADER = """
#include <stddef.h>
#include <stdint.h>
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_ALLOC_FAILED = 3, CUBLAS_STATUS_NOT_SUPPORTED = 15 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUDA_R_16F = 2, CUDA_R_32F = 0, CUDA_R_8F_E4M3 = 28 } cudaDataType_t;
typedef struct CUstream_st* cudaStream_t;
typedef struct cublasLtContext* cublasLtHandle_t;
typedef struct cublasLtMatmulDescOpaque* cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutOpaque* cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceOpaque* cublasLtMatmulPreference_t;
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
typedef struct { cublasLtMatmulAlgo_t algo; size_t workspaceSize; cublasStatus_t state; float wavesCount;
                 int reserved[4]; } cublasLtMatmulHeuristicResult_t;
typedef enum { CUBLASLT_EPILOGUE_BIAS = 4, CUBLASLT_EPILOGUE_GELU_BIAS = 36 } cublasLtEpilogue_t;
typedef enum { CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB, CUBLASLT_MATMUL_DESC_EPILOGUE,
               CUBLASLT_MATMUL_DESC_BIAS_POINTER, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
               CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER,
               CUBLASLT_MATMUL_DESC_FAST_ACCUM, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE } cublasLtMatmulDescAttributes_t;
typedef enum { CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1 } cublasLtMatmulPreferenceAttributes_t;
cublasStatus_t cublasLtCreate(cublasLtHandle_t*);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t*, cublasComputeType_t, cudaDataType_t);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t, const void*, size_t);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t*, cudaDataType_t, uint64_t, uint64_t, int64_t);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t*);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t);
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int, cublasLtMatmulHeuristicResult_t*, int*);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*, cublasLtMatrixLayout_t,
                              const void*, cublasLtMatrixLayout_t, const void*, const void*, cublasLtMatrixLayout_t,
                              void*, cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t);
"""


def test_the_library_source_compiles_as_cplusplus_with_c_entry_points(tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cublasLt.h").write_text(STUB_HEADER)
    (tmp_path / "empty.c").write_text("")
    stand_in = tmp_path / "libcublasLt.so"  # symbols left undefined in the built library, resolved at load
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(stand_in), str(tmp_path / "empty.c")], check=True)
    built = compile_library(fp8_epilogue.SOURCE, [tmp_path / "include"], str(stand_in), [], Fp8EpilogueError,
                            tmp_path / "cache", cplusplus=True)
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in symbols.stdout.splitlines()}
    assert {"twofour_fp8_plan_init", "twofour_fp8_matmul"} <= exported
    assert "-x c++" in built.with_suffix(".log").read_text()


def test_the_reference_writes_fp16_without_an_output_scale():
    weight, x, bias, x_scale, w_scale = fp8_inputs(1)
    assert reference(weight, x, bias, x_scale, w_scale, None, True).dtype == torch.float16
    assert reference(weight, x, bias, x_scale, w_scale, torch.tensor(2.0), False).dtype == FP8


def test_compiled_the_pair_is_two_calls_of_the_op_and_no_gelu_or_cast_kernel():
    generator = torch.Generator().manual_seed(2)
    first, second = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)
    producer_fp8, consumer_fp8 = Fp8Linear(first, 0.05), Fp8Linear(second, 0.02)
    pair = torch.nn.Sequential(Fp8EpilogueLinear(producer_fp8, gelu=True, out_scale=consumer_fp8.input_scale),
                               AppliedGelu(), Fp8EpilogueLinear(consumer_fp8, gelu=False)).eval()
    x = torch.randn(4, 16, generator=generator)
    with torch.no_grad():
        compiled, (code, *_) = run_and_get_code(torch.compile(pair, dynamic=False), x)
        assert torch.equal(compiled, pair(x))
    assert code.count("torch.ops.twofour.fp8_epilogue_mm.default(") == 2
    # one kernel of the compiler's, the input's quantization for the first op: the FFN activation goes from
    # the first op to the second as it is, no kernel computes GELU or casts it
    assert code.count("async_compile.cpp_pybinding(") == 1 and "cpp_fused__to_copy_clamp_div" in code
