"""Peak memory of the tokenize stage on one huge context, per context size.

Writes a synthetic SQuAD file whose one article has a context of N MB (seeded words, the answers
spread over it) and --questions questions on it, train and validation alike, and runs the stage's
own tokenize() on it with params.yaml's tokenizer and windows (max_length, doc_stride), each size
in a fresh process. Prints, per size, the process's peak RSS (ru_maxrss), its RSS high-water mark
before tokenizing (imports, tokenizer), and the windows made of each split. Run from the repository root:

    python benchmarks/tokenize_memory.py --context-mb 1 2 5 10 --questions 1
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ("the river ran past the old mill and on to the sea where ships from many lands came in with cloth "
         "salt iron and news of wars kings and storms").split()


def synthetic_squad(context_mb: float, questions: int, id_prefix: str) -> dict:
    """One article: a context of `context_mb` MB of seeded words, each question's answer a number
    placed at its own fraction of the context."""
    rng = random.Random(0)
    words, size, target = [], 0, int(context_mb * 1_000_000)
    while size < target:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    answers = []
    for q in range(questions):
        at = (q + 1) * len(words) // (questions + 1)
        words[at] = answer = str(1000 + q)
        answers.append((at, answer))
    context = " ".join(words)
    qas = []
    for q, (at, answer) in enumerate(answers):
        start = len(" ".join(words[:at])) + (1 if at else 0)
        qas.append({"id": f"{id_prefix}{q}", "question": f"In which year did ship number {q} come in?",
                    "answers": [{"text": answer, "answer_start": start}]})
    return {"version": "1.1", "data": [{"title": f"{id_prefix}huge", "paragraphs": [{"context": context, "qas": qas}]}]}


def measure(context_mb: float, questions: int) -> dict:
    """The tokenize stage on a synthetic file, in this process: its peak RSS and window counts."""
    from engine.models import load_tokenizer
    from stages.model_source import resolve_model_source
    from stages.params import validate
    from stages.tokenize import tokenize

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        for name, prefix in (("train.json", "t"), ("validation.json", "v")):
            (root / "data" / name).write_text(json.dumps(synthetic_squad(context_mb, questions, prefix)))
        raw["data"].update(source="files", dir="data", train_files=["train.json"],
                           validation_files=["validation.json"], num_proc=1)
        params = validate(raw)
        tokenizer = load_tokenizer(resolve_model_source(params["model.name"]))
        before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats = tokenize(params, tokenizer, root / "features", root=root)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"context_mb": context_mb, "questions": questions, "peak_rss_mb": round(peak_kb / 1024),
            "rss_before_tokenize_mb": round(before_kb / 1024), "train_windows": stats["train_features"],
            "validation_windows": stats["validation_features"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context-mb", type=float, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--questions", type=int, default=1)
    parser.add_argument("--one", action="store_true", help="measure the single size given, in this process")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.context_mb[0], args.questions)))
        return
    print(f"{'context':>9s} {'questions':>9s} {'peak RSS':>10s} {'before':>9s} {'windows':>8s}")
    for context_mb in args.context_mb:
        # A fresh process per size: ru_maxrss is a high-water mark that never comes down.
        out = subprocess.run([sys.executable, __file__, "--one", "--context-mb", str(context_mb),
                              "--questions", str(args.questions)], capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(f"{context_mb} MB: the measuring process failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.splitlines()[-1])
        print(f"{row['context_mb']:>6g} MB {row['questions']:>9d} {row['peak_rss_mb']:>7d} MB "
              f"{row['rss_before_tokenize_mb']:>6d} MB {row['train_windows']:>8d}", flush=True)


if __name__ == "__main__":
    main()
