"""engine/plan_cache.py on a CPU: what it says where it cannot run, and its bookkeeping (one plan per
shape, kernel and bias; the arguments each matmul passes) with the compiled C library played by a
Python stand-in that computes what the kernel would, through SparseLinear and the custom op."""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import kernels, native, plan_cache
from engine.config import EngineConfig
from engine.kernels import INT8_GELU, Int8Weights, Kernel, SparseLinear, gelu_quantize, reference_linear
from engine.plan_cache import COMPRESSION_FACTOR, PlanCache, PlanCacheError

# The nvidia-cusparselt wheel's include/ where a developer unpacked it (the compile test needs it).
REAL_HEADER = Path(os.environ.get(plan_cache.INCLUDE_ENV, "/nonexistent"))


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(plan_cache, "_state", {})


def test_without_cuda_it_stays_off_and_says_why_once(fresh_state, capsys):
    assert plan_cache.planned_matmul(EngineConfig(plan_cache=False)) is None
    assert capsys.readouterr().err == "" and plan_cache._state == {}  # not asked for: nothing tried
    assert plan_cache.planned_matmul(EngineConfig(plan_cache=True)) is None
    assert plan_cache.planned_matmul(EngineConfig(plan_cache=True)) is None
    assert capsys.readouterr().err == "plan cache asked for but off (no CUDA device); 2:4 calls plan on every call\n"


def test_each_model_keeps_the_routing_its_config_asked_for(fresh_state, monkeypatch):
    """The plan cache is a property of the model built, not of the process: with the library loaded,
    a config without it still gets torch's call, and one with it the planned call."""
    monkeypatch.setattr(plan_cache, "_enable", lambda: "")
    assert plan_cache.planned_matmul(EngineConfig(plan_cache=True)) is plan_cache.planned_mm
    assert plan_cache.planned_matmul(EngineConfig(plan_cache=False)) is None
    monkeypatch.setattr(plan_cache, "_state", {})
    monkeypatch.setattr(plan_cache, "_enable", lambda: "cusparseLt.h not found")
    assert plan_cache.planned_matmul(EngineConfig(plan_cache=True)) is None


def test_build_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(plan_cache, "mapped_cusparselt", lambda: [])
    with pytest.raises(PlanCacheError, match="no cuSPARSELt loaded in this process"):
        plan_cache.build(tmp_path)
    monkeypatch.setattr(plan_cache, "mapped_cusparselt", lambda: ["/opt/lib/libcusparseLt.so.0"])
    monkeypatch.setattr(plan_cache, "include_candidates", lambda: [tmp_path])
    with pytest.raises(PlanCacheError, match=f"cusparseLt.h not found: set {plan_cache.INCLUDE_ENV}"):
        plan_cache.build(tmp_path)


@pytest.mark.skipif(not (REAL_HEADER / "cusparseLt.h").is_file(),
                    reason=f"needs the nvidia-cusparselt wheel's header ({plan_cache.INCLUDE_ENV})")
