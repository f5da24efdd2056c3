#!/usr/bin/env bash
# The checks that need CUDA, in one go (budget: under 8 minutes on one modern GPU; it ran on an H200 in 437 s, then 266 s:
# README "On a GPU"; on a machine without this project's packages, bench/device/prepare.sh + run.sh wrap it):
#   1. bench/train_vs_trl.py --device cuda: TRL RewardTrainer (defaults) and rewardkit on the same GPU, MiniLM-L6
#      on 1,000 HH pairs + 200 held out (needs ../shared/data/hh-harmless); rewardkit also with flat packing (one
#      attention call per unit; its CUDA default, batch rows, makes one per layer: 1.39-1.47x faster on an H200);
#   2. bench/score_vs_trl.py --device cuda: TRL evaluate, rewardkit, transformers pipeline, RewardScorer on texts;
#   3. pytest tests/gpu: flash-attn varlen packing == padded (where flash-attn is installed), a bf16 training
#      step, DDP on every GPU (2+ GPUs) == one process with the global batch, FSDP trains and saves a whole
#      model, DeepSpeed ZeRO-2/3 start, train and save (where deepspeed is installed);
#   4. bench/serve_load.py --server-args=--device=cuda: 64 one-text clients, batching on vs off, 12 s each.
# Usage: bench/gpu_check.sh [extra pytest args]      (from the repository root; PYTHON overrides the interpreter,
#        RESULTS=DIR also writes each bench's results there as JSON)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RESULTS=${RESULTS:-}
json() { [ -n "$RESULTS" ] && echo "--json $RESULTS/$1.json" || true; }
export HF_HUB_OFFLINE=1

"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s, built for CUDA %s)" % (torch.__version__, torch.version.cuda))
print("gpu_check: %d x %s, torch %s" % (torch.cuda.device_count(), torch.cuda.get_device_name(0), torch.__version__))
PYEOF

step() {  # step NAME SECONDS CMD...: run with a time limit; a failed step is reported, the next still runs
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    if timeout "$limit" "$@"; then echo "gpu_check: $name took $((SECONDS - t0)) s"
    else echo "gpu_check: $name FAILED or ran past ${limit} s (exit $?)"; fi
}

if [ -f ../shared/data/hh-harmless/train.jsonl ]; then
    step "train bench" 220 "$PY" bench/train_vs_trl.py --device cuda --model minilm --pairs 1000 --eval-pairs 200 \
        --engines trl rewardkit --also train.pack_layout=flat $(json train)
    step "score bench" 100 "$PY" bench/score_vs_trl.py --device cuda --model minilm --pairs 600 --repeats 3 $(json score)
else
    echo "gpu_check: ../shared/data/hh-harmless/train.jsonl not found; train and score benches skipped"
fi
start=$SECONDS  # after the benches: their numbers are what a short GPU lease is for
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/gpu "$@" || echo "gpu_check: tests/gpu failed"
echo "gpu_check: tests/gpu took $((SECONDS - start)) s"
step "serve load" 70 "$PY" bench/serve_load.py --duration 12 --server-args=--device=cuda $(json serve)
