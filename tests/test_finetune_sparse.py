"""The finetune_sparse stage: the 2:4 masks hold while the weights train."""
from __future__ import annotations

import torch

from engine.sparsity import MASKS_FILE
from stages.finetune_sparse import finetune_sparse
from stages.modeling import load_qa_model, load_tokenizer
from stages.prune import prune
from stages.tokenize import tokenize


def test_finetune_holds_the_masks(params, tiny_model, tmp_path):
    features, pruned, sparse = tmp_path / "features", tmp_path / "pruned", tmp_path / "sparse"
    features.mkdir(), pruned.mkdir(), sparse.mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), features)
    prune(params, tiny_model, pruned)
    params["finetune"]["learning_rate"] = 0.01  # large steps would refill zeros if masks were not held
    metrics = finetune_sparse(params, features, pruned, sparse)
    assert metrics["pattern_2of4_holds"] and metrics["steps"] == 2
    before = dict(load_qa_model(str(pruned)).named_modules())
    after = dict(load_qa_model(str(sparse)).named_modules())
    for name, mask in torch.load(pruned / MASKS_FILE).items():
        assert torch.all(after[name].weight[~mask] == 0)
        assert not torch.equal(after[name].weight, before[name].weight)  # it did train
