"""engine/dense_gelu.py on a CPU: the Linear with the GELU epilogue computes GELU's tanh form (what
cuBLASLt's epilogue computes on a GPU), the model keeps every other module, and the compiler keeps
the op whole (inductor would otherwise split it back into a matmul and a GELU kernel)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code

from engine.adapters import gelu_pairs
from engine.common import relative_error
from engine.dense_gelu import AppliedGelu, GeluEpilogueLinear, gelu_epilogue_model, linear_gelu
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
