"""DVC stage `tokenize`: data source -> features/ (train, validation, validation_examples)."""
from flows.common import main, stage_flow
from stages.modeling import load_tokenizer, resolve_model_source
from stages.tokenize import tokenize


def work(params, out_dir):
    tokenizer = load_tokenizer(resolve_model_source(params["model.name"]))
    return tokenize(params, tokenizer, out_dir)


tokenize_flow = stage_flow("tokenize", work, out="features")

if __name__ == "__main__":
    main(tokenize_flow)
