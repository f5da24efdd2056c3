"""With train.trim_memory, CPU training hands freed heap pages back after every optimiser step (glibc
malloc_trim); by default it does not (the pages faulted in again cost speed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.train import host_memory, train
from rewardkit.train import loop as train_loop


_PROBE = """
import torch
from rewardkit.train import host_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

# 100 KB tensors live on the heap (below glibc's mmap threshold); keeping the last one alive pins the heap's top,
# so without a trim none of the rest goes back to the OS.
tensors = [torch.ones(25_000) for _ in range(2000)]  # ~200 MB
keep = tensors[-1]
del tensors
before = rss()
after_nothing = rss()
assert host_memory.release_freed_memory()
print(before - after_nothing, before - rss(), float(keep.sum()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._malloc_trim() is None,
                    reason="needs glibc's malloc_trim (Linux)")
def test_trim_returns_freed_heap_pages():
    # A fresh interpreter: in the test process, earlier tests' heap holes decide where the tensors go.
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout.split()
    untrimmed, trimmed, kept = int(out[0]), int(out[1]), float(out[2])
    assert untrimmed < 10 * 2 ** 20  # freed, yet still resident
    assert trimmed > 100 * 2 ** 20  # the trim gave it back
    assert kept == 25_000


@pytest.mark.parametrize("trim", [True, False])
def test_the_loop_trims_after_every_optimiser_step_when_asked(tiny_models, tmp_path, monkeypatch, trim):
    calls = []
    monkeypatch.setattr(train_loop, "release_freed_memory", lambda: calls.append(1) or True)
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(24))
    cfg = load_config(TrainRunConfig, None, [f"model={tiny_models['llama']}", f"data.train={data}",
                                             "data.max_length=48", "train.progress=false", "train.batch_size=4",
                                             "train.grad_accum=2", f"output_dir={tmp_path / 'rm'}",
                                             *(["train.trim_memory=true"] if trim else [])])
    res = train(cfg)
    # 24 pairs / (4 x 2) per step: once per step, not per micro-batch; never by default
    assert res.steps == 3 and len(calls) == (3 if trim else 0)
