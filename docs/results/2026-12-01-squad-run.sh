#!/bin/bash
# SQuAD seeds on the lent GPU: bare stage functions (no DVC/Prefect there), datasets carried as wheels.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import pyarrow, datasets, torch, transformers; print('pyarrow', pyarrow.__version__, 'datasets', datasets.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" || { python3 -c "import pyarrow; print('pyarrow', pyarrow.__version__)"; exit 3; }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c "
import torch
from transformers import AutoModel, AutoTokenizer
AutoModel.from_pretrained('.gpu/embedded16', dtype=torch.float32).save_pretrained('/tmp/embedded')
AutoTokenizer.from_pretrained('.gpu/embedded16').save_pretrained('/tmp/embedded')" || exit 4
python3 benchmarks/squad_seeds.py --data-dir .gpu/data --train train-v1.1.json.gz --validation dev-v1.1.json.gz \
  --extra-validation xquad.en.json --seeds ${SEEDS:-1 2 3} --out $OUT/squad --work /tmp/work \
  -S model.name=/tmp/embedded "$@" 2>&1 | tee $OUT/squad-driver.log | grep -v '^{"seed"' | tail -30
