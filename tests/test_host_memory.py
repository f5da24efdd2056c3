"""CPU training hands freed heap pages back after every optimiser step (glibc malloc_trim)."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.train import host_memory, train
from rewardkit.train import loop as train_loop


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._malloc_trim() is None,
                    reason="needs glibc's malloc_trim (Linux)")
def test_trim_returns_freed_heap_pages():
    # 100 KB tensors live on the heap (below glibc's mmap threshold); keeping the last one alive pins the
    # heap's top, so without a trim none of the rest would go back to the OS.
    tensors = [torch.ones(25_000) for _ in range(2000)]  # ~200 MB
    keep = tensors[-1]
    del tensors
    before = _rss()
    assert host_memory.release_freed_memory()
    assert before - _rss() > 100 * 2 ** 20
    assert keep.sum() == 25_000


def test_the_loop_trims_after_every_optimiser_step(tiny_models, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_loop, "release_freed_memory", lambda: calls.append(1) or True)
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(24))
    cfg = load_config(TrainRunConfig, None, [f"model={tiny_models['llama']}", f"data.train={data}",
                                             "data.max_length=48", "train.progress=false", "train.batch_size=4",
                                             "train.grad_accum=2", f"output_dir={tmp_path / 'rm'}"])
    res = train(cfg)
    assert res.steps == 3 and len(calls) == 3  # 24 pairs / (4 x 2) per step: once per step, not per micro-batch
