"""The finetune_sparse stage: the 2:4 masks hold while the weights train; the dense control trains alike."""
from __future__ import annotations

import shutil

import torch

import pruning.masks
import stages.finetune_sparse
from conftest import saved_masks
from engine.models import load_qa_model, load_tokenizer
from pruning.masks import load_masks
from stages.finetune_sparse import finetune_dense, finetune_sparse
from stages.prune import prune
from stages.tokenize import tokenize


def size_on_disk(model_dir) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())


def test_finetune_holds_the_masks_prune_chose(params, tiny_model, tmp_path, monkeypatch):
    features, pruned, sparse = tmp_path / "features", tmp_path / "pruned", tmp_path / "sparse"
    features.mkdir(), pruned.mkdir(), sparse.mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), features)
    prune(params, tiny_model, pruned)
    held = {}  # the masks finetune_sparse holds, read from the pruned weights' zeros
    monkeypatch.setattr(pruning.masks, "load_masks",
                        lambda sparsifier, masks: held.update(masks) or load_masks(sparsifier, masks))
    params["finetune"]["learning_rate"] = 0.01  # large steps would refill zeros if masks were not held
    metrics = finetune_sparse(params, features, pruned, sparse)
    assert metrics["pattern_2of4_holds"] and metrics["steps"] == 2

    dense = dict(load_qa_model(str(tiny_model)).named_modules())
    before = dict(load_qa_model(str(pruned)).named_modules())
    after = dict(load_qa_model(str(sparse)).named_modules())
    assert len(held) == metrics["layers_pruned"] == 12
    for name, mask in held.items():
        groups = dense[name].weight.detach().abs().reshape(-1, 4)  # magnitude: prune keeps the 2 largest of 4
        chosen = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True)
        assert torch.equal(mask, chosen.reshape(mask.shape))
        assert torch.all(after[name].weight[~mask] == 0)
        assert not torch.equal(after[name].weight, before[name].weight)  # it did train
    # the sparse models hold what the dense one does, nothing beside
    assert sorted(p.name for p in sparse.iterdir()) == sorted(p.name for p in pruned.iterdir())
    assert size_on_disk(sparse) <= size_on_disk(tiny_model) and size_on_disk(pruned) <= size_on_disk(tiny_model)


def test_the_dense_control_is_the_baseline_fine_tuned_as_the_2_4_model_is(params, tiny_model, tmp_path, monkeypatch):
    features, baseline, control = tmp_path / "features", tmp_path / "baseline", tmp_path / "control"
    features.mkdir(), control.mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), features)
    # The random tiny model's logits are nearly flat: a baseline with a sharp head has something to teach.
    shutil.copytree(tiny_model, baseline)
    model = load_qa_model(str(tiny_model))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.qa_outputs.weight)
    model.save_pretrained(baseline)
    params["finetune"].update(distill=True, distill_alpha=0.5, distill_hidden=1.0, learning_rate=0.001, max_steps=8)
    calls, train_qa = [], stages.finetune_sparse.train_qa
    monkeypatch.setattr(stages.finetune_sparse, "train_qa", lambda *args, **kwargs: calls.append(args) or
                        train_qa(*args, **kwargs))
    metrics = finetune_dense(params, features, baseline, control)

    # the 2:4 fine-tune's section and objective, the baseline its teacher
    [(_, _, _, section, seed, teacher)] = calls
    assert section == params["finetune"] and seed == params["seed"]
    before = load_qa_model(str(baseline)).state_dict()
    assert all(torch.equal(tensor, before[name]) for name, tensor in teacher.state_dict().items())
    assert metrics["objective"] == "distillation, 0.5 T\u00b2 KL + 0.5 cross-entropy + 1 hidden MSE (T = 2)"
    losses = [entry["loss"] for entry in metrics["loss_history"]]
    assert metrics["steps"] == 8 and losses[-1] < losses[0]
    # a model of its own, trained from the baseline, and dense
    after = load_qa_model(str(control)).state_dict()
    assert any(not torch.equal(after[name], before[name]) for name in before)
    assert saved_masks(control) == {}


def test_fading_scales_the_removed_weights_and_zero_is_the_mask_itself():
    from pruning.masks import attach_sparsifier, fade_masks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    original = model[0].weight.detach().clone()
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(4, 2)
    sparsifier = attach_sparsifier(model, ["0"], [1, 4], 2)
    load_masks(sparsifier, {"0": mask})
    fade_masks(sparsifier, {"0": mask}, 0.25)
    assert torch.allclose(model[0].weight, original * (mask + 0.25 * (1 - mask)))
    fade_masks(sparsifier, {"0": mask}, 0.0)
    assert torch.equal(model[0].weight, original * mask)


def test_gradual_2_4_starts_from_the_dense_weights_and_ends_on_the_pruned_masks(params, tiny_model, tmp_path,
                                                                                  monkeypatch):
    features, pruned, sparse = tmp_path / "features", tmp_path / "pruned", tmp_path / "sparse"
    features.mkdir(), pruned.mkdir(), sparse.mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), features)
    prune(params, tiny_model, pruned)
    params["finetune"].update(mask_ramp=0.5, max_steps=4, learning_rate=0.001)
    fades, started_from = [], {}
    train_qa, fade_masks = stages.finetune_sparse.train_qa, stages.finetune_sparse.fade_masks
    monkeypatch.setattr(stages.finetune_sparse, "fade_masks",
                        lambda sparsifier, masks, keep_removed: fades.append(keep_removed) or
                        fade_masks(sparsifier, masks, keep_removed))

    def spy(model, *args, **kwargs):
        started_from.update({name: p.detach().clone() for name, p in model.named_parameters()})
        return train_qa(model, *args, **kwargs)

    monkeypatch.setattr(stages.finetune_sparse, "train_qa", spy)
    metrics = finetune_sparse(params, features, pruned, sparse, baseline_dir=tiny_model)

    # each step's factor: 1 - step / 2 until the masks hold alone, and the masks themselves at the end
    assert fades == [1.0, 0.5, 0.0, 0.0, 0.0] and metrics["steps"] == 4 and metrics["pattern_2of4_holds"]
    dense = load_qa_model(str(tiny_model))
    held = saved_masks(pruned)
    for name, mask in held.items():  # started from the dense weights, where the pruned model has zeros
        assert torch.equal(started_from[f"{name}.parametrizations.weight.original"], dense.get_submodule(name).weight)
    after = saved_masks(sparse)  # the pruned model's masks: its zeros exactly where they were
    assert after.keys() == held.keys() and all(torch.equal(after[name], held[name]) for name in held)
