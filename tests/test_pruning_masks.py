"""pruning/masks.py: 2:4 masks by magnitude, Wanda and SparseGPT, and the statistics they are computed from;
engine/sparsity.py's 2:4 check."""
from __future__ import annotations

import datasets
import pytest
import torch

import pruning.masks
from engine.errors import InputError
from engine.models import load_qa_model, load_tokenizer
from engine.sparsity import two_four_violations
from pruning.masks import (
    attach_sparsifier,
    calibration_batches,
    input_channel_norms,
    input_grams,
    masks_held,
    masks_in_weights,
    prune_2of4,
    SPARSEGPT_DAMP,
    sparsegpt,
    sparsegpt_layers,
)


def test_two_four_violations_counts_groups():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 2.0, 3.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    assert two_four_violations(weight) == 2  # row 0 group 2 (one zero), row 1 group 2 (none)


def one_layer(weight: list[list[float]]) -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Linear(len(weight[0]), len(weight), bias=False))
    model[0].weight.data = torch.tensor(weight)
    return model


def test_wanda_and_magnitude_disagree_where_activations_say_so():
    # Magnitude keeps inputs 2 and 3 of the first group (|w| 3, 4); inputs 0 and 1 carry activations
    # 100x larger, so Wanda keeps them (scores 10, 20 vs 0.3, 0.4). In the second group the
    # activations are equal and both keep the two largest weights.
    weight = [[1.0, 2.0, 3.0, 4.0, 0.5, -8.0, 0.1, 7.0]]
    norms = {"0": torch.tensor([10.0, 10.0, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0])}
    kept = {}
    for method, input_norms in (("magnitude", None), ("wanda", norms)):
        model = one_layer(weight)
        sparsifier = attach_sparsifier(model, ["0"], (1, 4), 2, input_norms)
        sparsifier.step()
        mask = sparsifier.groups[0]["module"].parametrizations.weight[0].mask.bool()
        sparsifier.squash_mask()
        assert torch.equal(model[0].weight != 0, mask)
        assert torch.equal(masks_in_weights({"0": model[0]}, 2)["0"], mask)
        kept[method] = mask[0].nonzero().flatten().tolist()
    assert kept == {"magnitude": [2, 3, 5, 7], "wanda": [0, 1, 5, 7]}


class TokenwiseLinear(torch.nn.Module):
    """A model whose only Linear sees the (float) token vectors it is given, as an encoder Linear would."""

    def __init__(self, in_features: int = 2):
        super().__init__()
        self.dense = torch.nn.Linear(in_features, 1)

    def forward(self, input_ids, attention_mask):
        return self.dense(input_ids)


def test_input_norms_are_per_channel_l2_over_real_tokens_only():
    model = TokenwiseLinear()
    batches = [
        {"input_ids": torch.tensor([[[3.0, 1.0], [4.0, 2.0]], [[0.0, 2.0], [99.0, 99.0]]]),
         "attention_mask": torch.tensor([[1, 1], [1, 0]])},  # the 99s are padding
        {"input_ids": torch.tensor([[[0.0, 4.0]]]), "attention_mask": torch.tensor([[1]])},
    ]
    norms = input_channel_norms(model, {"dense": model.dense}, batches)
    # channel 0: 3, 4, 0, 0 -> 5; channel 1: 1, 2, 2, 4 -> 5
    assert torch.allclose(norms["dense"], torch.tensor([5.0, 5.0]))
    assert not model.dense._forward_pre_hooks  # hooks removed


