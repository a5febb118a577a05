"""The finetune_sparse stage: the 2:4 masks hold while the weights train."""
from __future__ import annotations

import torch

import stages.finetune_sparse
from engine.models import load_qa_model, load_tokenizer
from pruning.masks import load_masks
from stages.finetune_sparse import finetune_sparse
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
    monkeypatch.setattr(stages.finetune_sparse, "load_masks",
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
