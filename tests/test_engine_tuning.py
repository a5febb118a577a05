"""engine/tuning.py on a CPU: the kernel-timing child process's failure handling, and which configs are timed where."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine import tuning
from engine.tuning import EVENT, _events, rotation_count, tune_linears


def test_rotation_count_spills_l2():
    assert rotation_count(bytes_per_call=100 * 2**20, l2_bytes=50 * 2**20) == 1
    assert rotation_count(bytes_per_call=10 * 2**20, l2_bytes=50 * 2**20) == 8  # capped
    assert rotation_count(bytes_per_call=30 * 2**20, l2_bytes=50 * 2**20) == 4


def test_kernel_timing_child_that_stalls_is_killed():
    script = f"import time; print({EVENT!r} + '{{\"kind\": \"try\"}}', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    events = _events(child, stall_timeout_s=2.0)
    assert next(events) == {"kind": "try"}
    with pytest.raises(TimeoutError, match="no progress for 2 s"):
        next(events)
    assert child.wait(timeout=10) != 0  # killed, not left running


def test_kernel_timing_without_gpu_fails_with_the_childs_error():
    if torch.cuda.is_available():
        pytest.skip("this checks the message on a machine without CUDA")
    with pytest.raises(RuntimeError, match="kernel timing process failed outside a kernel config: .*Error"):
        tune_linears([(32, 32, 64)], torch.float16)


# A timing child whose "GPU" offers alg_ids 0..OFFERED-1, the fastest BEST, and whose search works or
# fails as SEARCH_WORKS says (0.10 / 0.8): the real protocol (_serve) around a fake timer.
FAKE_CHILD = """
import json, sys
from engine import tuning

class Timer:
    def __init__(self, problem):
        self.problem = problem
    def dense_ms(self):
        return 1.0
    def run(self, alg_id):
        if alg_id >= {offered}:
            raise RuntimeError("CUSPARSE_STATUS_INVALID_VALUE: alg_id out of range")
    def sparse_ms(self, alg_id):
        self.run(alg_id)
        if {fails_when}:
            raise RuntimeError(f"CUSPARSE_STATUS_NOT_SUPPORTED: alg_id {{alg_id}} at {{self.problem}}")
        return 0.5 + abs(alg_id - {best}) / 100
    def search(self):
        if not {search_works}:
            raise RuntimeError("cuSPARSELt search: internal error")
        return {best}

