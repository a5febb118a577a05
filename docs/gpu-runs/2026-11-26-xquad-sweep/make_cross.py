"""Exploration (2026-11-26): in-domain text for distillation without labels. Each XQuAD-en train
question paired with every other paragraph of its own article (train split only; its answer is
not there, and the labels are never used at distill_alpha 1). Writes features_cross/ in the
column-dump format of fakedatasets.py: the XQuAD train features followed by these."""
import collections, copy, shutil
from pathlib import Path

import datasets, torch, yaml
from stages.modeling import load_tokenizer, resolve_model_source
from stages.params import validate
from stages.tokenize import load_splits, prepare_train_features

here = Path(__file__).parent
raw = yaml.safe_load(Path("params.yaml").read_text())
raw["data"]["source"] = "json"
params = validate(raw)
train, _ = load_splits(params)
contexts = collections.defaultdict(list)
for e in train:
    if e["context"] not in contexts[e["title"]]:
        contexts[e["title"]].append(e["context"])
cross = []
for e in train:
    for context in contexts[e["title"]]:
        if context != e["context"]:
            cross.append({**e, "id": e["id"] + "-x", "context": context,
                          "answers": {"text": [context[:1]], "answer_start": [0]}})  # a placeholder: unused
tokenizer = load_tokenizer(resolve_model_source("embedded"))
ds = datasets.Dataset.from_list(cross)
features = ds.map(prepare_train_features, batched=True, remove_columns=ds.column_names,
                  fn_kwargs={"tokenizer": tokenizer, "max_length": 384, "doc_stride": 128})
cols, fp = torch.load(here / "features/train.pt")
extra = features[:]
out = here / "features_cross"; out.mkdir(exist_ok=True)
torch.save(({k: list(cols[k]) + list(extra[k]) for k in cols}, fp + "-cross"), out / "train.pt")
for name in ("validation.pt", "validation_examples.pt"):
    shutil.copy(here / "features" / name, out / name)
print(f"{len(train)} train questions, {sum(map(len, contexts.values()))} paragraphs in {len(contexts)} articles, "
      f"{len(cross)} cross pairs, {len(extra['input_ids'])} features")