def test_prune_2of4_is_the_one_call_for_each_method():
    """The masks of test_wanda_and_magnitude_disagree_where_activations_say_so, through prune_2of4: Wanda's
    input norms now measured on a batch whose channels 0 and 1 carry activations about 100x larger."""
    weight = [[1.0, 2.0, 3.0, 4.0, 0.5, -8.0, 0.1, 7.0]]
    scale = torch.tensor([100.0, 100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    tokens = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0)) * scale
    batches = [{"input_ids": tokens, "attention_mask": torch.ones(2, 16, dtype=torch.long)}]
    kept, output_error = {}, {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = TokenwiseLinear(8)
        model.dense.weight.data = torch.tensor(weight)
        dense_output = model(**batches[0]).detach()
        summary = prune_2of4(model, {"dense": model.dense}, method, None if method == "magnitude" else batches)
        assert summary["pattern_2of4_holds"] and summary["sparsity_of_pruned_layers"] == 0.5
        assert not hasattr(model.dense, "parametrizations")  # squashed: the masks are the weights' zeros
        kept[method] = (model.dense.weight[0] != 0).nonzero().flatten().tolist()
        output_error[method] = float((model(**batches[0]).detach() - dense_output).norm())
    assert kept["magnitude"] == [2, 3, 5, 7] and kept["wanda"] == [0, 1, 5, 7]
    # SparseGPT minimises the output's error on the calibration inputs, updating the weights it keeps.
    assert output_error["sparsegpt"] < output_error["wanda"] < output_error["magnitude"]

    model = TokenwiseLinear(8)
    with pytest.raises(InputError, match=r"^method='random': expected one of magnitude, wanda, sparsegpt$"):
        prune_2of4(model, {"dense": model.dense}, "random")
    with pytest.raises(InputError, match=r"^method=wanda reads calibration batches: none given$"):
        prune_2of4(model, {"dense": model.dense}, "wanda")


def test_masks_held_keep_pruned_weights_at_zero_through_training_and_bake_them_in_on_leaving():
    model = one_layer([[0.0, 2.0, 0.0, 4.0, 0.5, 0.0, 0.0, 7.0], [1.0, 0.0, -3.0, 0.0, 0.0, 6.0, 0.2, 0.0]])
    before = model[0].weight.detach().clone()
    masks = masks_in_weights({"0": model[0]}, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with masks_held(model, masks) as sparsifier:
        assert sparsifier.groups[0]["module_fqn"] == "0"
        for _ in range(3):  # every weight gets a gradient: without the masks the zeros would move
            optimizer.zero_grad()
            model(torch.ones(4, 8)).sum().backward()
            optimizer.step()
            assert torch.equal(model[0].weight == 0, ~masks["0"])  # the weight the forward sees
    assert not hasattr(model[0], "parametrizations")
    weight = model[0].weight.detach()
    assert torch.equal(weight == 0, before == 0) and not torch.equal(weight, before)  # trained, zeros kept

    with pytest.raises(RuntimeError, match="stopped"):  # a failed training leaves no parametrization behind
        with masks_held(model, masks):
            raise RuntimeError("stopped")
    assert not hasattr(model[0], "parametrizations")


def test_calibration_batches_are_seeded_samples_of_the_features(features, tiny_model):
    train = datasets.load_from_disk(str(features / "train"))
    tokenizer = load_tokenizer(str(tiny_model))
    first = calibration_batches(train, tokenizer, n_batches=3, batch_size=4, seed=1)
    again = calibration_batches(train, tokenizer, n_batches=3, batch_size=4, seed=1)
    other = calibration_batches(train, tokenizer, n_batches=3, batch_size=4, seed=2)
    assert [b["input_ids"].shape[0] for b in first] == [4, 4, 4]
    assert set(first[0]) == {"input_ids", "token_type_ids", "attention_mask"}  # no labels
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    assert not torch.equal(first[0]["input_ids"], other[0]["input_ids"])
    assert sum(len(b["input_ids"]) for b in calibration_batches(train, tokenizer, 1000, 4, seed=1)) == len(train)


def test_sparsegpt_reconstructs_the_layer_output_better_than_magnitude_and_wanda():

    torch.manual_seed(0)
    weight = torch.randn(24, 64)
    # Correlated channels of unequal size, as a transformer's are: what the weight updates exploit.
    x = (torch.randn(512, 24) @ torch.randn(24, 64) + 0.1 * torch.randn(512, 64)) * torch.linspace(0.1, 3.0, 64)
    x[:, 5] = 0  # an input that never fires
    gram = x.double().t() @ x.double()
    pruned, keep = sparsegpt(weight, gram)
    assert keep.shape == weight.shape and bool((keep.reshape(24, -1, 4).sum(-1) == 2).all())
    assert torch.equal(pruned == 0, ~keep | (pruned == 0)) and two_four_violations(pruned) == 0
    assert bool((pruned[~keep] == 0).all())

    def output_error(w):
        return float((x @ w.t() - x @ weight.t()).norm() / (x @ weight.t()).norm())

    def top2(scores):  # keep the 2 largest scores of every 4 inputs
        groups = scores.reshape(24, -1, 4)
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        return weight * mask.reshape(24, 64)

    errors = {"magnitude": output_error(top2(weight.abs())),
              "wanda": output_error(top2(weight.abs() * x.norm(dim=0))),
              "sparsegpt": output_error(pruned)}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]
    assert errors["sparsegpt"] < 0.8 * errors["wanda"]  # the weight updates are worth it


def test_sparsegpt_is_sequential_optimal_brain_surgeon():
    """The lazy, Cholesky-based updates equal the textbook ones: prune column i, then move its error
    onto columns i+1.. through the inverse of X^T X restricted to columns i.. ."""

    torch.manual_seed(1)
    weight = torch.randn(8, 16)
    x = torch.randn(200, 6) @ torch.randn(6, 16) + 0.1 * torch.randn(200, 16)
    gram = x.double().t() @ x.double()
    damped = gram + torch.eye(16, dtype=torch.float64) * SPARSEGPT_DAMP * torch.diag(gram).mean()
    pruned, keep = sparsegpt(weight, gram)
    w = weight.double().clone()
    for i in range(16):
        h_inv = torch.linalg.inv(damped[i:, i:])
        kept = torch.where(keep[:, i], w[:, i], torch.zeros_like(w[:, i]))
        w[:, i:] -= ((w[:, i] - kept) / h_inv[0, 0])[:, None] * h_inv[0, :][None, :]
        w[:, i] = kept
    assert torch.allclose(pruned.double(), w, atol=1e-4)


def test_input_statistics_skip_the_layers_after_the_last_one_watched(tiny_model, features):
    model = load_qa_model(str(tiny_model)).eval()
    batches = calibration_batches(datasets.load_from_disk(str(features / "train")), load_tokenizer(str(tiny_model)),
                                  2, 4, seed=0)
    first, last = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"
    layers = {n: model.get_submodule(n) for n in (first, last)}
    head_calls = []
    model.qa_outputs.register_forward_hook(lambda *args: head_calls.append(1))
    alone = input_grams(model, {first: layers[first]}, batches)[first]
    together = input_grams(model, layers, batches)
    assert not head_calls  # every forward stopped at the last layer watched, before the QA head
    # The same values as a full forward pass gives.
    seen = {}
    for name, layer in layers.items():
        layer.register_forward_pre_hook(lambda module, args, name=name: seen.setdefault(name, []).append(args[0]))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for name in layers:
        rows = torch.cat([x[b["attention_mask"].bool()] for x, b in zip(seen[name], batches)]).double()
        assert torch.allclose(together[name], rows.t() @ rows)
    assert torch.equal(alone, together[first])


def test_sequential_sparsegpt_calibrates_each_layer_on_the_pruned_layers_before_it(tiny_model, features):
    tokenizer = load_tokenizer(str(tiny_model))
    batches = calibration_batches(datasets.load_from_disk(str(features / "train")), tokenizer, 2, 4, seed=0)
    names = ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"]
    runs = {}
    for sequential in (False, True):
        model = load_qa_model(str(tiny_model))
        layers = {n: model.get_submodule(n) for n in names}
        masks = sparsegpt_layers(model, layers, batches, 2, sequential)
        runs[sequential] = {n: (layers[n].weight.detach().clone(), masks[n]) for n in names}
    # The first layer sees the same inputs either way.
    assert torch.equal(runs[False][names[0]][0], runs[True][names[0]][0])
    # The second: one-shot calibrates on the dense model, sequential on the model with the first pruned.
    for sequential, source in ((False, "dense"), (True, "first pruned")):
        model = load_qa_model(str(tiny_model))
        if source == "first pruned":
            model.get_submodule(names[0]).weight.data.copy_(runs[True][names[0]][0])
        gram = input_grams(model, {names[1]: model.get_submodule(names[1])}, batches)[names[1]]
        expected, mask = sparsegpt(model.get_submodule(names[1]).weight, gram)
        assert torch.equal(runs[sequential][names[1]][0], expected) and torch.equal(runs[sequential][names[1]][1], mask)
    assert not torch.equal(runs[False][names[1]][0], runs[True][names[1]][0])


def test_sequential_sparsegpt_replays_pruned_blocks_with_the_same_result(tiny_model, features, monkeypatch):
    tokenizer = load_tokenizer(str(tiny_model))
    batches = calibration_batches(datasets.load_from_disk(str(features / "train")), tokenizer, 2, 4, seed=0)
    runs = {}
    for replay in (True, False):
        if not replay:
            monkeypatch.setattr(pruning.masks.BlockReplay, "pruned", lambda self, names: None)
        model = load_qa_model(str(tiny_model))
        layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in n}
        first_block_computes = []  # a layer of block 0 runs only where the block computes
        model.bert.encoder.layer[0].output.dense.register_forward_hook(lambda *args: first_block_computes.append(1))
        masks = sparsegpt_layers(model, layers, batches, 2, sequential=True)
        runs[replay] = masks, {n: m.weight.detach().clone() for n, m in layers.items()}, len(first_block_computes)
        assert "forward" not in vars(model.bert.encoder.layer[0])  # the block's own forward again
    (masks, weights, calls), (plain_masks, plain_weights, plain_calls) = runs[True], runs[False]
    assert all(torch.equal(masks[n], plain_masks[n]) and torch.equal(weights[n], plain_weights[n]) for n in masks)
    assert calls < plain_calls  # replayed once block 1's passes have recorded it


def test_masks_in_weights_are_2of4_even_where_a_kept_weight_is_zero():
    layers = {"pruned": one_layer([[0.0, 5.0, 0.0, -6.0, 0.0, 0.0, 0.0, 7.0]])[0],  # group 2: a kept 0.0
              "dense": one_layer([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 1.0, 2.0]])[0]}
    masks = masks_in_weights(layers, zeros_per_block=2)
    assert list(masks) == ["pruned"]  # a layer without the pattern was never pruned
    mask = masks["pruned"][0]
    assert mask[:4].tolist() == [False, True, False, True]
    assert bool(mask[7]) and int(mask[4:].sum()) == 2  # the nonzero, and one zero to train
