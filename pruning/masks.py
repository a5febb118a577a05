"""2:4 masks and what they are computed from: magnitude, Wanda and SparseGPT scores over a few
calibration batches (drawn from tokenized `datasets` features), and the masks held during training.

magnitude keeps the 2 largest |W| of every 4; wanda (Sun et al. 2023, "A Simple and Effective
Pruning Approach for Large Language Models") keeps the 2 largest |W_ij| * ||X_j||_2, where ||X_j||_2
is the L2 norm of input channel j over the tokens of a few seeded calibration batches: a weight
that meets large activations matters more than its magnitude alone says. sparsegpt (Frantar and
Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot") also
uses the calibration inputs X, and goes further: column by column it drops the 2 of 4 weights
whose removal costs least in ||XW^T - XW'^T|| and updates the weights not yet visited to make up
for them (an optimal-brain-surgeon step with the inverse of X^T X).
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import torch
from torch.ao.pruning import WeightNormSparsifier
from tqdm.auto import tqdm

from engine.calibration import group_by_input, layer_inputs
from engine.errors import InputError
from engine.sparsity import GROUP, two_four_violations

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class WandaSparsifier(WeightNormSparsifier):
    """WeightNormSparsifier's per-block choice, fed Wanda's scores |W_ij| * ||X_j||_2 instead of |W_ij|."""

    def __init__(self, input_norms: dict[str, torch.Tensor], sparse_block_shape: tuple[int, int], zeros_per_block: int):
        super().__init__(sparsity_level=1.0, sparse_block_shape=sparse_block_shape, zeros_per_block=zeros_per_block)
        self.input_norms = input_norms  # layer name -> (in_features,) L2 norms of its inputs

    def update_mask(self, module, tensor_name, sparse_block_shape, zeros_per_block, module_fqn, **kwargs):
        scores = getattr(module, tensor_name).abs() * self.input_norms[module_fqn]  # broadcast over output rows
        block_mask = self._make_block_mask(scores, sparse_block_shape, zeros_per_block)
        getattr(module.parametrizations, tensor_name)[0].mask.data = block_mask.bool()


def attach_sparsifier(model: torch.nn.Module, layer_names: list[str], sparse_block_shape: tuple[int, int],
                      zeros_per_block: int, input_norms: dict[str, torch.Tensor] | None = None) -> WeightNormSparsifier:
    """Parametrize the layers' weights with 2:4 masks (all ones until step() or a load).

    step() then scores by magnitude, or by Wanda when the layers' input norms are given.
    """
    block = {"sparse_block_shape": tuple(sparse_block_shape), "zeros_per_block": zeros_per_block}
    if input_norms is None:
        sparsifier = WeightNormSparsifier(sparsity_level=1.0, **block)  # every block gets its zeros
    else:
        sparsifier = WandaSparsifier(input_norms, **block)
    sparsifier.prepare(model, [{"tensor_fqn": f"{name}.weight"} for name in layer_names])
    return sparsifier


def calibration_batches(features, tokenizer, n_batches: int, batch_size: int, seed: int) -> list[dict]:
    """n_batches padded batches of model inputs, drawn from the features without replacement (seeded)."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    picked = order[:n_batches * batch_size].tolist()
    inputs = features.select_columns([c for c in MODEL_INPUTS if c in features.column_names])
    return [tokenizer.pad(inputs[picked[i:i + batch_size]], return_tensors="pt")
            for i in range(0, len(picked), batch_size)]


class _AllInputsSeen(Exception):
    """Raised by sum_over_inputs' hooks to end a forward pass early."""


