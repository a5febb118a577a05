"""engine/config.py: one EngineConfig, its defaults read from the environment in one place, passed to
load_accelerated and recorded in the plan; plans written before it still load."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from engine.config import EngineConfig
from engine.errors import InputError
from engine.plan import PLAN_FILE, Plan, load_accelerated
from test_engine_plan import planned_model  # noqa: F401 (a fixture)


def test_the_environment_gives_the_defaults():
    assert EngineConfig.from_env({}) == EngineConfig(cusparselt=None, plan_cache=False, attention="fused")
    config = EngineConfig.from_env({"TWOFOUR_CUSPARSELT": "/lib/libcusparseLt.so.0", "TWOFOUR_PLAN_CACHE": "1"})
    assert config == EngineConfig(cusparselt="/lib/libcusparseLt.so.0", plan_cache=True)
    assert EngineConfig.from_env(config.as_env()) == config  # what a timing child is started with
    assert EngineConfig.from_env(EngineConfig().as_env()) == EngineConfig()


def test_an_unknown_attention_mode_is_one_line():
    with pytest.raises(InputError, match=r"^EngineConfig.attention='flash': expected one of fused, model$"):
        EngineConfig(attention="flash")


def test_the_config_and_the_runtime_import_no_torch():
    """The cuSPARSELt library EngineConfig names is loaded before torch: neither module may import it."""
    code = "import sys, engine.config, engine.runtime; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_recorded_config_round_trips_and_a_plan_without_one_loads(planned_model):
    plan = Plan.load(planned_model / PLAN_FILE)
    plan.engine = EngineConfig(plan_cache=True).record()
    plan.save(planned_model / PLAN_FILE)
    assert Plan.load(planned_model / PLAN_FILE).engine == {"cusparselt": None, "plan_cache": True, "attention": "fused"}
    raw = json.loads((planned_model / PLAN_FILE).read_text())
    del raw["engine"]  # a plan written before configurations were recorded
    (planned_model / PLAN_FILE).write_text(json.dumps(raw))
    assert Plan.load(planned_model / PLAN_FILE).engine == {}
    model = load_accelerated(planned_model, torch.device("cpu"), config=EngineConfig(attention="model"))
    assert isinstance(model, torch.nn.Module)
