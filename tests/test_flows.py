"""The Prefect glue's own logic: atomic stage outputs, metrics files, tags, retries, repro summaries."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from prefect.states import Failed

from conftest import REPO
from flows import common
from flows.benchmark import batch_table
from flows.common import is_transient, metric_rows, run_stage, run_tags
from flows.pipeline import PUSH_HINT, dvc_command, metrics_table, summarize_repro
from flows.summary import score_table
from stages.common import StageError
from stages.params import ParamError


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_stage_writes_outputs_report_and_plot_data(in_tmp, params):
    def work(p, out):
        (out / "model.bin").write_text("weights")
        return {"f1": 50.0, "layers": {"a": 1}, "loss_history": [{"step": 1, "loss": 2.0}]}

    metrics = run_stage("demo", work, params, "models/demo", plots=("loss_history",))
    assert (in_tmp / "models/demo/model.bin").read_text() == "weights"
    saved = json.loads((in_tmp / "reports/demo.json").read_text())
    assert saved == metrics and saved["f1"] == 50.0 and saved["layers"] == {"a": 1} and saved["run"]["device"] == "cpu"
    assert "loss_history" not in saved
    assert json.loads((in_tmp / "plots/demo_loss_history.json").read_text()) == [{"step": 1, "loss": 2.0}]
    assert not (in_tmp / "metrics").exists()  # only the summary stage writes a metrics file
    assert {row["metric"] for row in metric_rows(metrics)} == {"f1", "run.device", "run.torch", "run.transformers",
                                                               "run.python", "run.cpu", "run.cpu_threads",
                                                               "run.cpu_model", "run.cpu_flags",
                                                               "run.wall_s", "run.peak_memory_mb"}
    # which CPU made the figures: its model and the instruction sets that choose its kernels
    assert saved["run"]["cpu_model"] and "avx2" in saved["run"]["cpu_flags"]


def test_failed_stage_leaves_the_previous_output_and_no_temp(in_tmp, params):
    (in_tmp / "models/demo").mkdir(parents=True)
    (in_tmp / "models/demo/model.bin").write_text("good")

    def half_written(p, out):
        (out / "model.bin").write_text("half")
        raise StageError("bad input")

    with pytest.raises(StageError):
        run_stage("demo", half_written, params, "models/demo", plots=())
    assert (in_tmp / "models/demo/model.bin").read_text() == "good"
    assert sorted(p.name for p in (in_tmp / "models").iterdir()) == ["demo"]
    assert not (in_tmp / "reports/demo.json").exists()


def test_only_unexpected_failures_are_retried():
    assert not is_transient(None, None, Failed(data=StageError("answer_start 3 does not point at its text")))
    assert not is_transient(None, None, Failed(data=ParamError("train.batch_size")))
    assert is_transient(None, None, Failed(data=OSError("connection reset")))
    assert is_transient(None, None, Failed(data=RuntimeError("CUDA error: unspecified launch failure")))


def test_run_tags(monkeypatch):
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123456789abcdef")
    monkeypatch.setenv("DVC_EXP_NAME", "wanda-try")
    monkeypatch.setenv(common.PIPELINE_RUN_ENV, "feedbeef")
    assert run_tags() == ["twofour", "git:01234567", "exp:wanda-try", "pipeline:feedbeef"]


def test_summarize_repro_reads_dvc_output():
    output = ("Stage 'tokenize' didn't change, skipping\n"
              "Stage 'train_baseline' is cached - skipping run, checking out outputs\n"
              "Running stage 'prune':\n> python -m flows.prune\nRunning stage 'evaluate':\n")
    assert summarize_repro(output) == {"ran": ["prune", "evaluate"], "cached": ["tokenize", "train_baseline"]}


def test_summarize_repro_reads_stages_of_another_dvc_yaml():
    output = ("Stage 'gpu/dvc.yaml:tokenize' didn't change, skipping\n"
              "Running stage 'gpu/dvc.yaml:train_baseline':\n> PYTHONPATH=.. python -m flows.train_baseline\n")
    assert summarize_repro(output) == {"ran": ["train_baseline"], "cached": ["tokenize"]}


def test_dvc_command():
    assert dvc_command([])[-2:] == ["dvc", "repro"]
    assert dvc_command(["prune.method=wanda", "seed=1"])[-6:] == [
        "exp", "run", "-S", "prune.method=wanda", "-S", "seed=1"]


def test_dvc_command_for_the_gpu_pipeline_names_it_and_its_params_file():
    assert dvc_command([], "gpu/dvc.yaml")[-3:] == ["dvc", "repro", "gpu/dvc.yaml"]
    assert dvc_command(["train.epochs=3", "gpu/params.yaml:seed=1"], "gpu/dvc.yaml")[-7:] == [
        "exp", "run", "gpu/dvc.yaml", "-S", "gpu/params.yaml:train.epochs=3", "-S", "gpu/params.yaml:seed=1"]


def test_a_bad_override_of_the_gpu_pipeline_names_its_params_file(tmp_path, monkeypatch):
    import shutil

    from flows.pipeline import check_set_params, params_file
    from stages.params import ParamError

    (tmp_path / "gpu").mkdir()
    shutil.copyfile(REPO / "gpu/params.yaml", tmp_path / "gpu/params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=r"^gpu/params.yaml with -S train.epochs=many: field 'train.epochs' = 'many' is invalid"):
        check_set_params(["train.epochs=many"], params_file("gpu/dvc.yaml"))
    # a valid value: the data files are then looked for beside gpu/, where its stages run
    with pytest.raises(ParamError, match=r"data.dir '../data/squad-v1.1': no such folder"):
        check_set_params(["train.epochs=3"], params_file("gpu/dvc.yaml"))


def test_metrics_table_is_the_scores_file_as_a_markdown_row():
    shown = {"workspace": {"data": {"metrics/scores.json": {"data": {"f1": {"dense": 60.1, "sparse": 58.2},
                                                                     "speedup": 1.45}}}}}
    assert [line.replace(" ", "") for line in metrics_table(shown).splitlines()[::2]] == [
        "|file|speedup|f1.dense|f1.sparse|", "|metrics/scores.json|1.45|60.1|58.2|"]


def test_summary_table_says_where_the_speedup_was_measured():
    scores = {"f1": {"dense": 60.1, "sparse": 58.2}, "speedup": 1.45}
    headline = {"batch_size": 64, "mode": "compiled", "speedup": 1.45}
    assert score_table({"scores": scores, "headline_speedup": headline}) == [
        {"score": "F1 dense", "value": 60.1}, {"score": "F1 sparse", "value": 58.2},
        {"score": "speedup (batch 64, compiled)", "value": 1.45}]
    unmeasured = score_table({"scores": {**scores, "speedup": None}, "headline_speedup": None})
    assert unmeasured[-1] == {"score": "speedup (not measured)", "value": None}
    on_a_cpu = score_table({"scores": {**scores, "speedup": "n/a (no 2:4 kernels on CPU)"}, "headline_speedup": None})
    assert on_a_cpu[-1] == {"score": "speedup", "value": "n/a (no 2:4 kernels on CPU)"}


def test_batch_table_has_latencies_and_speedups_per_batch_size():
    metrics = {"latency_ms": {"bs1": {"dense_eager": 2.0, "accelerated_eager": 1.0}},
               "speedup": {"bs1": {"eager": 2.0}}}
    assert batch_table(metrics) == [{"batch_size": "bs1", "dense_eager": 2.0, "accelerated_eager": 1.0,
                                     "speedup_eager": 2.0}]


def test_temp_output_of_a_killed_run_is_cleared_next_time(in_tmp, params):
    stale = in_tmp / "models/.demo.tmp-killed"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_text("half")
    run_stage("demo", lambda p, out: {"ok": 1}, params, "models/demo", plots=())
    assert sorted(p.name for p in (in_tmp / "models").iterdir()) == ["demo"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_are_readable_as_the_umask_allows(in_tmp, params, umask, file_mode, dir_mode):
    """Not mkstemp's private 0600 (mkdtemp's 0700): others in a shared checkout read the results."""
    def work(p, out):
        (out / "model.bin").write_text("weights")
        return {"f1": 1.0, "layers": {"a": 1}, "loss_history": []}

    previous = os.umask(umask)
    try:
        run_stage("demo", work, params, "models/demo", plots=("loss_history",))
    finally:
        os.umask(previous)
    for written in ("plots/demo_loss_history.json", "reports/demo.json"):
        assert stat.S_IMODE((in_tmp / written).stat().st_mode) == file_mode, written
    assert stat.S_IMODE((in_tmp / "models/demo").stat().st_mode) == dir_mode


def test_library_warnings_go_to_the_stage_log_as_plain_text(tmp_path):
    """transformers' load report (bold, in terminal escape codes, whatever the output) is written to
    the log without them, and not to stderr, which keeps the stage's own warnings."""
    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"  # no QA head: loading it as a QA model reports the missing keys
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(encoder)
    script = ("from pathlib import Path; from flows.common import log_to_file; log_to_file(Path('stage.log')); "
              f"from engine.models import load_qa_model; load_qa_model({str(encoder)!r})")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LOAD REPORT" not in result.stderr and "\x1b[" not in result.stderr
    log = (tmp_path / "stage.log").read_text()
    assert "BertForQuestionAnswering LOAD REPORT from: " in log and "qa_outputs.weight" in log
    assert "\x1b[" not in log


def test_dvc_push_hint_is_left_out_of_the_pipeline_log():
    output = "Running stage 'prune':\nUse `dvc push` to send your updates to remote storage.\n"
    assert PUSH_HINT.sub("", output) == "Running stage 'prune':\n"


def test_only_the_runs_own_server_goes_without_heartbeats(monkeypatch):
    """Heartbeats serve automations on a lasting server; the run's server has none and dies with the run."""
    from prefect.settings import get_current_settings

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")  # the user's server
    monkeypatch.delenv(common.RUN_SERVER_ENV, raising=False)
    assert common.use_run_server() is False
    monkeypatch.setenv(common.RUN_SERVER_ENV, "http://127.0.0.1:4200/api")  # as flows/pipeline.py passes it on
    assert common.use_run_server() is True
    assert get_current_settings().flows.heartbeat_frequency == 180
    with common.run_server_settings():
        assert get_current_settings().flows.heartbeat_frequency is None


def test_a_stopped_stages_line_starts_a_line_of_its_own_after_a_progress_bar(capsys, monkeypatch):
    from tqdm import tqdm
    monkeypatch.delenv("DVC_STAGE", raising=False)
    bar = tqdm(total=10, desc="training", file=sys.stderr)
    bar.update(3)  # mid-bar: its last update has no newline
    common.end_progress_bars()
    common.report_interrupt("train_baseline")
    common.report_interrupt("train_baseline")  # once: exit_within's thread may come to it too
    lines = capsys.readouterr().err.splitlines()
    assert lines[-2].startswith("training:  30%")
    assert lines[-1] == ("twofour train_baseline: interrupted: it published nothing, and a rerun starts it again "
                         "(training from its last checkpoint)")


def test_an_exit_held_up_by_a_thread_ends_within_the_grace_with_the_threads_stacks_in_the_log(tmp_path):
    """exit_without_teardown joins the threads as Python's exit does: one that never ends (a Prefect worker
    waiting on a server) must not keep the stage alive."""
    log = tmp_path / "stage.log"
    script = textwrap.dedent(f"""
        import threading, time
        from pathlib import Path
        from flows import common

        def waits_for_ever():
            while True:
                time.sleep(0.1)

        common.EXIT_GRACE_S = 1
        threading.Thread(target=waits_for_ever, daemon=False).start()
        common.exit_without_teardown(3, Path({str(log)!r}))
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 60
    assert result.stderr == ""  # a stage that is done or failed has printed its line already
    text = log.read_text()
    assert "the stage had not exited 1 s after it stopped" in text and "waits_for_ever" in text


@pytest.mark.parametrize("status", [0, 1], ids=["done", "failed"])
def test_ctrl_c_on_the_way_out_ends_the_stage_at_once_with_its_outcome(tmp_path, status):
    """A finished stage's exit may wait on Prefect's last logs: Ctrl-C then ends it at once, with the status
    its work earned and without a traceback; the log keeps what the exit was waiting for."""
    log, ready = tmp_path / "stage.log", tmp_path / "on-its-way-out"
    script = textwrap.dedent(f"""
        import signal, threading, time
        from pathlib import Path
        from flows import common

        def sends_its_last_logs():
            while common._way_out is None:  # until the exit has begun
                time.sleep(0.01)
            time.sleep(0.5)
            Path({str(ready)!r}).touch()
            time.sleep(300)

        common.EXIT_GRACE_S = 200
        common.stop_on_ctrl_c("demo", Path({str(log)!r}))  # as main() does
        threading.Thread(target=sends_its_last_logs, daemon=False).start()
        common.exit_without_teardown({status}, Path({str(log)!r}))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the exit did not begin"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    _, err = process.communicate(timeout=150)
    assert time.monotonic() - signalled < 30  # not the grace's 200 s
    assert process.returncode == status, err
    assert err == ""  # no traceback; a stage's one line was out before its exit began
    text = log.read_text()
    assert "the stage got Ctrl-C on its way out" in text and "sends_its_last_logs" in text
