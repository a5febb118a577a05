"""As run on the 2-core CPU (2026-11-26; cwd /tmp/f1, PYTHONPATH=the repository, python run.py run1). Issue #6 on XQuAD-en: sequential SparseGPT + logit and hidden-state distillation,
8 epochs, from the XQuAD-en dense baseline of /work/issue6 (F1 49.18). Stage functions, no DVC."""
import json, sys, time
from pathlib import Path

import yaml
from stages.evaluate import evaluate
from stages.finetune_sparse import finetune_sparse
from stages.params import validate
from stages.prune import prune

raw = yaml.safe_load(Path("/work/main/params.yaml").read_text())
raw["data"]["source"] = "json"
raw["train"].update(epochs=4, batch_size=16)
raw["prune"].update(method="sparsegpt", sequential=True)
raw["finetune"].update(epochs=8, batch_size=16, distill=True, distill_alpha=0.9, distill_hidden=10.0)
params = validate(raw)
ws = Path("/work/issue6")
out = Path(sys.argv[1]); out.mkdir(exist_ok=True)
t = time.time(); prune(params, ws / "models/baseline", out / "pruned", ws / "features"); prune_s = time.time() - t
t = time.time(); stats = finetune_sparse(params, ws / "features", out / "pruned", out / "sparse", ws / "models/baseline")
finetune_s = time.time() - t
scores = evaluate(params, ws / "features", {"dense": ws / "models/baseline", "pruned": out / "pruned", "sparse": out / "sparse"})
print(json.dumps({"scores": scores, "prune_s": round(prune_s, 1), "finetune_s": round(finetune_s, 1),
                  "final_loss": stats["final_loss"], "steps": stats["steps"]}))
