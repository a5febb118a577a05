"""engine/gelu_epilogue.py on a CPU: the Linear with the GELU epilogue computes GELU's tanh form (what
cuBLASLt's epilogue computes on a GPU), the model keeps every other module, and the compiler keeps
the op whole (inductor would otherwise split it back into a matmul and a GELU kernel)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code

from engine.adapters import gelu_pairs
from engine.common import relative_error
from engine.gelu_epilogue import (
    AppliedGelu,
    GeluEpilogueLinear,
    SparseGeluEpilogueLinear,
    epilogue_error,
    gelu_epilogue_model,
    linear_gelu,
    why_no_sparse_epilogue,
)
from engine.kernels import Kernel, SparseLinear
from engine.models import load_qa_model


def test_the_epilogue_linear_is_gelus_tanh_form_of_the_linear():
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(16, 40)
    x = torch.randn(2, 5, 16, generator=generator) * 3
    with torch.no_grad():
        out = GeluEpilogueLinear(linear)(x)
        tanh = F.gelu(linear(x), approximate="tanh")
        erf = F.gelu(linear(x))
    assert out.shape == (2, 5, 40)
    assert torch.equal(out, tanh)
    assert (out - erf).abs().max() > 1e-5  # not the erf form: the CPU computes what the GPU's epilogue does
    no_bias = nn.Linear(16, 40, bias=False)
    with torch.no_grad():
        assert torch.equal(GeluEpilogueLinear(no_bias)(x), F.gelu(no_bias(x), approximate="tanh"))


def test_the_model_runs_the_epilogue_on_each_gelu_pairs_first_linear_and_nothing_else(tiny_model):
    model = load_qa_model(str(tiny_model)).eval()
    pairs = gelu_pairs(model)
    converted = gelu_epilogue_model(model)
    swapped = {name for name, module in converted.named_modules() if isinstance(module, GeluEpilogueLinear)}
    assert swapped == set(pairs) and len(swapped) == model.config.num_hidden_layers
    assert sum(isinstance(module, AppliedGelu) for module in converted.modules()) == len(pairs)
    assert not any(isinstance(module, (GeluEpilogueLinear, AppliedGelu)) for module in model.modules())  # a copy
    assert gelu_pairs(converted) == pairs  # still a GELU pair each, applied in the Linear
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = relative_error(model(input_ids=input_ids).start_logits, converted(input_ids=input_ids).start_logits)
    assert 0 < error < 1e-3  # GELU once, in its tanh form: twice, or none, would be far off


def test_the_compiled_model_calls_the_op_and_no_gelu_kernel_of_its_own():
    layer = nn.Sequential(GeluEpilogueLinear(nn.Linear(16, 32)), AppliedGelu(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        compiled, (code, *_) = run_and_get_code(torch.compile(layer, dynamic=False), x)
        assert torch.allclose(compiled, layer(x), atol=1e-6)
    assert "torch.ops.twofour.linear_gelu.default" in code
    # GELU is left to the op: no kernel of the compiler's computes it (a plain GELU would be cpp_fused_gelu)
    assert "gelu" not in code.replace("twofour.linear_gelu", "") and ".tanh()" not in code


def test_the_op_has_a_shape_for_the_compiler():
    with torch._subclasses.FakeTensorMode():
        out = linear_gelu(torch.empty(7, 16), torch.empty(32, 16), torch.empty(32))
    assert out.shape == (7, 32)


def planned_reference(weight: torch.Tensor, calls: list):
    """A stand-in for the plan cache's 2:4 call (cuSPARSELt needs a GPU): the math it computes on the
    dense weight, each call's (tokens, alg_id, gelu_scale) recorded."""
    def planned(packed, x2d, bias, alpha, out_dtype, alg_id, gelu_scale):
        calls.append((x2d.shape[0], alg_id, gelu_scale))
        out = F.linear(x2d.float(), weight.float(), bias.float())
        return (F.gelu(out, approximate="tanh") if gelu_scale is not None else out).to(x2d.dtype)
    return planned


