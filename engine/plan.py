"""The plan: per layer, which kernel runs at each batch size; saved beside the model and applied when
the model is loaded.

plan.json (format version PLAN_VERSION) holds what the accelerate stage decided and measured; the
int8 layers' smoothing factors are tensors and go beside it, in SMOOTHING_FILE. Kernel choices are
keyed by batch size (the plan's batch_sizes, at its seq_length): per layer and batch size the dense
matmul, fp16 2:4 or int8 2:4 (int8 only on layers that passed the int8 check), once as timed in CUDA
graphs (how the model is served) and once as timed called eagerly (load_accelerated(eager=True)),
where each op's host work counts and may favour fewer, plainer kernels. The Linears dispatch on token
counts, converted from batch sizes in one place, LayerPlan.token_kernels.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import activation_site, adapter_for, encoder_linears, fuse_qkv, gelu_pairs
from .attention import use_fused_attention
from .common import write_json
from .config import PLAN_CACHE_ENV, EngineConfig
from .errors import InputError
from .graphs import bucketed
from .kernels import (
    INT8_GELU,
    Int8PassthroughGelu,
    Int8ReferenceConfig,
    Kernel,
    Kernels,
    LinearConfig,
    PlannedMM,
    Precision,
    SparseConfig,
    device_backend,
    named,
    shape_name,
    swap_linears,
)
from .models import load_qa_model
from .plan_cache import planned_matmul

PLAN_FILE = "plan.json"
SMOOTHING_FILE = "int8_smoothing.safetensors"
# 4: the whole-model variant every other is timed against is named dense_masked.
# (3: eager kernels and variants beside the graphed ones. 2: a kernel is [precision, alg_id]; tuning
# facts. 1: a kernel was an alg_id in the layer's one precision. 0: no version field, keyed by token count.)
PLAN_VERSION = 4
DENSE = "dense"  # a layer's kernel, or a plan's backend, where no 2:4 kernel runs
# The whole-model variant every other is timed against: every layer on the dense kernels, with the
# 2:4-masked weights the plan is made on (not the unpruned model a user starts from; its zeros
# draw less power, so it runs a little faster than that).
DENSE_MASKED = "dense_masked"


class PlanError(InputError):
    """plan.json (or its smoothing file) does not hold a plan this code can apply to its model: edited,
    cut short, or another model's. An input error: the message names the file and the field."""


@dataclass
class LayerPlan:
    """One Linear's plan. kernels: batch size -> the 2:4 kernel it runs there in a CUDA graph, None
    where the dense matmul runs; eager_kernels: the same for the model called eagerly (host work per
    call counts there). precision int8: the layer passed the int8 check, so its kernels may be int8 ones."""

    shape: tuple[int, int]  # (out_features, in_features)
    precision: Precision = "fp16"
    kernels: dict[int, Kernel | None] = field(default_factory=dict)
    eager_kernels: dict[int, Kernel | None] = field(default_factory=dict)
    reason: str | None = None  # why it stays dense at every batch size
    input_scale: float | None = None  # int8: the static input scale, after smoothing
    smoothing: torch.Tensor | None = field(default=None, repr=False)  # int8: per input channel

    def kernels_for(self, eager: bool) -> dict[int, Kernel | None]:
        return self.eager_kernels if eager else self.kernels

    def runs_2of4(self, eager: bool = False) -> bool:
        return any(kernel is not None for kernel in self.kernels_for(eager).values())

    def every_kernel(self) -> list[Kernel | None]:
        """The kernels of both sets, graphed and eager: what the layer may run on some device."""
        return [*self.kernels.values(), *self.eager_kernels.values()]

    @property
    def computes_int8(self) -> bool:
        """Whether a device without the 2:4 kernels computes this layer's int8 math (Int8ReferenceLinear):
        where it runs int8 at some batch size, or may and was never timed (a plan made on a CPU)."""
        kernels = self.every_kernel()
        return self.precision == "int8" and (not kernels or any(kernel is not None and kernel.int8
                                                                for kernel in kernels))

    @property
    def unsmoothed(self) -> bool:
        """int8 with one input scale for every channel (calibration left it unsmoothed)."""
        return self.smoothing is not None and bool((self.smoothing == 1).all())

    def token_kernels(self, seq_length: int, eager: bool = False) -> Kernels:
        """The kernels (eager_kernels with `eager`) keyed by token count (batch x seq_length), as the
        Linears dispatch on them."""
        return {batch * seq_length: kernel for batch, kernel in self.kernels_for(eager).items()}


