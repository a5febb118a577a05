"""Question-answering latency as a user gets it: engine.qa.QuestionAnswerer on the accelerated model
directory (its plan applied: 2:4 kernels, bucketed CUDA graphs captured on first use) against the
same answerer on the dense directory (a directory without a plan: the plain model, float32, eager),
on the embedded data's questions.

Per question: the first call (it captures the bucket's graph: a compile and a capture), then the
median of --repeats calls; then all questions in one call (their windows batched).

    python benchmarks/engine_qa_latency.py --work DIR --out qa.json   # DIR: gpu_engine.py --work DIR
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch is imported

import torch  # noqa: E402

from engine.qa import QuestionAnswerer  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402
from gpu_engine import work_parser  # noqa: E402

EMBEDDED_DATA = REPO / "data" / "embedded" / "biographies.json"


def questions(count: int, path: Path = EMBEDDED_DATA) -> list[tuple[str, str]]:
    """The first `count` (question, context) pairs of a SQuAD-format file."""
    pairs = [(qa["question"], paragraph["context"]) for article in json.loads(path.read_text())["data"]
             for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    return pairs[:count]


def wall_ms(call) -> float:
    """Wall time of one call, the GPU's work finished (what a user waits)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    begin = time.perf_counter()
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - begin) * 1000


def time_answerer(answerer: QuestionAnswerer, pairs: list[tuple[str, str]], repeats: int, result: dict,
                  on_progress=lambda: None) -> None:
    """Into `result`: first-call and median latency (ms) per question, then all questions in one call;
    on_progress after each (a run cut short keeps what it measured)."""
    result.update(first_call_ms=[], median_ms=[], answers=[])
    for question, context in pairs:
        result["first_call_ms"].append(round(wall_ms(lambda: result["answers"].append(answerer(question, context))), 3))
        result["median_ms"].append(round(statistics.median(wall_ms(lambda: answerer(question, context))
                                                           for _ in range(repeats)), 3))
        result["median_of_medians_ms"] = statistics.median(result["median_ms"])
        on_progress()
    batch_questions, batch_contexts = map(list, zip(*pairs))
    answerer(batch_questions, batch_contexts)  # captures the batch's bucket
    together = statistics.median(wall_ms(lambda: answerer(batch_questions, batch_contexts)) for _ in range(repeats))
    result["all_questions_in_one_call_ms"] = round(together, 3)
    on_progress()


def main(argv: list[str] | None = None) -> None:
    parser = work_parser(__doc__)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    pairs = questions(args.questions)
    result = {"command": " ".join(sys.argv), "cusparselt": cusparselt_facts(),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "questions": [question for question, _ in pairs]}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))

    for name in ("accelerated", "dense"):  # accelerated first: it is the figure that matters
        begin = time.perf_counter()
        answerer = QuestionAnswerer.from_dir(args.work / name)
        result[name] = {"load_s": round(time.perf_counter() - begin, 2)}
        time_answerer(answerer, pairs, args.repeats, result[name], save)
        print(f"{name}: median latency per question {result[name]['median_ms']} ms, first call "
              f"{result[name]['first_call_ms']} ms, all {len(pairs)} in one call "
              f"{result[name]['all_questions_in_one_call_ms']} ms", flush=True)
        del answerer


if __name__ == "__main__":
    main()
