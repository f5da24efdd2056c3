#!/usr/bin/env bash
# The checks that need CUDA, in one go (about 5-7 minutes on one modern GPU; this machine has none):
#   1. pytest tests/gpu: flash-attn varlen packing == padded (where flash-attn is installed), a bf16 training
#      step, DDP on every GPU (2+ GPUs) == one process with the global batch, FSDP trains and saves a whole
#      model, DeepSpeed ZeRO-2/3 start, train and save (where deepspeed is installed);
#   2. bench/train_vs_trl.py, rewardkit's side on CUDA: MiniLM-L6 on 1,000 HH pairs (needs ../shared/data/
#      hh-harmless). The TRL side of that script is pinned to the CPU (use_cpu=True), so it is left out here.
# Usage: bench/gpu_check.sh [extra pytest args]      (from the repository root; PYTHON overrides the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s, built for CUDA %s)" % (torch.__version__, torch.version.cuda))
print("gpu_check: %d x %s, torch %s" % (torch.cuda.device_count(), torch.cuda.get_device_name(0), torch.__version__))
PYEOF

start=$SECONDS
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/gpu "$@"
echo "gpu_check: tests/gpu took $((SECONDS - start)) s"

if [ -f ../shared/data/hh-harmless/train.jsonl ]; then
    start=$SECONDS
    timeout 150 "$PY" bench/train_vs_trl.py --model minilm --pairs 1000 --eval-pairs 200 --engines rewardkit
    echo "gpu_check: bench took $((SECONDS - start)) s"
else
    echo "gpu_check: ../shared/data/hh-harmless/train.jsonl not found; bench/train_vs_trl.py skipped"
fi
