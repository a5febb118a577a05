"""Model adapters: what the engine knows of an architecture family, in one description per family,
so that no other module reads a family's class or attribute names.

torchao style: one description (ModelAdapter), a filter (which Linears it covers) and a registry of
them keyed by module class (register): a model gets the adapter of the first encoder layer class
it holds, so a model built from BERT's modules is BERT to the engine whatever its model_type. An
adapter says, with names relative to one encoder layer:
- which Linears are prunable (those inside its encoder layers; never the embeddings or the QA head);
- how query, key and value fuse into one Linear (QKVFusion: the attention class, its three Linears,
  the fused class that computes the same outputs with one `qkv` Linear, engine/attention.py);
- the GELU pair (GeluPair: the Linear before the activation, the activation's attribute, the Linear
  after it), where the int8_gelu kernel may join the two (kernels.py's module docstring);
- which Linears take their input straight from the attention kernel (attention_outputs): the others
  read a residual + LayerNorm or the GELU, into which torch.compile fuses their int8 quantization.

An architecture without an adapter takes the generic per-Linear path (GENERIC): every nn.Linear of
its transformer body prunable, no query/key/value or GELU fusion, nothing known of its inputs; one
line on stderr says so, once per architecture and process.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertLayer, BertSelfAttention
from transformers.models.distilbert.modeling_distilbert import DistilBertSelfAttention, TransformerBlock
from transformers.models.roberta.modeling_roberta import RobertaLayer, RobertaSelfAttention

from .attention import FusedQKVDistilBertSelfAttention, FusedQKVRobertaSelfAttention, FusedQKVSelfAttention


@dataclass(frozen=True)
class QKVFusion:
    attention: type[nn.Module]  # the self-attention class (exactly: a subclass may compute otherwise)
    names: tuple[str, str, str]  # its query, key and value Linears, stacked in this order
    fused: type[nn.Module]  # the class it becomes, with one `qkv` Linear: the same outputs


@dataclass(frozen=True)
class GeluPair:
    first: str  # the Linear whose output goes through the activation
    activation: str  # the activation: an attribute (a module or a function) of the module named before its last dot
    second: str  # the Linear that reads the activation's output


@dataclass(frozen=True)
class ModelAdapter:
    """One architecture family's facts for the engine; every name is relative to one encoder layer."""

    name: str
    layers: tuple[type[nn.Module], ...]  # the encoder layer classes; none: the generic path
    qkv: QKVFusion | None = None
    gelu: GeluPair | None = None
    attention_outputs: tuple[str, ...] = ()  # Linears fed by the attention kernel

    def named_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The model's encoder layers (of self.layers' classes) by full name, in model order."""
        return {name: module for name, module in model.named_modules() if type(module) in self.layers}

    def linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """The prunable Linears by full name: those inside the encoder layers, or on the generic path
        every nn.Linear inside the model's transformer body (base_model), which the task head is not."""
        if self.layers:
            scopes = self.named_layers(model)
        else:
            base = getattr(model, "base_model", model)
            prefix = getattr(model, "base_model_prefix", "")
            scopes = {prefix if base is not model and prefix else "": base}
        return {_join(scope, name): module for scope, layer in scopes.items()
                for name, module in layer.named_modules() if isinstance(module, nn.Linear)}


GENERIC = ModelAdapter("generic", layers=())
BERT = ModelAdapter(
    "bert", (BertLayer,),
    qkv=QKVFusion(BertSelfAttention, ("query", "key", "value"), FusedQKVSelfAttention),
    gelu=GeluPair("intermediate.dense", "intermediate.intermediate_act_fn", "output.dense"),
    attention_outputs=("attention.output.dense",),
)
ROBERTA = ModelAdapter(
    "roberta", (RobertaLayer,),
    qkv=QKVFusion(RobertaSelfAttention, ("query", "key", "value"), FusedQKVRobertaSelfAttention),
    gelu=BERT.gelu,
    attention_outputs=BERT.attention_outputs,
)
DISTILBERT = ModelAdapter(
    "distilbert", (TransformerBlock,),
    qkv=QKVFusion(DistilBertSelfAttention, ("q_lin", "k_lin", "v_lin"), FusedQKVDistilBertSelfAttention),
    gelu=GeluPair("ffn.lin1", "ffn.activation", "ffn.lin2"),
    attention_outputs=("attention.out_lin",),
)