@dataclass
class Plan:
    mode: str  # accelerate.mode
    precision: Precision  # accelerate.precision: what the 2:4 layers were asked to run in
    backend: str | None  # the 2:4 kernel library, None: every layer dense
    reason: str  # why that backend (or why dense)
    dtype: str  # the model's dtype on the GPU
    compiled: bool  # timed, and run, as CUDA graphs of the torch.compile'd model
    batch_sizes: list[int]
    seq_length: int
    layers: dict[str, LayerPlan]
    variants: dict[int, str] = field(default_factory=dict)  # batch size -> whole-model variant chosen
    model_ms: dict[int, dict[str, float]] = field(default_factory=dict)  # batch size -> variant -> ms
    eager_variants: dict[int, str] = field(default_factory=dict)  # the same, timed eagerly
    eager_model_ms: dict[int, dict[str, float]] = field(default_factory=dict)
    # precision -> weight shape ("outxin") -> batch size -> tune_linears result
    shape_timings: dict[str, dict[str, dict[int, dict]]] = field(default_factory=dict)
    int8_layer_error: dict[str, float] = field(default_factory=dict)
    kernel_timing_notes: list[str] = field(default_factory=list)
    tuning: dict = field(default_factory=dict)  # how the kernels were timed: configs offered, cap, time budget
    device: dict = field(default_factory=dict)
    # Linear whose output goes through GELU -> the Linear that reads it (adapters.gelu_pairs)
    gelu_pairs: dict[str, str] = field(default_factory=dict)
    engine: dict = field(default_factory=dict)  # the EngineConfig it was made with (record()); {}: not recorded
    adapter: str = ""  # the model adapter it was made with (adapters.ModelAdapter.name); "": not recorded
    version: int = PLAN_VERSION

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> None:
        """plan.json at `path`; the int8 layers' smoothing factors beside it (SMOOTHING_FILE)."""
        path = Path(path)
        smoothing = {name: layer.smoothing.clone() for name, layer in self.layers.items()  # clone: unshared
                     if layer.smoothing is not None}
        if smoothing:
            save_file(smoothing, str(path.with_name(SMOOTHING_FILE)))
        raw = dataclasses.asdict(dataclasses.replace(self, layers={}))
        raw["layers"] = {name: dataclasses.asdict(dataclasses.replace(layer, smoothing=None))
                         for name, layer in self.layers.items()}
        for entry in raw["layers"].values():
            del entry["smoothing"]
        write_json(path, {"version": raw.pop("version"), **raw})

    @classmethod
    def load(cls, path: Path) -> Plan:
        """A saved plan, every field checked: a plan of another format version fails with one line naming
        both versions, a field of the wrong type or shape with one line naming the field (PlanError)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: file not found (did the accelerate stage run?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PlanError(f"{path}: not a JSON plan ({err})") from None
        if not isinstance(raw, dict):
            raise PlanError(f"{path}: expected a JSON object at the top level")
        version = raw.pop("version", 0)
        if not _is_int(version):
            raise PlanError(f"{path}: field 'version' = {version!r} is invalid (expected the integer {PLAN_VERSION})")
        if version != PLAN_VERSION:
            raise InputError(f"{path}: plan format version {version}, this code reads version {PLAN_VERSION}: "
                             "run the accelerate stage again (dvc repro accelerate)")
        _check_fields(path, raw)
        def kernels(saved: dict) -> dict[int, Kernel | None]:
            return {int(batch): None if kernel is None else Kernel(*kernel) for batch, kernel in saved.items()}

        layers = {name: LayerPlan(**{**entry, "shape": tuple(entry["shape"]), "kernels": kernels(entry["kernels"]),
                                     "eager_kernels": kernels(entry["eager_kernels"])})
                  for name, entry in raw.pop("layers").items()}
        if any(layer.input_scale is not None for layer in layers.values()):
            smoothing_path = path.with_name(SMOOTHING_FILE)
            try:
                saved = load_file(str(smoothing_path))
            except (OSError, SafetensorError) as err:
                raise PlanError(f"{smoothing_path}: cannot read the int8 layers' smoothing factors ({err})") from None
            for name, layer in layers.items():
                smoothing = saved.get(name)
                if (layer.input_scale is None) != (smoothing is None):
                    raise PlanError(f"{path}: field 'layers.{name}.input_scale' does not match {SMOOTHING_FILE} "
                                    "(an int8 layer has both, any other neither)")
                if smoothing is not None and tuple(smoothing.shape) != (layer.shape[1],):
                    raise PlanError(f"{smoothing_path}: {name} holds {tuple(smoothing.shape)} factors, the layer "
                                    f"takes {layer.shape[1]} inputs")
                layer.smoothing = smoothing
        timings = {precision: {shape: {int(batch): {**timing, "sparse_ms": _int_keys(timing["sparse_ms"])}
                                       for batch, timing in per_batch.items()}
                               for shape, per_batch in per_shape.items()}
                   for precision, per_shape in raw.pop("shape_timings").items()}
        return cls(**{**raw, **{key: _int_keys(raw[key]) for key in ("variants", "model_ms", "eager_variants",
                                                                      "eager_model_ms")},
                      "shape_timings": timings, "layers": layers})

    # ------------------------------------------------------------------ reading it
    def gelu_fusions(self) -> dict[str, str]:
        """The gelu_pairs whose first layer may run the int8_gelu kernel: both int8, the second
        unsmoothed, and the first runs int8_gelu at some batch size or was never timed (a CPU's plan,
        as LayerPlan.computes_int8). Their activation is Int8PassthroughGelu wherever the plan runs."""
        fusions = {}
        for first, second in self.gelu_pairs.items():
            before, after = self.layers.get(first), self.layers.get(second)
            if before is None or after is None or before.precision != "int8" or not after.unsmoothed:
                continue
            kernels = before.every_kernel()
            if not kernels or any(kernel is not None and kernel.kind == INT8_GELU for kernel in kernels):
                fusions[first] = second
        return fusions

    def sparse_layers(self, eager: bool = False) -> list[str]:
        """The layers that run 2:4 at some batch size (run eagerly, with `eager`)."""
        return [name for name, layer in self.layers.items() if layer.runs_2of4(eager)]

    def summary(self) -> dict:
        """The accelerate stage's metrics: counts of 2:4 vs dense layers, per batch size the
        whole-model and per-layer timings."""
        sparse = self.sparse_layers()
        metrics = {
            "mode": self.mode,
            "precision": self.precision,
            "backend": self.backend or DENSE,
            "reason": self.reason,
            "dtype": self.dtype,
            "layers_2of4": len(sparse),
            "layers_dense": len(self.layers) - len(sparse),
        }
        # Per layer, what it runs and why: written to reports/accelerate.json on every device.
        metrics["layers"] = {}
        for name, layer in self.layers.items():
            if layer.reason is not None or not layer.kernels:
                metrics["layers"][name] = {"kernel": DENSE, "reason": layer.reason or self.reason}
                continue
            per_batch = {}
            for batch, kernel in layer.kernels.items():
                # the chosen kernel's timing; where dense runs, the fastest fp16 2:4 config's
                timing = self.shape_timings[kernel.kind if kernel else "fp16"][shape_name(layer.shape)][batch]
                sparse = timing["sparse_ms"]
                sparse_ms = sparse[kernel.alg_id] if kernel else min(sparse.values()) if sparse else None
                per_batch[f"bs{batch}"] = {
                    "kernel": DENSE if kernel is None else f"cusparselt {kernel.kind} alg_id {kernel.alg_id}",
                    "dense_ms": round(timing["dense_ms"], 4),
                    "sparse_ms": None if sparse_ms is None else round(sparse_ms, 4),
                    "speedup": None if sparse_ms is None else round(timing["dense_ms"] / sparse_ms, 3),
                }
            metrics["layers"][name] = per_batch
        if self.model_ms:
            metrics["by_batch"] = self._by_batch(eager=False)
        if self.eager_variants:
            metrics["eager_by_batch"] = self._by_batch(eager=True)
        return metrics

    def _by_batch(self, eager: bool) -> dict[str, dict]:
        """Per batch size, the variant chosen (graphed or eager), its layer counts and, where the whole
        model was timed that way, its latency against dense_masked."""
        variants, model_ms = (self.eager_variants, self.eager_model_ms) if eager else (self.variants, self.model_ms)
        rows = {}
        for batch, chosen in variants.items():
            kernels = [layer.kernels_for(eager).get(batch) for layer in self.layers.values()]
            row = {
                "variant": chosen,
                "layers_2of4": sum(kernel is not None for kernel in kernels),  # none where a layer is blocked
                "layers_int8": sum(getattr(kernel, "int8", False) for kernel in kernels),
                "layers_int8_gelu": sum(getattr(kernel, "kind", None) == INT8_GELU for kernel in kernels),
            }
            if batch in model_ms:
                ms = model_ms[batch]
                row.update(model_dense_masked_ms=round(ms[DENSE_MASKED], 4), model_accelerated_ms=round(ms[chosen], 4),
                           model_speedup=round(ms[DENSE_MASKED] / ms[chosen], 3))
            rows[f"bs{batch}"] = row
        return rows

    def check_model(self, model: torch.nn.Module, path: Path) -> None:
        """A PlanError unless the plan has an entry, of the right shape, for every Linear of the
        model's encoder and for nothing else (a plan made on another model would be applied in part),
        made with the model's adapter where the plan records one, its GELU pairs the model's."""
        adapter = adapter_for(model).name
        if self.adapter and self.adapter != adapter:
            raise PlanError(f"{path}: field 'adapter' = {self.adapter!r}, the model's adapter is {adapter!r} "
                            "(engine/adapters.py): run the accelerate stage again (dvc repro accelerate)")
        linears = encoder_linears(model)
        for name, layer in self.layers.items():
            if name not in linears:
                raise PlanError(f"{path}: field 'layers.{name}': the model has no such Linear")
            if layer.shape != tuple(linears[name].weight.shape):
                raise PlanError(f"{path}: field 'layers.{name}.shape' = {list(layer.shape)}, the model's Linear is "
                                f"{list(linears[name].weight.shape)}")
        if missing := sorted(linears.keys() - self.layers.keys()):
            raise PlanError(f"{path}: field 'layers' has no entry for the model's Linear {missing[0]}")
        pairs = gelu_pairs(model)
        for first, second in self.gelu_pairs.items():
            if pairs.get(first) != second:
                raise PlanError(f"{path}: field 'gelu_pairs.{first}': not a GELU pair of the model's adapter "
                                f"({adapter}): run the accelerate stage again (dvc repro accelerate)")

    # ------------------------------------------------------------------ applying it
    def linear_config(self, name: str, eager: bool = False, planned: PlannedMM | None = None) -> LinearConfig:
        """The kernel config a layer's 2:4 Linear is built from (for the model run eagerly, with `eager`;
        its 2:4 calls through `planned`, the plan cache's, where given)."""
        layer, fusions = self.layers[name], self.gelu_fusions()
        return SparseConfig(layer.token_kernels(self.seq_length, eager), smoothing=layer.smoothing,
                            input_scale=layer.input_scale,
                            gelu_scale=1 / self.layers[fusions[name]].input_scale if name in fusions else None,
                            planned=planned)

    def apply(self, model: torch.nn.Module, graphs: bool = True, eager: bool = False,
              config: EngineConfig | None = None) -> torch.nn.Module:
        """The model (on its device, query/key/value fused as inference_model makes it) with the plan's
        kernels swapped in: the ones timed fastest in CUDA graphs, or with `eager` (no graphs then) the
        ones timed fastest called eagerly, where each op's host work counts. On a GPU, `config` (None:
        EngineConfig.from_env()) says whether the 2:4 calls go through the plan cache and whether
        attention runs through attention.use_fused_attention.

        With graphs, every input shape is padded up to a bucket (the tuned batch sizes and powers of
        two below them, multiples of 64 tokens and the tuned seq_length) that replays a CUDA graph
        (of the torch.compile'd model where the plan was timed compiled): graphs.bucketed. Under a
        dense plan it is the plain model; without a CUDA device that has 2:4 kernels too, except
        that layers the plan puts on int8 compute the int8 kernel's math exactly
        (Int8ReferenceLinear, LayerPlan.computes_int8), so evaluate scores what the GPU would; the
        activation after a layer that may run int8_gelu is GELU's tanh form on every device
        (gelu_fusions).
        """
        replace_gelu_activations(model, self.gelu_fusions(), Int8PassthroughGelu)
        if device_backend(next(model.parameters()).device)[0] is None:
            int8 = [name for name, layer in self.layers.items() if layer.computes_int8]
            return swap_linears(model, lambda name: Int8ReferenceConfig(self.layers[name].smoothing,
                                                                        self.layers[name].input_scale), named(int8))
        config = config or EngineConfig.from_env()
        if config.attention == "fused":
            use_fused_attention(model)
        sparse = self.sparse_layers(eager)
        if not sparse:
            return model
        planned = planned_matmul(config)
        if eager and planned is None:
            print(f"the eager model runs 2:4 kernels, and without the plan cache ({PLAN_CACHE_ENV}=1) each of "
                  "their calls plans on the host", file=sys.stderr)
        swap_linears(model, lambda name: self.linear_config(name, eager, planned), named(sparse))
        if eager or not graphs:
            return model
        return bucketed(model, self.batch_sizes, self.seq_length, self.compiled)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _mapping(keys_ok: Callable, values_ok: Callable) -> Callable:
    return lambda value: isinstance(value, dict) and all(keys_ok(k) and values_ok(v) for k, v in value.items())