def test_the_c_file_compiles_against_the_real_header_once(monkeypatch, tmp_path):
    cuda_stub = tmp_path / "cuda"
    cuda_stub.mkdir()
    (cuda_stub / "driver_types.h").write_text("typedef struct CUstream_st* cudaStream_t;\n")
    (cuda_stub / "library_types.h").write_text(
        "typedef enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_8I = 3, CUDA_R_16BF = 14 } cudaDataType;\n"
        "typedef enum libraryPropertyType_t { MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL } libraryPropertyType;\n")
    library = tmp_path / "libcusparseLt.so.0"
    (tmp_path / "empty.c").write_text("int nothing;\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(tmp_path / "empty.c")], check=True)
    monkeypatch.setattr(plan_cache, "mapped_cusparselt", lambda: [str(library)])
    monkeypatch.setattr(plan_cache, "include_candidates", lambda: [REAL_HEADER, cuda_stub])
    built = plan_cache.build(tmp_path / "cache")
    assert built.is_file() and plan_cache.build(tmp_path / "cache") == built  # reused, not rebuilt
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == sorted(
        [built.name, built.with_suffix(".log").name, "c-shim"])  # no partial file left
    assert "exit status 0" in built.with_suffix(".log").read_text()


GCC_STDERR = """\
In file included from /work/engine/cslt_plans.c:10:
/site/nvidia/cusparselt/include/cusparseLt.h:13:10: fatal error: cstddef: No such file or directory
   13 | #include <cstddef>         // size_t
      |          ^~~~~~~
compilation terminated.
"""


def test_a_compile_failure_is_one_line_with_the_first_error_and_the_whole_log_is_kept(monkeypatch, tmp_path):
    (tmp_path / "cusparseLt.h").write_text("#define CUSPARSELT_VER_MAJOR 0\n")
    (tmp_path / "driver_types.h").write_text("")
    compiler = tmp_path / "fake-cc"
    compiler.write_text(f"#!/bin/sh\ncat >&2 <<'END'\n{GCC_STDERR}END\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setattr(plan_cache, "mapped_cusparselt", lambda: [str(tmp_path / "libcusparseLt.so.0")])
    monkeypatch.setattr(plan_cache, "include_candidates", lambda: [tmp_path])
    with pytest.raises(PlanCacheError) as raised:
        plan_cache.build(tmp_path / "cache")
    message = str(raised.value)
    log = next((tmp_path / "cache").glob("cslt_plans-*.log"))
    assert message == (f"building cslt_plans.c failed: /site/nvidia/cusparselt/include/cusparseLt.h:13:10: fatal error: "
                       f"cstddef: No such file or directory (whole output: {log})")
    assert GCC_STDERR in log.read_text() and str(compiler) in log.read_text() and "exit status 1" in log.read_text()
    assert not list((tmp_path / "cache").glob("*.tmp")) and not list((tmp_path / "cache").glob("*.so"))


@pytest.mark.parametrize("stderr, cause", [
    ("x.c: In function 'f':\nx.c:3:5: warning: unused variable 'y'\nx.c:4:1: error: expected ';' before '}' token\n"
     "    4 | }\n      | ^\n", "x.c:4:1: error: expected ';' before '}' token"),
    ("ld: cannot find -lfoo\ncollect2: error: ld returned 1 exit status\n", "collect2: error: ld returned 1 exit status"),
    ("   13 | #include <x>\n      |          ^~~~~~~\nsomething odd\n", "something odd"),
    ("", "no message"),
])
def test_compile_error_takes_the_first_error_line_not_the_caret(stderr, cause):
    assert native.compile_error(stderr) == cause


def test_the_header_matching_the_loaded_library_is_preferred(monkeypatch, tmp_path):
    folders = []
    for name, minor in (("old", 8), ("new", 10)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cusparseLt.h").write_text(
            f"#define CUSPARSELT_VER_MAJOR 0\n#define CUSPARSELT_VER_MINOR {minor}\n#define CUSPARSELT_VER_PATCH 0\n")
        folders.append(tmp_path / name)
    assert plan_cache.header_version(folders[1]) == "0.10.0"
    monkeypatch.setattr(plan_cache, "loaded_version", lambda: "0.10.0")
    assert plan_cache.choose_header([tmp_path, *folders]) == folders[1]
    monkeypatch.setattr(plan_cache, "loaded_version", lambda: None)  # cannot say: the first found
    assert plan_cache.choose_header([tmp_path, *folders]) == folders[0]


def test_plan_cache_headers_are_never_searched_under_the_current_directory(monkeypatch, tmp_path):
    """nvidia/*/include under the current directory (on sys.path as "") is no header folder; the
    wheels installed beside the loaded cuSPARSELt, the toolkit and the explicit setting are."""
    import sys

    planted = tmp_path / "work" / "nvidia" / "evil" / "include"
    planted.mkdir(parents=True)
    (planted / "cusparseLt.h").write_text("#error planted\n")
    site = tmp_path / "site-packages" / "nvidia"
    for wheel in ("cusparselt", "cuda_runtime"):
        (site / wheel / "include").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(sys, "path", ["", str(tmp_path / "work"), *sys.path])
    monkeypatch.setattr(plan_cache, "mapped_cusparselt", lambda: [str(site / "cusparselt" / "lib" / "libcusparseLt.so.0")])
    monkeypatch.setenv(plan_cache.INCLUDE_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    found = plan_cache.include_candidates()
    assert all(not str(folder.resolve()).startswith(str(tmp_path / "work")) for folder in found), found
    assert {tmp_path / "explicit", tmp_path / "toolkit" / "include", site / "cusparselt" / "include",
            site / "cuda_runtime" / "include"} <= set(found)


def memory(pointer: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """The `count` values at a CPU address, as a tensor sharing that memory."""
    ctype = {torch.float32: ctypes.c_float, torch.int8: ctypes.c_int8}[dtype]
    return torch.frombuffer((ctype * count).from_address(pointer), dtype=dtype)


class StandIn:
    """The compiled cslt_plans.c, played in Python on a CPU (float32 standing in for fp16): plans are
    recorded, a matmul reads its operands at the pointers it is given and writes what the kernel
    computes, from the uncompressed weights the fake torch._cslt_compress remembers."""

    DTYPES = {0: torch.float32, 2: torch.int8}

    def __init__(self):
        self.weights: dict[int, torch.Tensor] = {}  # packed data_ptr -> the weight it packs
        self.plans: list[tuple] = []

        def plan_init(m, n, k, dtype, out_dtype, alg_id, bias, alpha_vector, gelu_scaling, entry, workspace):
            scaling = None if gelu_scaling is None else gelu_scaling._obj.value
            self.plans.append((m, n, k, dtype, out_dtype, alg_id, bias, alpha_vector, scaling))
            entry._obj.value, workspace._obj.value = len(self.plans), 64
            return 0

        def matmul(entry, alpha, a, x, d, workspace, stream):
            m, n, k, dtype, out_dtype, _, bias, alpha_vector, scaling = self.plans[entry.value - 1]
            out = memory(x, n * k, self.DTYPES[dtype]).reshape(n, k).double() @ self.weights[a].double().t()
            if alpha_vector:
                out = out * memory(alpha, m, torch.float32).double()
            if bias:
                out = out + memory(bias, m, torch.float32).double()
            if scaling is not None:  # the GELU epilogue (tanh form); int8 out saturates
                out = (torch.nn.functional.gelu(out, approximate="tanh") * scaling).round().clamp(-128, 127)
            memory(d, n * m, self.DTYPES[out_dtype]).copy_(out.flatten())
            return 0

        self.twofour_plan_init, self.twofour_matmul = plan_init, matmul

    def compress(self, weight: torch.Tensor) -> torch.Tensor:
        packed = weight.new_empty(weight.numel() * COMPRESSION_FACTOR[weight.dtype] // 16)
        self.weights[packed.data_ptr()] = weight.clone()
        return packed


@pytest.fixture
def stand_in(fresh_state, monkeypatch) -> StandIn:
    """The engine's 2:4 calls routed through a PlanCache over StandIn (float32 standing in for fp16)."""
    library = StandIn()
    monkeypatch.setattr(torch, "_cslt_compress", library.compress)
    monkeypatch.setattr(plan_cache, "current_stream", lambda device_index: 0)
    monkeypatch.setitem(kernels.TOKEN_ALIGNMENT, torch.float32, 4)
    monkeypatch.setitem(COMPRESSION_FACTOR, torch.float32, 9)
    monkeypatch.setitem(plan_cache.DTYPE_CODES, torch.float32, 0)
    plan_cache._state["cache"] = PlanCache(library, str)
    return library


def test_each_shape_kernel_and_bias_is_planned_once_through_the_linear(stand_in):
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    int8 = Int8Weights(linear, torch.rand(32) + 0.5, 0.05)
    module = SparseLinear(linear, {16: Kernel("fp16", 5), 64: Kernel("int8", 2)}, int8=int8,
                          planned=plan_cache.planned_mm)
    with torch.inference_mode():
        for tokens in (10, 10, 12, 40, 40):
            x = torch.randn(tokens, 32)
            expected = linear(x) if tokens <= 16 else reference_linear(x, int8, linear.bias.detach())
            got = module(x)
            assert got.shape == (tokens, 16) and torch.allclose(got, expected, atol=1e-4)
    bias = module.bias.data_ptr()
    assert stand_in.plans == [(16, 12, 32, 0, 0, 5, bias, 0, None),  # 10 and 12 tokens pad to 12: one plan
                              (16, 48, 32, 2, 0, 2, bias, 1, None)]  # int8: 40 tokens pad to 48, alpha per row


def test_an_int8_gelu_layer_hands_the_next_int8_layer_its_quantized_input(stand_in):
    """Through the plan cache, the first layer's kernel applies GELU and the second layer's input scale
    (its epilogue, int8 out, float32 bias); the second reads that int8 tensor as it is. Together they
    compute what the reference math does with a GELU and a quantization pass between them."""
    torch.manual_seed(0)
    first_linear, second_linear = nn.Linear(32, 64), nn.Linear(64, 16)
    first_int8 = Int8Weights(first_linear, torch.rand(32) + 0.5, 0.05)
    second_int8 = Int8Weights(second_linear, torch.ones(64), 0.02)
    first = SparseLinear(first_linear, {64: Kernel(INT8_GELU, 3)}, int8=first_int8, gelu_scale=1 / 0.02,
                         planned=plan_cache.planned_mm)
    second = SparseLinear(second_linear, {64: Kernel("int8", 1)}, int8=second_int8, planned=plan_cache.planned_mm)
    x = torch.randn(40, 32)
    with torch.inference_mode():
        hidden = first(x)
        out = second(hidden)
    expected_hidden = gelu_quantize(reference_linear(x, first_int8, first_linear.bias.detach()), 1 / 0.02)
    assert hidden.dtype == torch.int8 and torch.equal(hidden, expected_hidden)
    expected = reference_linear(torch.nn.functional.gelu(reference_linear(x, first_int8, first_linear.bias.detach()),
                                                         approximate="tanh"), second_int8, second_linear.bias.detach())
    assert torch.allclose(out, expected, atol=1e-4)
    assert stand_in.plans[0][4] == 2 and stand_in.plans[0][8] == pytest.approx(50.0)  # int8 out, scale 1/0.02
    assert stand_in.plans[0][6] == first.bias_float32.data_ptr()  # the bias kept in float32, one plan


def test_without_the_plan_cache_an_int8_gelu_layer_computes_the_same_in_two_steps(monkeypatch):
    calls = []

    def int8_call(packed, x_q, alpha, bias, alg_id, planned=None):
        calls.append(alg_id)
        return torch.full((x_q.shape[0], 3), 0.5)

    monkeypatch.setattr(kernels, "int8_sparse_mm", int8_call)
    out = kernels.int8_gelu_sparse_mm(None, torch.zeros(5, 4, dtype=torch.int8), None, None, None, 7, 10.0)
    gelu_tanh = 0.5 * 0.5 * (1 + torch.tanh(torch.tensor(0.7978845608 * (0.5 + 0.044715 * 0.5 ** 3)))).item()
    assert gelu_tanh == pytest.approx(0.3457, abs=1e-4)  # times 10: 3.457, rounds to 3
    assert calls == [7] and out.dtype == torch.int8 and torch.equal(out, torch.full((5, 3), 3, dtype=torch.int8))


def test_eager_calls_skip_the_custom_op_and_compiled_graphs_keep_it(fresh_state, monkeypatch):
    """Eagerly, planned_mm calls PlanCache.matmul itself (the op's dispatch costs host time); traced by
    torch.compile it is the custom op, which the graph keeps whole."""
    calls = []
    plan_cache._state["cache"] = type("Cache", (), {"matmul": lambda self, *args: calls.append(args) or args[1] * 2})()
    x = torch.ones(4, 8)
    with monkeypatch.context() as patched:
        patched.setattr(plan_cache, "planned_cslt_mm", lambda *args: pytest.fail("eager call went through the op"))
        assert torch.equal(plan_cache.planned_mm(None, x, None, None, None, 3), x * 2)
    assert len(calls) == 1 and calls[0][5] == 3

    graphs = []

    def keep_graph(graph_module, example_inputs):
        graphs.append(str(graph_module.graph))
        return graph_module.forward

    packed = torch.zeros(8 * 8 * 9 // 16)
    monkeypatch.setitem(COMPRESSION_FACTOR, torch.float32, 9)
    compiled = torch.compile(lambda x: plan_cache.planned_mm(packed, x + 1, None, None, None, 3), backend=keep_graph)
    assert torch.equal(compiled(x), (x + 1) * 2)
    assert len(graphs) == 1 and "twofour.planned_cslt_mm" in graphs[0] and len(calls) == 2
    torch._dynamo.reset()


def test_planned_results_have_the_kernels_shape_for_torch_compile():
    with torch._subclasses.fake_tensor.FakeTensorMode():  # what torch.compile traces with
        packed, x = torch.empty(3072 * 768 * 9 // 16, dtype=torch.float16), torch.empty(100, 768, dtype=torch.float16)
        out = torch.ops.twofour.planned_cslt_mm(packed, x, None, None, None, 7)
        int8_out = torch.ops.twofour.planned_cslt_mm(torch.empty(3072 * 768 * 10 // 16, dtype=torch.int8),
                                                     x.to(torch.int8), None, None, torch.float16, 7)
    assert out.shape == (100, 3072) and out.dtype == torch.float16
    assert int8_out.shape == (100, 3072) and int8_out.dtype == torch.float16


def test_a_cusparselt_error_is_one_line_with_the_librarys_words():
    def failing(*args):
        return 7

    library = type("Library", (), {})()
    library.twofour_plan_init, library.twofour_matmul = failing, failing
    cache = PlanCache(library, lambda status: "CUSPARSE_STATUS_NOT_SUPPORTED")
    with pytest.raises(RuntimeError, match=r"^cuSPARSELt plan: CUSPARSE_STATUS_NOT_SUPPORTED \(status 7\)$"):
        cache.plan((64, 32, 128, torch.float16, torch.float16, 0), None, False)
