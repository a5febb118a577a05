"""The Trainer's log lines carry numbers, not strings."""
from __future__ import annotations

import json

from transformers import TrainerControl, TrainerState, TrainingArguments

from stages.training import NumericProgressCallback


def test_log_lines_are_json_numbers(tmp_path, capsys):
    callback = NumericProgressCallback()
    state = TrainerState(max_steps=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"loss": 4.99641, "learning_rate": 2e-05, "total_flos": 1.0})
    callback.on_train_end(args, state, TrainerControl())
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    assert json.loads(line) == {"loss": 4.99641, "learning_rate": 2e-05}
