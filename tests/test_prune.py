"""2:4 pruning with torch.ao.pruning, and fine-tuning that keeps the pattern."""
from __future__ import annotations

import pytest
import torch

from stages.common import StageError
from stages.finetune_sparse import finetune_sparse
from stages.modeling import load_qa_model
from stages.prune import MASKS_FILE, prunable_linears, prune, two_four_violations
from stages.tokenize import tokenize
from stages.modeling import load_tokenizer


def test_two_four_violations_counts_groups():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 2.0, 3.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    assert two_four_violations(weight) == 2  # row 0 group 2 (one zero), row 1 group 2 (none)


def test_filter_takes_encoder_linears_not_the_head(tiny_model):
    names = set(prunable_linears(load_qa_model(str(tiny_model)), exclude="pooler"))
    assert "qa_outputs" not in names
    assert names == {f"bert.encoder.layer.{i}.{part}" for i in range(2) for part in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")}


def test_filter_works_for_other_bert_family_names():
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    model = DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, hidden_dim=64))
    names = set(prunable_linears(model, exclude="pooler"))
    assert "distilbert.transformer.layer.0.ffn.lin1" in names and len(names) == 6
    assert not any(n.startswith("qa_outputs") for n in names)


def test_exclude_regex_and_empty_selection(tiny_model):
    model = load_qa_model(str(tiny_model))
    assert not any("attention" in n for n in prunable_linears(model, exclude="attention"))
    with pytest.raises(StageError, match="no nn.Linear left to prune"):
        prunable_linears(model, exclude=".")


def test_shape_that_cannot_take_2_4_fails_loudly():
    from transformers import BertConfig, BertForQuestionAnswering

    model = BertForQuestionAnswering(BertConfig(vocab_size=50, hidden_size=66, num_hidden_layers=1,
                                                num_attention_heads=6, intermediate_size=128))
    with pytest.raises(StageError, match=r"layer bert.encoder.layer.0.attention.self.query: weight shape \(66, 66\) "
                                         r"cannot take 2:4 \(in_features 66 is not a multiple of 4\)"):
        prunable_linears(model, exclude="pooler")


def test_prune_keeps_the_two_largest_of_every_four(params, tiny_model, tmp_path):
    metrics = prune(params, tiny_model, tmp_path)
    assert metrics["pattern_2of4_holds"] and metrics["layers_pruned"] == 12
    assert metrics["sparsity_of_pruned_layers"] == 0.5
    dense = dict(load_qa_model(str(tiny_model)).named_modules())
    pruned = dict(load_qa_model(str(tmp_path)).named_modules())
    masks = torch.load(tmp_path / MASKS_FILE)
    for name, mask in masks.items():
        before = dense[name].weight.detach().reshape(-1, 4)
        after = pruned[name].weight.detach().reshape(-1, 4)
        kept = before.abs().topk(2, dim=1).indices.sort(dim=1).values
        assert torch.equal((after != 0).nonzero()[:, 1].reshape(-1, 2), kept)
        assert torch.equal(mask.reshape(-1, 4), after != 0)
    assert torch.equal(pruned["qa_outputs"].weight, dense["qa_outputs"].weight)  # head untouched


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
