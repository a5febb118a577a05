"""`python -m flows.pipeline -S ...` checks the params it would run with before DVC starts: DVC
writes params.yaml and deletes the stale stages' outputs before any stage reads its params."""
from __future__ import annotations

import pytest
import yaml

import flows.pipeline
from conftest import REPO, tiny_params
from flows.pipeline import check_set_params, cli
from stages.params import ParamError


@pytest.fixture
def params_file(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    params = tiny_params(tiny_model)
    params["data"]["dir"] = str(REPO / "data/embedded")
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_a_typo_in_a_set_param_fails_in_one_line_before_dvc_runs(params_file, monkeypatch, capsys):
    before = params_file.read_bytes()
    started = []
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda *args: started.append(args))
    with pytest.raises(SystemExit) as exit_:
        cli(["-S", "prune.method=wandda"])
    assert exit_.value.code == 1 and not started
    assert capsys.readouterr().err == (
        "twofour pipeline: error: params.yaml with -S prune.method=wandda: field 'prune.method' = 'wandda' is invalid "
        "(expected str, one of magnitude, wanda, sparsegpt)\n")
    assert params_file.read_bytes() == before


def test_set_params_are_applied_as_dvc_applies_them(params_file):
    before = params_file.read_bytes()
    check_set_params(["prune.method=wanda", "train.max_steps=5"])
    with pytest.raises(ParamError, match=r"unknown field 'prune.methd' \(did you mean 'prune.method'\?\)"):
        check_set_params(["+prune.methd=wanda"])
    with pytest.raises(ParamError, match="train.max_steps"):
        check_set_params(["train.max_steps=-1"])
    with pytest.raises(ParamError, match="Invalid `--set-param` value"):
        check_set_params(["prune.nonexistent=1"])  # DVC's own refusal: no such key to set
    with pytest.raises(ParamError, match=r"data.train_files entry 'nope.json': no such file in /"):
        check_set_params(["data.train_files=[nope.json]"])  # the data files too, before DVC empties features/
    assert params_file.read_bytes() == before