def test_the_sparse_epilogue_linear_runs_gelu_in_the_2_4_call_and_after_the_dense_one():
    generator = torch.Generator().manual_seed(2)
    linear = nn.Linear(32, 64).half()
    calls = []
    sparse = SparseLinear(linear, {8: None, 64: None}, planned=planned_reference(linear.weight.detach(), calls))
    sparse.set_kernels({8: None, 64: Kernel("fp16", 5)})  # fp16 2:4 from 9 to 64 tokens
    layer = SparseGeluEpilogueLinear(sparse)
    x = torch.randn(2, 20, 32, generator=generator).half()  # 40 tokens: the fp16 bucket
    with torch.no_grad():
        expected = F.gelu(linear(x).float(), approximate="tanh")
        out = layer(x)
        assert out.shape == (2, 20, 64) and relative_error(expected, out.float()) < 2e-3
        assert calls == [(40, 5, 1.0)]  # the epilogue: GELU scaled by 1, on the 2:4 call
        small = layer(x[:1, :4])  # 4 tokens: the dense bucket, GELU after F.linear
        assert calls == [(40, 5, 1.0)]
        assert relative_error(F.gelu(linear(x[:1, :4]).float(), approximate="tanh"), small.float()) < 2e-3


def test_a_sparse_linear_without_the_plan_cache_or_on_int8_keeps_its_gelu_apart():
    linear = nn.Linear(32, 64)
    no_cache = SparseLinear(linear, {64: None})
    assert "plan cache, which is off" in why_no_sparse_epilogue(no_cache)
    int8 = SparseLinear(linear, {64: None}, planned=planned_reference(linear.weight, []))
    int8.set_kernels({64: Kernel("int8", 1)})
    assert "int8 kernel has its own epilogue" in why_no_sparse_epilogue(int8)
    with pytest.raises(ValueError, match="plan cache, which is off"):
        SparseGeluEpilogueLinear(no_cache)
    assert why_no_sparse_epilogue(SparseLinear(linear, {64: None}, planned=planned_reference(linear.weight, []))) is None


def test_the_model_wraps_sparse_linears_that_can_take_the_epilogue_and_leaves_the_rest_their_gelu(tiny_model):
    model = load_qa_model(str(tiny_model)).eval()
    first, second = list(gelu_pairs(model))[:2]
    weight = model.get_submodule(first).weight.detach()
    model.set_submodule(first, SparseLinear(model.get_submodule(first), {64: None},
                                            planned=planned_reference(weight, [])))
    model.set_submodule(second, SparseLinear(model.get_submodule(second), {64: None}))  # no plan cache
    converted = gelu_epilogue_model(model)
    kinds = {name: type(converted.get_submodule(name)).__name__ for name in gelu_pairs(model)}
    assert kinds[first] == "SparseGeluEpilogueLinear" and kinds[second] == "SparseLinear"
    assert all(kind == "GeluEpilogueLinear" for name, kind in kinds.items() if name not in (first, second))
    # the GELU after the Linear that kept it apart is still there; every other one is a pass-through
    assert sum(isinstance(module, AppliedGelu) for module in converted.modules()) == len(kinds) - 1
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = relative_error(model(input_ids=input_ids).start_logits, converted(input_ids=input_ids).start_logits)
    assert 0 < error < 1e-3


def test_the_epilogue_check_catches_a_library_that_leaves_gelu_out():
    linear = nn.Linear(32, 64).half()
    weight = linear.weight.detach()

    def layer(planned) -> SparseGeluEpilogueLinear:
        sparse = SparseLinear(linear, {16: None, 48: None, 96: None}, planned=planned)
        sparse.set_kernels({16: None, 48: Kernel("fp16", 2), 96: Kernel("fp16", 7)})
        sparse.packed = weight  # where a GPU keeps the packed weight; the stand-ins read `weight`
        return SparseGeluEpilogueLinear(sparse)

    calls = []
    assert epilogue_error(layer(planned_reference(weight, calls))) < 2e-3
    # each fp16 bucket checked once with the epilogue and once without
    assert len(calls) == 4 and set(calls) == {(48, 2, None), (48, 2, 1.0), (96, 7, None), (96, 7, 1.0)}
    ignores_it = planned_reference(weight, [])
    assert epilogue_error(layer(lambda *args: ignores_it(*args[:-1], None))) > 0.1
