"""engine/adapters.py: each family's Linears, fused query/key/value (same outputs, one traced graph), GELU
pairs and attention outputs on tiny random BERT, RoBERTa and DistilBERT models; the generic path of an
architecture without an adapter; a registered adapter; and the accelerate stage end to end on a CPU for
RoBERTa and DistilBERT."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_tiny_model, tiny_qa_model
from engine import adapters
from engine.adapters import (
    GENERIC,
    GeluPair,
    ModelAdapter,
    adapter_for,
    encoder_linears,
    fuse_qkv,
    gelu_pairs,
    register,
    unfused_inputs,
)
from engine.attention import capture_context, use_fused_attention
from engine.common import relative_error
from engine.kernels import Int8PassthroughGelu, Int8ReferenceLinear
from engine.models import load_qa_model
from engine.plan import replace_gelu_activations
from engine.plan import PLAN_FILE, Plan, load_accelerated
from stages import accelerate
from stages.prune import prune

VOCAB = 100
# family -> where its layers are, each layer's Linears, the fused one, its GELU pair (first Linear,
# activation, second Linear) and the Linear fed by attention: what transformers' modules hold.
FAMILIES = {
    "bert": ("bert.encoder.layer",
             ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"],
             "attention.self.qkv", ("intermediate.dense", "intermediate.intermediate_act_fn", "output.dense"),
             "attention.output.dense"),
    "roberta": ("roberta.encoder.layer",
                ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"],
                "attention.self.qkv", ("intermediate.dense", "intermediate.intermediate_act_fn", "output.dense"),
                "attention.output.dense"),
    "distilbert": ("distilbert.transformer.layer",
                   ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1",
                    "ffn.lin2"],
                   "attention.qkv", ("ffn.lin1", "ffn.activation", "ffn.lin2"), "attention.out_lin"),
}


def small(family: str) -> nn.Module:
    return tiny_qa_model(family, VOCAB, hidden=32, layers=2, intermediate=64, heads=2).eval()


def padded_inputs() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def per_layer(family: str, name: str) -> list[str]:
    return [f"{FAMILIES[family][0]}.{i}.{name}" for i in range(2)]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_adapter_lists_its_encoder_linears_and_never_the_head(family):
    model = small(family)
    layer, names, fused, _, _ = FAMILIES[family]
    assert adapter_for(model).name == family
    linears = encoder_linears(model)
    assert list(linears) == [f"{layer}.{i}.{name}" for i in range(2) for name in names]
    every_linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert every_linear - linears.keys() == {"qa_outputs"}
    fuse_qkv(model)
    assert set(encoder_linears(model)) == {full for name in [fused, *names[3:]] for full in per_layer(family, name)}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_query_key_value_give_the_unfused_outputs(family, attention):
    model = small(family)
    model.config._attn_implementation = attention
    layer, names, fused, _, _ = FAMILIES[family]
    module = model.get_submodule(f"{layer}.0.{fused.rpartition('.')[0]}")
    parts = [model.get_submodule(f"{layer}.0.{name}") for name in names[:3]]
    stacked_weight = torch.cat([part.weight for part in parts]).detach().clone()
    stacked_bias = torch.cat([part.bias for part in parts]).detach().clone()
    inputs = padded_inputs()
    with torch.no_grad():
        before = model(**inputs)
        fuse_qkv(model)
        after = model(**inputs)
    assert type(module) is adapter_for(model).qkv.fused and isinstance(module, adapter_for(model).qkv.attention)
    assert torch.equal(module.qkv.weight, stacked_weight) and torch.equal(module.qkv.bias, stacked_bias)
    assert not any(hasattr(module, name.rpartition(".")[2]) for name in names[:3])
    assert torch.allclose(after.start_logits, before.start_logits, atol=1e-6)
    assert torch.allclose(after.end_logits, before.end_logits, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fused_model_traces_as_one_graph_as_its_gpu_capture_compiles_it(family):
    """torch.compile of the fused attention with the engine's sdpa masks, as CudaGraphRunner captures
    it: no graph break (a break costs int8 its quantization fusions)."""
    model = use_fused_attention(fuse_qkv(small(family)))
    input_ids = padded_inputs()["input_ids"]
    with torch.no_grad(), capture_context({"input_ids": input_ids}):
        explained = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    torch.compiler.reset()
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_gelu_pairs_and_the_passthrough_gelu_follow_the_adapter(family):
    model = small(family)
    first, activation, second = FAMILIES[family][3]
    pairs = dict(zip(per_layer(family, first), per_layer(family, second)))
    assert gelu_pairs(model) == pairs
    owners = [model.get_submodule(site.rpartition(".")[0]) for site in per_layer(family, activation)]
    attribute = activation.rpartition(".")[2]
    inputs = padded_inputs()
    with torch.no_grad():
        erf = model(**inputs).start_logits
        replace_gelu_activations(model, per_layer(family, first)[:1], Int8PassthroughGelu)
        tanh = model(**inputs).start_logits
    assert isinstance(getattr(owners[0], attribute), Int8PassthroughGelu)
    assert not isinstance(getattr(owners[1], attribute), Int8PassthroughGelu)
    assert 0 < (tanh - erf).abs().max() < 1e-3  # the forward reads the replaced activation: GELU's tanh form
    assert gelu_pairs(model) == pairs  # still a GELU there
    setattr(owners[1], attribute, nn.ReLU())
    assert gelu_pairs(model) == dict(list(pairs.items())[:1])  # no GELU, nothing to put in an epilogue


@pytest.mark.parametrize("family", FAMILIES)
def test_the_attention_output_projection_is_the_unfused_layer(family):
    model = fuse_qkv(small(family))
    assert unfused_inputs(model, encoder_linears(model)) == set(per_layer(family, FAMILIES[family][4]))


def test_an_architecture_without_an_adapter_takes_the_generic_path_and_says_so_once(capsys, monkeypatch):
    from transformers import ElectraConfig, ElectraForQuestionAnswering

    monkeypatch.setattr(adapters, "_noted", set())
    model = ElectraForQuestionAnswering(ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32,
                                                      num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=64)).eval()
    assert adapter_for(model) is GENERIC
    linears = encoder_linears(model)
    every_linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    # 6 per layer and the embeddings' projection: the whole transformer body, not the head
    assert set(linears) == every_linear - {"qa_outputs"} and len(linears) == 13
    names = list(model.state_dict())
    assert fuse_qkv(model) is model and list(model.state_dict()) == names  # no query/key/value fusion
    assert gelu_pairs(model) == {} and unfused_inputs(model, linears) == set()
    replace_gelu_activations(model, [], Int8PassthroughGelu)
    with pytest.raises(ValueError, match="not the first Linear of a GELU pair of the generic model adapter"):
        replace_gelu_activations(model, ["electra.encoder.layer.0.intermediate.dense"], Int8PassthroughGelu)
    err = capsys.readouterr().err
    assert err == ("ElectraForQuestionAnswering (electra): no model adapter (engine/adapters.py), generic per-Linear "
                   "path: every encoder Linear prunable, no query/key/value or GELU fusion\n")
    # any module, a plain torch one included: without a base_model, its every Linear
    custom = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    assert adapter_for(custom) is GENERIC and list(encoder_linears(custom)) == ["0", "2"]
    assert capsys.readouterr().err.startswith("Sequential: no model adapter")


def test_a_model_built_from_berts_modules_is_bert_to_the_engine():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = nn.ModuleDict({"blocks": nn.ModuleList([BertLayer(config)]), "head": nn.Linear(32, 2)})
    assert adapter_for(model).name == "bert"
    fuse_qkv(model)
    assert list(encoder_linears(model)) == ["blocks.0.attention.self.qkv", "blocks.0.attention.output.dense",
                                            "blocks.0.intermediate.dense", "blocks.0.output.dense"]  # not the head
    assert gelu_pairs(model) == {"blocks.0.intermediate.dense": "blocks.0.output.dense"}


class ToyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix, self.up, self.act, self.down = nn.Linear(8, 8), nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8)

    def forward(self, x):
        x = x + self.mix(x)
        return x + self.down(self.act(self.up(x)))


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers, self.head = nn.ModuleList([ToyLayer(), ToyLayer()]), nn.Linear(8, 2)


def test_a_registered_adapter_is_what_the_engine_reads(monkeypatch):
    monkeypatch.setattr(adapters, "ADAPTERS", dict(adapters.ADAPTERS))
    toy = register(ModelAdapter("toy", (ToyLayer,), gelu=GeluPair("up", "act", "down"), attention_outputs=("mix",)))
    model = ToyModel()
    assert adapter_for(model) is toy
    linears = encoder_linears(model)
    assert list(linears) == [f"layers.{i}.{name}" for i in range(2) for name in ("mix", "up", "down")]
    assert gelu_pairs(model) == {"layers.0.up": "layers.0.down", "layers.1.up": "layers.1.down"}
    assert unfused_inputs(model, linears) == {"layers.0.mix", "layers.1.mix"}
    assert fuse_qkv(model) is model and "layers.0.mix" in dict(model.named_modules())  # no QKVFusion: left alone
    replace_gelu_activations(model, ["layers.1.up"], Int8PassthroughGelu)
    assert isinstance(model.layers[1].act, Int8PassthroughGelu) and isinstance(model.layers[0].act, nn.GELU)
    with pytest.raises(ValueError, match="^layers.0.down: not the first Linear of a GELU pair of the toy model"):
        replace_gelu_activations(model, ["layers.0.down"], Int8PassthroughGelu)


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_accelerate_int8_runs_end_to_end_on_a_cpu(family, params, tmp_path):
    """As tests/test_accelerate.py does for BERT: pruned 2:4, planned int8 on a CPU, loaded with the int8
    math emulated, through the family's adapter (fused query/key/value, its GELU pairs)."""
    _, names, fused, (first, activation, second), _ = FAMILIES[family]
    params["accelerate"]["precision"] = "int8"
    model_dir, pruned, out = make_tiny_model(tmp_path / family, family=family), tmp_path / "pruned", tmp_path / "out"
    pruned.mkdir(), out.mkdir()
    prune(params, model_dir, pruned)
    metrics = accelerate.run(params, pruned, out)
    assert metrics["layers_2of4"] == 0 and metrics["int8"]["layers_checked"] == 8  # 2 layers x (q/k/v, out, 2 FFN)
    plan = Plan.load(out / PLAN_FILE)
    assert plan.adapter == family
    assert set(plan.layers) == {full for name in [fused, *names[3:]] for full in per_layer(family, name)}
    assert plan.gelu_pairs == dict(zip(per_layer(family, first), per_layer(family, second)))
    on_int8 = {name for name, layer in plan.layers.items() if layer.precision == "int8"}
    assert on_int8

    model = load_accelerated(out, torch.device("cpu"), torch.float32)
    assert {name for name, module in model.named_modules() if isinstance(module, Int8ReferenceLinear)} == on_int8
    assert type(model.get_submodule(per_layer(family, fused.rpartition(".")[0])[0])) is adapter_for(model).qkv.fused
    attribute = activation.rpartition(".")[2]
    passthrough = {pair_first for pair_first, site in zip(per_layer(family, first), per_layer(family, activation))
                   if isinstance(getattr(model.get_submodule(site.rpartition(".")[0]), attribute), Int8PassthroughGelu)}
    assert passthrough and passthrough == set(plan.gelu_fusions())  # on a CPU: both int8, the second unsmoothed
    plain = load_qa_model(str(out)).eval()
    input_ids = torch.randint(3, plain.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = relative_error(plain(input_ids=input_ids).start_logits, model(input_ids=input_ids).start_logits)
    assert 0 < error < 0.05
