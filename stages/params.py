"""params.yaml: load once, validate every field against one schema, fail with one clear line."""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from engine.errors import first_line


class ParamError(ValueError):
    """A params.yaml value of the wrong type or range; the message names the field."""


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _fraction(v):
    return 0 < v < 1


def _one_of(*choices):
    check = lambda v: v in choices  # noqa: E731
    check.__doc__ = f"one of {', '.join(map(str, choices))}"
    return check


def _non_empty(v):
    return v != ""


def _seed(v):
    return 0 <= v < 2**32


def _regex(v):
    try:
        re.compile(v)
    except re.error:
        return False
    return True


def _process_count(v):
    return v == "auto" or (isinstance(v, int) and v >= 1)


def _list_of(kind, element_check=None, allow_empty=False):
    def check(v):
        return isinstance(v, list) and (allow_empty or len(v) > 0) and all(
            isinstance(x, kind) and not isinstance(x, bool) and (element_check is None or element_check(x))
            for x in v
        )
    check.__doc__ = f"a {'' if allow_empty else 'non-empty '}list of {kind.__name__}"
    return check


def _hidden_weights(v):
    weights = v if isinstance(v, list) else [v]
    return len(weights) > 0 and all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                                    and w >= 0 for w in weights)


_hidden_weights.__doc__ = ">= 0, or a non-empty list of such numbers (one per hidden state)"
_positive.__doc__ = "> 0"
_non_negative.__doc__ = ">= 0"
_fraction.__doc__ = "between 0 and 1 (exclusive)"
_non_empty.__doc__ = "a non-empty string"
_seed.__doc__ = "between 0 and 2**32 - 1 (numpy's seed range)"
_regex.__doc__ = "a valid Python regular expression"
_process_count.__doc__ = "auto (one per visible GPU, 1 on the CPU) or a whole number >= 1"

# field -> (type(s), optional extra check). Every field is required.
SCHEMA: dict[str, tuple[type | tuple[type, ...], Callable[[Any], bool] | None]] = {
    "seed": (int, _seed),
    "model.name": (str, _non_empty),
    "model.watch": (str, _non_empty),
    "data.source": (str, _one_of("files", "squad")),
    "data.dir": (str, _non_empty),
    "data.train_files": (list, _list_of(str, allow_empty=True)),
    "data.validation_files": (list, _list_of(str, allow_empty=True)),
    "data.num_proc": (int, _non_negative),
    "data.validation_fraction": ((int, float), _fraction),
    "data.max_train_examples": (int, _non_negative),
    "data.max_validation_examples": (int, _non_negative),
    "tokenize.max_length": (int, lambda v: 32 <= v <= 4096),
    "tokenize.doc_stride": (int, _positive),
    **{
        f"{section}.{key}": spec
        for section in ("train", "finetune")
        for key, spec in {
            "epochs": ((int, float), _non_negative),
            "max_steps": (int, _non_negative),
            "learning_rate": ((int, float), _positive),
            "lr_scheduler": (str, _one_of("linear", "cosine", "constant", "constant_with_warmup")),
            "warmup_ratio": ((int, float), lambda v: 0 <= v < 1),
            "weight_decay": ((int, float), _non_negative),
            "batch_size": (int, _positive),
            "num_processes": ((str, int), _process_count),
            "precision": (str, _one_of("fp32", "bf16", "fp16", "auto")),
            "compile": (bool, None),
        }.items()
    },
    "train.eval_batch_size": (int, _positive),
    "prune.method": (str, _one_of("magnitude", "wanda", "sparsegpt")),
    "prune.sparse_block_shape": (list, lambda v: v == [1, 4]),
    "prune.zeros_per_block": (int, lambda v: v == 2),
    "prune.exclude": (str, _regex),
    "prune.calibration_batches": (int, _positive),
    "prune.calibration_batch_size": (int, _positive),
    "prune.sequential": (bool, None),
    "finetune.distill": (bool, None),
    "finetune.distill_temperature": ((int, float), _positive),
    "finetune.distill_alpha": ((int, float), lambda v: 0 <= v <= 1),
    "finetune.distill_hidden": ((int, float, list), _hidden_weights),
    "finetune.mask_ramp": ((int, float), lambda v: 0 <= v < 1),
    "accelerate.mode": (str, _one_of("auto", "all", "none")),
    "accelerate.dtype": (str, _one_of("float16", "bfloat16")),
    "accelerate.max_alg_id": (int, _non_negative),
    "accelerate.precision": (str, _one_of("fp16", "int8")),
    "accelerate.compile": (bool, None),
    "accelerate.int8_smoothing": ((int, float), lambda v: 0 <= v <= 1),
    "evaluate.n_best": (int, _positive),
    "evaluate.max_answer_length": (int, _positive),
    "evaluate.batch_size": (int, _positive),
    "orchestration.retries": (int, lambda v: 0 <= v <= 10),
    "orchestration.retry_delay_s": ((int, float), _non_negative),
    "benchmark.batch_sizes": (list, _list_of(int, _positive)),
    "benchmark.cpu_batch_sizes": (list, _list_of(int, _positive)),
    "benchmark.seq_length": (int, lambda v: 8 <= v <= 4096),
    "benchmark.cpu_seq_length": (int, lambda v: 8 <= v <= 4096),
    "benchmark.warmup": (int, _non_negative),
    "benchmark.repeats": (int, _positive),
    "benchmark.compile": (bool, None),
    "benchmark.num_processes": ((str, int), _process_count),
}
# What a field's extra check asks, as its error message says it.
_CHECK_DOCS = {
    "tokenize.max_length": "between 32 and 4096",
    "orchestration.retries": "between 0 and 10",
    "prune.sparse_block_shape": "[1, 4] (2:4 along the input dimension)",
    "prune.zeros_per_block": "2 (2:4 sparsity)",
    "train.warmup_ratio": "in [0, 1)",
    "finetune.warmup_ratio": "in [0, 1)",
    "finetune.distill_alpha": "in [0, 1]",
    "finetune.mask_ramp": "in [0, 1)",
    "accelerate.int8_smoothing": "in [0, 1]",
    "benchmark.seq_length": "between 8 and 4096",
    "benchmark.cpu_seq_length": "between 8 and 4096",
}