tuning._serve(json.load(sys.stdin), Timer, tuning.emit)
"""


def fake_child(offered: int, best: int, search_works: bool, fails_when: str = "False") -> list[str]:
    """fails_when: a condition on alg_id and self.problem under which a config that exists fails."""
    return [sys.executable, "-c", FAKE_CHILD.format(offered=offered, best=best, search_works=search_works,
                                                    fails_when=fails_when)]


def test_every_offered_config_is_timed_at_every_problem_and_a_failed_search_is_dropped():
    problems = [(32, 32, 64), (32, 32, 256)]
    results, notes = tune_linears(problems, torch.float16, try_search=True, max_alg_id=40,
                                  command=fake_child(12, 7, False))
    for problem in problems:
        assert sorted(results[problem]["sparse_ms"]) == list(range(12))  # 0..11: the count the probe found
        assert results[problem]["alg_ids_offered"] == 12 and results[problem]["untimed"] == []
        assert tuning.best_alg(results[problem]) == 7 and results[problem]["dense_ms"] == 1.0
        assert results[problem]["search"] == "failed; alg_ids timed by hand"
    assert notes[0].startswith("fp16: cuSPARSELt offers alg_ids 0..11 (alg_id 12: RuntimeError: CUSPARSE_STATUS")
    assert notes[1].startswith("fp16: cuSPARSELt search failed (RuntimeError: cuSPARSELt search: internal error)")


def test_a_working_search_is_timed_first_and_the_budget_leaves_the_rest_untimed():
    problem = (32, 32, 64)
    results, notes = tune_linears([problem], torch.float16, try_search=True, max_alg_id=5, budget_s=0.0,
                                  command=fake_child(64, 3, True))
    assert results[problem]["search"] == "search chose alg_id 3"
    assert results[problem]["sparse_ms"] == {3: 0.5}  # one config is always timed: the search's pick
    assert results[problem]["untimed"] == [0, 1, 2, 4, 5] and results[problem]["alg_ids_offered"] == 6
    assert notes == ["fp16: alg_ids 0..5 all ran (the cap, max_alg_id; the library may offer more)",
                     "fp16: tuning budget 0 s (0.0 s per shape and batch size) left 5 of 6 configs untimed"]


def test_a_config_that_fails_on_one_problem_is_dropped_and_the_problem_carries_on():
    problems = [(32, 32, 64), (32, 32, 256)]
    results, notes = tune_linears(problems, torch.float16, try_search=False, command=fake_child(
        8, 6, False, fails_when="alg_id == 5 and self.problem[2] == 256"))
    assert sorted(results[(32, 32, 64)]["sparse_ms"]) == list(range(8))  # timed before 5 failed elsewhere
    assert sorted(results[(32, 32, 256)]["sparse_ms"]) == [0, 1, 2, 3, 4, 6, 7]
    assert tuning.best_alg(results[(32, 32, 256)]) == 6 and results[(32, 32, 256)]["dense_ms"] == 1.0
    assert notes[1].startswith("(32, 32, 256): fp16 alg_id 5 failed (RuntimeError: CUSPARSE_STATUS_NOT_SUPPORTED")


def test_after_too_many_failed_configs_only_dense_is_timed(monkeypatch):
    monkeypatch.setattr(tuning, "MAX_FAILED_CONFIGS", 2)
    problems = [(32, 32, 64), (32, 32, 256)]
    results, notes = tune_linears(problems, torch.float16, try_search=False,
                                  command=fake_child(8, 6, False, fails_when="alg_id >= 2"))
    assert {p: sorted(r["sparse_ms"]) for p, r in results.items()} == {problems[0]: [0, 1], problems[1]: []}
    assert all(result["dense_ms"] == 1.0 for result in results.values())  # the layer stays dense, timed
    assert notes[-1] == "fp16: 2 configs failed: the rest timed dense only"


@pytest.mark.parametrize("loaded, works", [(None, False), ("0.8.0", False), ("0.8.1", False), ("0.10.0", True),
                                           ("0.11.2", True), ("1.0.0", True)])
def test_the_search_is_tried_only_on_a_library_where_it_works(monkeypatch, loaded, works):
    monkeypatch.setattr(tuning, "loaded_version", lambda: loaded)
    assert tuning.search_works() is works


def test_the_child_protocol_stops_at_the_budget_on_its_clock():
    events, now = [], iter([0.0, 1.0, 2.5, 3.0])

    class Timer:
        def __init__(self, problem):
            pass

        def dense_ms(self):
            return 1.0

        def sparse_ms(self, alg_id):
            return 0.1 * alg_id

    spec = {"jobs": [{"problem": [16, 16, 64], "dense": False, "search": False, "budget_s": 2.0,
                      "alg_ids": [0, 1, 2, 3]}]}
    tuning._serve(spec, Timer, lambda kind, problem, **fields: events.append((kind, fields)), clock=lambda: next(now))
    assert [kind for kind, _ in events] == ["try", "alg", "try", "alg", "skipped", "done"]
    assert events[4][1] == {"alg_ids": [2, 3]}  # 2.5 s spent after alg_id 1: past the 2 s budget


def test_measure_shapes_asks_for_every_shape_at_every_batch_size(monkeypatch):
    calls = []

    def fake_tune(problems, dtype, max_alg_id, precision, budget_s, config):
        calls.append((problems, max_alg_id, precision, budget_s))
        return {p: {"dense_ms": 1.0, "sparse_ms": {0: p[2] / 1000}} for p in problems}, ["note"]

    monkeypatch.setattr(tuning, "tune_linears", fake_tune)
    layers = {"a": torch.nn.Linear(8, 16), "b": torch.nn.Linear(16, 8), "c": torch.nn.Linear(8, 16)}
    timings, notes = tuning.measure_shapes(layers, [4, 1], 64, torch.float16, max_alg_id=9, precision="int8",
                                           budget_s=30)
    assert calls == [([(8, 16, 64), (8, 16, 256), (16, 8, 64), (16, 8, 256)], 9, "int8", 30)]
    assert set(timings) == {"16x8", "8x16"} and timings["16x8"][4]["sparse_ms"] == {0: 0.256}
    assert notes == ["note"]