ADAPTERS: dict[type[nn.Module], ModelAdapter] = {}  # encoder layer class -> its family's adapter
_noted: set[str] = set()  # architectures already told they take the generic path


def register(adapter: ModelAdapter) -> ModelAdapter:
    """Make `adapter` the one for models holding any of its layer classes (replacing an earlier one)."""
    for layer in adapter.layers:
        ADAPTERS[layer] = adapter
    return adapter


for _family in (BERT, ROBERTA, DISTILBERT):
    register(_family)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of the first registered encoder layer class in the model, else GENERIC (with one
    line on stderr, once per architecture)."""
    for module in model.modules():
        if (adapter := ADAPTERS.get(type(module))) is not None:
            return adapter
    architecture = type(model).__name__
    if architecture not in _noted:
        _noted.add(architecture)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        print(f"{architecture}{f' ({model_type})' if model_type else ''}: no model adapter (engine/adapters.py), "
              "generic per-Linear path: every encoder Linear prunable, no query/key/value or GELU fusion",
              file=sys.stderr)
    return GENERIC


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def fuse_qkv(model: nn.Module) -> nn.Module:
    """Give every self-attention module of the adapter's QKVFusion one `qkv` Linear, the query,
    key and value weights stacked in that order, in place of the three (in place; same outputs).
    Attention modules of other classes, or whose three are not biased nn.Linears, are left as they are."""
    fusion = adapter_for(model).qkv
    if fusion is None:
        return model
    for module in model.modules():
        if type(module) is not fusion.attention:
            continue
        parts = [getattr(module, name) for name in fusion.names]
        if any(type(part) is not nn.Linear or part.bias is None for part in parts):
            continue
        weight = torch.cat([part.weight.detach() for part in parts])
        qkv = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(weight)
            qkv.bias.copy_(torch.cat([part.bias.detach() for part in parts]))
        for name in fusion.names:
            delattr(module, name)
        module.qkv = qkv
        module.__class__ = fusion.fused
    return model


def _is_gelu(activation) -> bool:
    """GELU (erf form), or what a plan put in its place (kernels.Int8PassthroughGelu says so of itself)."""
    probe = torch.linspace(-4, 4, 41)
    return getattr(activation, "replaces_gelu", False) or torch.allclose(activation(probe), F.gelu(probe))


def activation_site(model: nn.Module, layer: str, pair: GeluPair) -> tuple[nn.Module, str]:
    """(the module holding a layer's activation, its attribute name)."""
    owner, _, attribute = _join(layer, pair.activation).rpartition(".")
    return model.get_submodule(owner), attribute


def gelu_pairs(model: nn.Module) -> dict[str, str]:
    """Per Linear whose output goes through GELU, the Linear that reads it (the adapter's GeluPair in
    each encoder layer whose activation is GELU); {} on the generic path."""
    adapter = adapter_for(model)
    pair = adapter.gelu
    if pair is None:
        return {}
    pairs = {}
    for layer in adapter.named_layers(model):
        try:
            model.get_submodule(_join(layer, pair.first))
            model.get_submodule(_join(layer, pair.second))
            owner, attribute = activation_site(model, layer, pair)
        except AttributeError:
            continue
        activation = getattr(owner, attribute, None)
        if activation is not None and _is_gelu(activation):
            pairs[_join(layer, pair.first)] = _join(layer, pair.second)
    return pairs


def unfused_inputs(model: nn.Module, names) -> set[str]:
    """The layers of `names` whose int8 input quantization no op before them can take in: the
    adapter's attention_outputs, fed by the attention kernel. none on the generic path, where
    nothing is known of the inputs: the planner's int8_fused variant is then its per_layer one."""
    adapter = adapter_for(model)
    fed_by_attention = {_join(layer, output) for layer in adapter.named_layers(model)
                        for output in adapter.attention_outputs}
    return fed_by_attention.intersection(names)


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linears the engine may prune and accelerate, by full name, as the model's adapter says:
    those of its encoder layers, or on the generic path every nn.Linear inside the transformer body
    (base_model). Never the task head (qa_outputs)."""
    return adapter_for(model).linears(model)
