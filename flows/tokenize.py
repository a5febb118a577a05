"""DVC stage `tokenize`: data source -> features/ (train, validation, validation_examples)."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from flows.common import StageFlow, main  # noqa: E402
from engine.models import load_tokenizer  # noqa: E402
from stages.model_source import resolve_model_source  # noqa: E402
from stages.tokenize import tokenize  # noqa: E402


def work(params, out_dir):
    tokenizer = load_tokenizer(resolve_model_source(params["model.name"]))
    return tokenize(params, tokenizer, out_dir)


tokenize_flow = StageFlow("tokenize", work, out="features")

if __name__ == "__main__":
    main(tokenize_flow, ARGS)