def _batch_size_key(key: str) -> bool:
    return key.isdigit() and int(key) > 0


def _any_str(value) -> bool:
    return isinstance(value, str)


def _kernel(value) -> bool:
    return value is None or (isinstance(value, list) and len(value) == 2 and value[0] in KERNEL_PRECISIONS
                             and _is_int(value[1]) and value[1] >= 0)


def _timing(value) -> bool:
    return (isinstance(value, dict) and _is_number(value.get("dense_ms"))
            and _mapping(lambda key: key.isdigit(), _is_number)(value.get("sparse_ms")))


KERNEL_PRECISIONS = ("fp16", "int8", INT8_GELU)
_ms_by_variant = _mapping(_any_str, _is_number)
# plan.json's fields (but version and layers' entries): what each must be, and in words.
_PLAN_FIELDS: dict[str, tuple[Callable, str]] = {
    "mode": (lambda v: v in ("auto", "all", "none"), "auto, all or none"),
    "precision": (lambda v: v in ("fp16", "int8"), "fp16 or int8"),
    "backend": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "reason": (_any_str, "a string"),
    "dtype": (lambda v: v in ("float16", "bfloat16", "float32"), "float16, bfloat16 or float32"),
    "compiled": (lambda v: isinstance(v, bool), "true or false"),
    "batch_sizes": (lambda v: isinstance(v, list) and v != [] and all(_is_int(b) and b > 0 for b in v),
                    "a non-empty list of batch sizes"),
    "seq_length": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "layers": (_mapping(_any_str, lambda v: isinstance(v, dict)), "an object of Linear name -> entry"),
    "variants": (_mapping(_batch_size_key, _any_str), "an object of batch size -> variant"),
    "model_ms": (_mapping(_batch_size_key, _ms_by_variant), "an object of batch size -> variant -> ms"),
    "eager_variants": (_mapping(_batch_size_key, _any_str), "an object of batch size -> variant"),
    "eager_model_ms": (_mapping(_batch_size_key, _ms_by_variant), "an object of batch size -> variant -> ms"),
    "shape_timings": (_mapping(lambda k: k in KERNEL_PRECISIONS,
                               _mapping(_any_str, _mapping(_batch_size_key, _timing))),
                      "an object of precision -> weight shape -> batch size -> {dense_ms, sparse_ms}"),
    "int8_layer_error": (_mapping(_any_str, _is_number), "an object of Linear name -> error"),
    "kernel_timing_notes": (lambda v: isinstance(v, list) and all(map(_any_str, v)), "a list of strings"),
    "tuning": (lambda v: isinstance(v, dict), "an object"),
    "device": (lambda v: isinstance(v, dict), "an object"),
    "gelu_pairs": (_mapping(_any_str, _any_str), "an object of Linear name -> Linear name"),
    "engine": (lambda v: isinstance(v, dict), "an object"),
    "adapter": (_any_str, "a string"),
}
_OPTIONAL_PLAN_FIELDS = {"engine", "adapter"}  # added after plans of this version were written: absent, Plan's default
_LAYER_FIELDS: dict[str, tuple[Callable, str]] = {
    "shape": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(n) and n > 0 for n in v),
              "[out_features, in_features]"),
    "precision": (lambda v: v in ("fp16", "int8"), "fp16 or int8"),
    "kernels": (_mapping(_batch_size_key, _kernel), "an object of batch size -> null or [precision, alg_id]"),
    "eager_kernels": (_mapping(_batch_size_key, _kernel), "an object of batch size -> null or [precision, alg_id]"),
    "reason": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "input_scale": (lambda v: v is None or (_is_number(v) and v > 0), "null or a positive number"),
}


