"""`make report`: calibrate the demo reward model, evaluate it on held-out pairs, write an HTML/markdown report.

Needs runs/demo from `make demo`. Its training held out the last `data.eval_size` pairs of its data (read from
runs/demo/train_config.yaml); the first half of those becomes the calibration dev split, the second half the
test split, so the temperature is never fitted on the pairs it is judged on. Equivalent commands:

  rewardkit calibrate runs/demo runs/demo/report/dev.jsonl
  rewardkit eval runs/demo runs/demo/report/test.jsonl --report-dir runs/demo/report
  rewardkit report runs/demo/report
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from rewardkit.cli import main as cli  # noqa: E402
from rewardkit.io import write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "demo"
OUT = RUN / "report"


def main() -> int:
    if not (RUN / "config.json").is_file():
        print(f"{RUN} has no trained model: run `make demo` first", file=sys.stderr)
        return 2
    cfg = yaml.safe_load((RUN / "train_config.yaml").read_text())
    held = int(cfg["data"]["eval_size"])
    if held < 2:
        print(f"{RUN} was trained without a held-out split (data.eval_size={held})", file=sys.stderr)
        return 2
    lines = [x for x in Path(cfg["data"]["train"]).read_text(encoding="utf-8").splitlines() if x.strip()]
    rows = [json.loads(x) for x in lines[-held:]]
    dev, test = OUT / "dev.jsonl", OUT / "test.jsonl"
    write_jsonl(dev, rows[:held // 2])
    write_jsonl(test, rows[held // 2:])
    for argv in (["calibrate", str(RUN), str(dev)],
                 ["eval", str(RUN), str(test), "--report-dir", str(OUT)],
                 ["report", str(OUT)]):
        print(f"\n$ rewardkit {' '.join(argv)}", flush=True)
        code = cli(argv)
        if code:
            return code
    print(f"\nopen {OUT / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