@torch.no_grad()
def sum_over_inputs(model: torch.nn.Module, layers: dict[str, torch.nn.Linear], batches: list[dict],
                    statistic) -> dict[str, torch.Tensor]:
    """Per layer, the sum over the batches of statistic(rows), rows = the layer's input rows (float64).

    Padding tokens are left out: they are an artefact of batching, not activations the model sees.
    """
    totals: dict[str, torch.Tensor] = {}
    real_tokens = None  # the current batch's attention mask, read by the hooks
    waiting: set[str] = set()  # layers yet to see the current batch
    computed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # this batch's statistics by input: id -> (input, value)

    def recorder(name):
        def record(module, args):
            inputs = args[0]
            if id(inputs) in computed:  # query, key and value read one tensor: one statistic for the three
                value = computed[id(inputs)][1]
            else:
                # Token-level inputs drop their padding; pooled inputs (one row per sequence) count whole.
                rows = (inputs[real_tokens] if inputs.shape[:-1] == real_tokens.shape
                        else inputs.reshape(-1, inputs.shape[-1]))
                value = statistic(rows.double())
                computed[id(inputs)] = inputs, value
            totals[name] = totals[name] + value if name in totals else value
            waiting.discard(name)
            if not waiting:
                raise _AllInputsSeen  # the layers after these are not needed: skip their compute
        return record

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    model.eval()
    try:
        for batch in tqdm(batches, desc="calibration", unit="batch", leave=False):
            real_tokens = batch["attention_mask"].bool()
            waiting.update(layers)
            computed.clear()
            with contextlib.suppress(_AllInputsSeen):
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return totals


def input_channel_norms(model: torch.nn.Module, layers: dict[str, torch.nn.Linear],
                        batches: list[dict]) -> dict[str, torch.Tensor]:
    """Per layer, the L2 norm of each input channel over every real token of the batches (Wanda)."""
    squares = sum_over_inputs(model, layers, batches, lambda rows: rows.pow(2).sum(dim=0))
    return {name: total.sqrt().float() for name, total in squares.items()}


def input_grams(model: torch.nn.Module, layers: dict[str, torch.nn.Linear],
                batches: list[dict]) -> dict[str, torch.Tensor]:
    """Per layer, X^T X over every real token of the batches (SparseGPT's Hessian, up to a factor 2)."""
    return sum_over_inputs(model, layers, batches, lambda rows: rows.t() @ rows)


# SparseGPT's defaults: dampening of X^T X by 1% of its mean diagonal; columns updated in blocks.
SPARSEGPT_DAMP = 0.01
SPARSEGPT_BLOCK = 128