def _check_fields(path: Path, raw: dict) -> None:
    """A PlanError naming the first field of plan.json (less its version) that is missing, unknown
    or not what Plan.save writes."""
    def check(fields: dict, entry: dict, prefix: str, optional: set[str] = frozenset()) -> None:
        if unknown := sorted(entry.keys() - fields.keys()):
            raise PlanError(f"{path}: unknown field '{prefix}{unknown[0]}'")
        for name, (ok, expected) in fields.items():
            if name not in entry and name in optional:
                continue
            if name not in entry:
                raise PlanError(f"{path}: missing field '{prefix}{name}'")
            if not ok(entry[name]):
                shown = json.dumps(entry[name])
                shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
                raise PlanError(f"{path}: field '{prefix}{name}' = {shown} is invalid (expected {expected})")

    check(_PLAN_FIELDS, raw, "", _OPTIONAL_PLAN_FIELDS)
    for name, entry in raw["layers"].items():
        check(_LAYER_FIELDS, entry, f"layers.{name}.")
        int8 = entry["precision"] == "int8"
        if int8 != (entry["input_scale"] is not None):
            raise PlanError(f"{path}: field 'layers.{name}.input_scale' must be set for an int8 layer, and only there")
        if not int8 and any(kernel is not None and kernel[0] != "fp16"
                            for kernel in [*entry["kernels"].values(), *entry["eager_kernels"].values()]):
            raise PlanError(f"{path}: field 'layers.{name}.kernels': an int8 kernel on an fp16 layer")
    for first, second in raw["gelu_pairs"].items():
        if not {first, second} <= raw["layers"].keys():
            raise PlanError(f"{path}: field 'gelu_pairs.{first}' names a Linear that 'layers' lacks")