class Params(dict):
    """The params mapping, with dotted lookup: params["train.batch_size"]."""

    def __getitem__(self, dotted: str):
        node: Any = self
        for part in dotted.split("."):
            node = dict.__getitem__(node, part)
        return node


def _unknown_keys(raw: dict) -> list[str]:
    """Dotted names in `raw` that are neither a field of SCHEMA nor a section holding fields."""
    sections = {field.rsplit(".", 1)[0] for field in SCHEMA if "." in field}
    unknown, pending = [], [("", raw)]
    while pending:
        prefix, node = pending.pop()
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in sections and isinstance(value, dict):
                pending.append((f"{name}.", value))
            elif name not in SCHEMA and name not in sections:
                unknown.append(name)
    return sorted(unknown)


def _nearest_known(name: str) -> str:
    """The known name closest to `name`: a field of the same section, else any field or section."""
    section, _, leaf = name.rpartition(".")
    siblings = [field.rpartition(".")[2] for field in SCHEMA if field.rpartition(".")[0] == section]
    if section and siblings:
        return f"{section}.{difflib.get_close_matches(leaf, siblings, n=1, cutoff=0)[0]}"
    top_level = {field.split(".", 1)[0] for field in SCHEMA}
    return difflib.get_close_matches(name, sorted(top_level), n=1, cutoff=0)[0]


def _finite(value) -> bool:
    """YAML's .inf and .nan are floats: no field means them."""
    return not isinstance(value, float) or math.isfinite(value)


def validate(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    if unknown := _unknown_keys(raw):
        name = unknown[0]
        raise ParamError(f"{source}: unknown field '{name}' (did you mean '{_nearest_known(name)}'?)")
    for field, (kind, check) in SCHEMA.items():
        node: Any = raw
        for part in field.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamError(f"{source}: missing field '{field}'")
            node = node[part]
        if isinstance(node, bool) and kind is not bool:
            ok = False  # YAML's true/false must not pass as 1/0
        else:
            ok = isinstance(node, kind) and _finite(node)
        if ok and check is not None:
            ok = bool(check(node))
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            rule = _CHECK_DOCS.get(field) or (check.__doc__ if check is not None and check.__doc__ else "")
            if not _finite(node):
                rule = "a finite number"
            expected = f"{names}, {rule}" if rule else names
            raise ParamError(f"{source}: field '{field}' = {node!r} is invalid (expected {expected})"
                             f"{_number_as_text_hint(node, kind)}")
    _check_model_watched(raw, source)
    _check_doc_stride(raw, source)
    return Params(raw)


def _number_as_text_hint(node: Any, kind) -> str:
    """YAML 1.1 reads 1e-4 (no dot) as text: say how to write it where a number was expected."""
    if not isinstance(node, str) or float not in (kind if isinstance(kind, tuple) else (kind,)):
        return ""
    try:
        float(node)
    except ValueError:
        return ""
    mantissa, _, exponent = node.strip().lower().partition("e")
    if not exponent:
        return ""
    # YAML 1.1's float: a dot in the mantissa and a sign in the exponent
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    written = f"{mantissa}e{exponent if exponent[0] in '+-' else '+' + exponent}"
    return f"; YAML reads {node} as text, write {written}"


def _check_doc_stride(raw: dict, source: str) -> None:
    """Windows overlap by doc_stride tokens; the question takes part of each window, and the tokenizer
    refuses a stride as long as what is left of it: under half a window leaves room for the question."""
    max_length, stride = raw["tokenize"]["max_length"], raw["tokenize"]["doc_stride"]
    if stride >= max_length // 2:
        raise ParamError(f"{source}: field 'tokenize.doc_stride' = {stride} is invalid (expected < "
                         f"tokenize.max_length/2 = {max_length // 2})")


def _check_model_watched(raw: dict, source: str) -> None:
    """A local model directory must be what model.watch names: dvc.yaml cannot make a dependency of
    model.name, which may be "embedded" or a hub id, so a local model's files are watched through it."""
    name, watch = (Path(raw["model"][key]).expanduser() for key in ("name", "watch"))
    if name.is_dir() and name.resolve() != watch.resolve():
        raise ParamError(f"{source}: field 'model.watch' = {raw['model']['watch']!r} must name the local model "
                         f"directory of model.name ({raw['model']['name']!r}), so that DVC sees its files change")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamError(f"{path}: not valid YAML ({first_line(err)})") from None
    return validate(raw, str(path))