@torch.no_grad()
def sparsegpt(weight: torch.Tensor, gram: torch.Tensor, zeros_per_block: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned weight, keep-mask): SparseGPT's 2:4 one-shot pruning of one Linear weight (out, in).

    For each group of 4 input columns it drops the `zeros_per_block` weights per row with the least
    w^2 / [H^-1]_jj (the error their removal adds), then spreads each dropped column's error over
    the columns not yet visited through the Cholesky factor of H^-1, H = X^T X + damping.
    """
    w = weight.detach().double().clone()
    h = gram.double().clone()
    dead = torch.diag(h) == 0  # inputs that never fire: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    h += torch.eye(len(h), dtype=h.dtype, device=h.device) * SPARSEGPT_DAMP * torch.diag(h).mean()
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    columns = w.shape[1]
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, columns, SPARSEGPT_BLOCK):
        end = min(start + SPARSEGPT_BLOCK, columns)
        block, block_inv = w[:, start:end].clone(), h_inv[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            if i % GROUP == 0:  # choose this group's zeros with the weights as updated so far
                cost = block[:, i:i + GROUP] ** 2 / torch.diag(block_inv)[i:i + GROUP] ** 2
                drop = cost.topk(zeros_per_block, dim=1, largest=False).indices
                keep[:, start + i:start + i + GROUP].scatter_(1, drop, False)
            column = block[:, i]
            pruned = torch.where(keep[:, start + i], column, torch.zeros_like(column))
            error = (column - pruned) / block_inv[i, i]
            block[:, i:] -= error.unsqueeze(1) @ block_inv[i, i:].unsqueeze(0)
            block[:, i] = pruned
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return w.to(weight.dtype), keep


def sparsegpt_layers(model: torch.nn.Module, layers: dict[str, torch.nn.Linear], batches: list[dict],
                     zeros_per_block: int, sequential: bool) -> dict[str, torch.Tensor]:
    """SparseGPT on each layer in forward order, in place; returns the keep-masks.

    Sequential (the paper's way): each layer's X^T X comes from the model with the layers before it
    already pruned, so each layer also makes up for the errors of those before it; layers that read
    one input (query, key, value) are calibrated in one pass, as pruning one cannot change the
    others' input. Otherwise every layer's comes from the dense model, in one pass.
    """
    if sequential:
        one_sequence = {key: value[:1] for key, value in batches[0].items()}
        groups = group_by_input(layer_inputs(model, layers, one_sequence))
    else:
        groups = [list(layers)]
    masks = {}
    with tqdm(total=len(layers), desc="sparsegpt", unit="layer") as progress, \
            BlockReplay(model, layers if sequential else {}, len(batches)) as replay:
        for names in groups:
            grams = input_grams(model, {name: layers[name] for name in names}, batches)
            for name in names:
                pruned, masks[name] = sparsegpt(layers[name].weight, grams[name], zeros_per_block)
                layers[name].weight.data.copy_(pruned)
                progress.update()
            replay.pruned(names)
    return masks


class BlockReplay:
    """Sequential SparseGPT's shortcut: once every layer to prune in a transformer block (an item of
    one of the model's ModuleLists) is pruned, the block's output for each calibration batch stays
    the same on every later pass. It is recorded on the next pass and returned from then on, so a
    pass computes the block being pruned, not every block before it again, with the same masks and
    weights bit for bit."""

    def __init__(self, model: torch.nn.Module, layers: dict[str, torch.nn.Linear], n_batches: int):
        self.n_batches = n_batches
        self.pending: dict[torch.nn.Module, set[str]] = {}  # block -> its layers not yet pruned
        for list_name, blocks in model.named_modules():
            if isinstance(blocks, torch.nn.ModuleList):
                for index, block in enumerate(blocks):
                    inside = {name for name in layers if name.startswith(f"{list_name}.{index}.")}
                    if inside:
                        self.pending[block] = inside
        self.recorded: dict[torch.nn.Module, list] = {}
        self.recording: dict[torch.nn.Module, torch.utils.hooks.RemovableHandle] = {}

    def pruned(self, names: list[str]) -> None:
        """After `names` are pruned (and one more pass has run since the last call)."""
        for block, handle in self.recording.items():  # the pass since the last call recorded them
            handle.remove()
            if len(self.recorded[block]) != self.n_batches:
                raise RuntimeError(f"recorded {len(self.recorded[block])} outputs of a block for {self.n_batches} batches")
            block.forward = self.replayer(self.recorded[block])
        self.recording = {}
        for block, pending in list(self.pending.items()):
            pending.difference_update(names)
            if not pending:
                del self.pending[block]
                self.recorded[block] = []
                self.recording[block] = block.register_forward_hook(
                    lambda module, args, output, outputs=self.recorded[block]: outputs.append(cloned(output)))

    @staticmethod
    def replayer(outputs: list):
        """A block forward returning the recorded outputs in turn, one per batch of a pass."""
        turns = itertools.cycle(outputs)
        return lambda *args, **kwargs: cloned(next(turns))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.recording.values():
            handle.remove()
        for block in self.recorded:
            block.__dict__.pop("forward", None)  # the class's forward again


def cloned(output):
    """A block's output (a tensor, or a tuple of them and None), copied: the next block may change
    its input in place."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    return tuple(cloned(item) for item in output) if type(output) is tuple else output


METHODS = ("magnitude", "wanda", "sparsegpt")


def prune_2of4(model: torch.nn.Module, layers: dict[str, torch.nn.Linear], method: str = "magnitude",
               batches: list[dict] | None = None, sequential: bool = True,
               sparse_block_shape: tuple[int, int] = (1, GROUP), zeros_per_block: int = GROUP // 2) -> dict:
    """The one call: `layers` of `model` pruned to 2:4 in place by `method`, the masks left in the weights
    as their zeros (masks_in_weights finds them again). wanda and sparsegpt read `batches`, a few batches
    of model inputs (calibration_batches). Returns the sparsity summary (sparsity_summary)."""
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if method != "magnitude" and not batches:
        raise InputError(f"method={method} reads calibration batches: none given")
    names = list(layers)
    if method == "sparsegpt":
        masks = sparsegpt_layers(model, layers, batches, zeros_per_block, sequential)
        sparsifier = attach_sparsifier(model, names, sparse_block_shape, zeros_per_block)
        load_masks(sparsifier, masks)
    else:
        input_norms = input_channel_norms(model, layers, batches) if method == "wanda" else None
        sparsifier = attach_sparsifier(model, names, sparse_block_shape, zeros_per_block, input_norms)
        sparsifier.step()  # keep the 2 highest-scoring weights of every 4
    sparsifier.squash_mask()
    summary = sparsity_summary(sparsity_report(model, names))
    if not summary["pattern_2of4_holds"]:
        raise InputError(f"sparse_block_shape={sparse_block_shape}, zeros_per_block={zeros_per_block} left groups of "
                         f"{GROUP} with fewer than 2 zeros: not 2:4")
    return summary


def masks_in_weights(layers: dict[str, torch.nn.Linear], zeros_per_block: int) -> dict[str, torch.Tensor]:
    """The 2:4 masks a pruned model carries in its zeros, for those of `layers` whose weights hold
    the pattern (a dense layer never does): the largest GROUP - zeros_per_block |w| of every group.

    Where every group kept its nonzeros, as pruning leaves them, that is the pruning mask exactly;
    where a kept weight happens to be 0.0 it is still a 2:4 mask, one that lets that weight train.
    """
    masks = {}
    for name, layer in layers.items():
        weight = layer.weight.detach()
        if weight.shape[1] % GROUP or two_four_violations(weight):
            continue
        groups = weight.abs().reshape(weight.shape[0], -1, GROUP)
        keep = groups.topk(GROUP - zeros_per_block, dim=-1).indices
        masks[name] = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).reshape(weight.shape)
    return masks


def load_masks(sparsifier: WeightNormSparsifier, masks: dict[str, torch.Tensor]) -> None:
    """Hold saved masks during training: the parametrization multiplies them in on every forward."""
    for group in sparsifier.groups:
        name = group["module_fqn"]
        if name not in masks:
            raise InputError(f"no 2:4 mask for layer {name}")
        group["module"].parametrizations.weight[0].mask.copy_(masks[name])


@contextlib.contextmanager
def masks_held(model: torch.nn.Module, masks: dict[str, torch.Tensor], sparse_block_shape: tuple[int, int] = (1, GROUP),
               zeros_per_block: int = GROUP // 2) -> Iterator[WeightNormSparsifier]:
    """Inside, every forward multiplies the masks (layer name -> keep-mask, masks_in_weights) into those
    layers' weights, so training keeps the pruned weights at zero; on leaving, the masks are baked into the
    weights again (squash_mask). Yields the sparsifier (fade_masks changes what it multiplies in)."""
    sparsifier = attach_sparsifier(model, list(masks), sparse_block_shape, zeros_per_block)
    load_masks(sparsifier, masks)
    try:
        yield sparsifier
    finally:
        sparsifier.squash_mask()


def fade_masks(sparsifier: WeightNormSparsifier, masks: dict[str, torch.Tensor], keep_removed: float) -> None:
    """The held masks with the weights they remove scaled by keep_removed instead of zeroed: 1 is
    no mask, 0 the masks themselves (gradual 2:4: finetune.mask_ramp)."""
    load_masks(sparsifier, {name: kept.float() + (1 - kept.float()) * keep_removed for name, kept in masks.items()})


def sparsity_report(model: torch.nn.Module, layer_names: list[str]) -> dict[str, dict]:
    modules = dict(model.named_modules())
    report = {}
    for name in layer_names:
        weight = modules[name].weight
        report[name] = {
            "shape": list(weight.shape),
            "sparsity": round(float((weight == 0).float().mean()), 4),
            "violations_2of4": two_four_violations(weight),
        }
    return report


def sparsity_summary(report: dict[str, dict]) -> dict:
    total = sum(r["shape"][0] * r["shape"][1] for r in report.values())
    zeros = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in report.values())
    return {
        "layers_pruned": len(report),
        "sparsity_of_pruned_layers": round(zeros / total, 4),
        "pattern_2of4_holds": all(r["violations_2of4"] == 0 for r in report.values()),
        "layers": report,
    }