def _int_keys(mapping: dict) -> dict:
    """JSON's string keys back to the ints they were."""
    return {int(key): value for key, value in mapping.items()}


def inference_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model as plans are made on and applied to (benchmark times dense the same way): in eval
    mode, query/key/value fused as its adapter says (adapters.fuse_qkv), so the plan's layer names
    always match."""
    return fuse_qkv(load_qa_model(str(model_dir), dtype=dtype).to(device).eval())


def load_accelerated(model_dir: Path, device: torch.device, dtype: torch.dtype | None = None,
                     graphs: bool = True, eager: bool = False, config: EngineConfig | None = None,
                     plan: Plan | None = None) -> torch.nn.Module:
    """The accelerate stage's artifact, ready to run: the model with its plan applied (Plan.apply):
    served through CUDA graphs by default, the plain modules with graphs=False (to wrap, compile or
    capture them yourself), or with eager the modules with the kernels timed fastest when called
    eagerly. dtype None: the plan's on a GPU, float32 elsewhere (as evaluate runs it). config None:
    EngineConfig.from_env(); its cuSPARSELt library must be loaded before torch (runtime.load_cusparselt).
    plan None: the one saved beside the model (another is applied as given, its layers checked)."""
    model_dir = Path(model_dir)
    config = config or EngineConfig.from_env()
    plan = plan or Plan.load(model_dir / PLAN_FILE)
    if dtype is None:
        dtype = getattr(torch, plan.dtype) if device.type == "cuda" else torch.float32
    model = inference_model(model_dir, device, dtype)
    plan.check_model(model, model_dir / PLAN_FILE)
    return plan.apply(model, graphs, eager, config)


def replace_gelu_activations(model: nn.Module, first_layers, activation: type[nn.Module]) -> None:
    """An `activation()` (Int8PassthroughGelu after int8_gelu layers) as the activation after each of
    these Linears (keys of gelu_pairs)."""
    adapter = adapter_for(model)
    for name in first_layers:
        if adapter.gelu is None or not name.endswith(f".{adapter.gelu.first}"):
            raise ValueError(f"{name}: not the first Linear of a GELU pair of the {adapter.name} model adapter")
        owner, attribute = activation_site(model, name.removesuffix(f".{adapter.gelu.first}"), adapter.gelu)
        setattr(owner, attribute, activation())
