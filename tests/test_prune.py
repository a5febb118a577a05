"""The prune stage: which Linears it takes, and the masks each method leaves."""
from __future__ import annotations

import datasets
import pytest
import torch

import pruning.masks
from conftest import saved_masks, tiny_params
from engine.models import load_qa_model, load_tokenizer
from pruning.masks import calibration_batches, sparsegpt_layers
from stages.common import StageError
from stages.params import validate
from stages.prune import prunable_linears, prune


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
    masks = saved_masks(tmp_path)
    assert len(masks) == 12
    for name, mask in masks.items():
        before = dense[name].weight.detach().reshape(-1, 4)
        after = pruned[name].weight.detach().reshape(-1, 4)
        kept = before.abs().topk(2, dim=1).indices.sort(dim=1).values
        assert torch.equal((after != 0).nonzero()[:, 1].reshape(-1, 2), kept)
        assert torch.equal(mask.reshape(-1, 4), after != 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tiny_model.iterdir())  # no masks file
    assert torch.equal(pruned["qa_outputs"].weight, dense["qa_outputs"].weight)  # head untouched


@pytest.fixture
def wanda_params(params):
    params["prune"].update(method="wanda", calibration_batches=2, calibration_batch_size=4)
    return params


def test_wanda_prune_keeps_the_top_scores_from_the_real_activations(wanda_params, tiny_model, features, tmp_path,
                                                                   capsys):
    metrics = prune(wanda_params, tiny_model, tmp_path, features)
    assert "calibration:   0%|          | 0/2 [" in capsys.readouterr().err  # a progress bar over the batches
    assert metrics["method"] == "wanda" and metrics["pattern_2of4_holds"]
    assert metrics["sparsity_of_pruned_layers"] == 0.5 and metrics["calibration_sequences"] == 8

    # Independently of the hooks: layer 0's query sees the embeddings' output (hidden_states[0]).
    dense = load_qa_model(str(tiny_model))
    tokenizer = load_tokenizer(str(tiny_model))
    batches = calibration_batches(datasets.load_from_disk(str(features / "train")), tokenizer, 2, 4, wanda_params["seed"])
    with torch.no_grad():
        tokens = torch.cat([dense(**b, output_hidden_states=True).hidden_states[0][b["attention_mask"].bool()]
                            for b in batches])
    query = "bert.encoder.layer.0.attention.self.query"
    scores = dense.get_submodule(query).weight.detach().abs() * tokens.norm(dim=0)
    expected = torch.zeros_like(scores, dtype=torch.bool).reshape(-1, 4)
    expected.scatter_(1, scores.reshape(-1, 4).topk(2, dim=1).indices, True)
    assert torch.equal(saved_masks(tmp_path)[query], expected.reshape(scores.shape))


def test_wanda_masks_differ_from_magnitude_and_repeat_exactly(wanda_params, tiny_model, features, tmp_path):
    runs = {}
    for name, run_params in (("magnitude", validate(tiny_params(tiny_model))), ("wanda", wanda_params),
                             ("wanda again", wanda_params)):
        prune(run_params, tiny_model, tmp_path / name, features)
        runs[name] = saved_masks(tmp_path / name)
    assert all(torch.equal(runs["wanda"][k], runs["wanda again"][k]) for k in runs["wanda"])
    assert any(not torch.equal(runs["wanda"][k], runs["magnitude"][k]) for k in runs["wanda"])


def test_sparsegpt_prune_stage_holds_2of4_and_its_masks(params, tiny_model, features, tmp_path, monkeypatch):
    chosen = {}  # the masks prune computes in memory
    monkeypatch.setattr(pruning.masks, "sparsegpt_layers", lambda *args: chosen.update(sparsegpt_layers(*args)) or chosen)
    params["prune"].update(method="sparsegpt", calibration_batches=2, calibration_batch_size=4)
    metrics = prune(params, tiny_model, tmp_path, features)
    assert metrics["method"] == "sparsegpt" and metrics["pattern_2of4_holds"]
    assert metrics["calibration_sequences"] == 8 and metrics["sparsity_of_pruned_layers"] >= 0.5
    masks = saved_masks(tmp_path)
    assert masks.keys() == chosen.keys() and all(torch.equal(masks[k], chosen[k].cpu()) for k in chosen)
    model = load_qa_model(str(tmp_path))
    baseline = load_qa_model(str(tiny_model))
    for name, mask in masks.items():
        pruned, dense = model.get_submodule(name).weight, baseline.get_submodule(name).weight
        assert bool((pruned[~mask] == 0).all())
        assert not torch.equal(pruned[mask], dense[mask])  # kept weights were updated, unlike wanda's
