"""Training-loop properties on a tiny decoder: accumulation equals a bigger batch, bf16 runs, schedules."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.train import resolve_batching, train
from rewardkit.train.plan import resolve_pack_layout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("d") / "train.jsonl", synthetic_pairs(64))


def _run(model, data, out, *extra):
    cfg = load_config(TrainRunConfig, None, [f"model={model}", f"data.train={data}", "data.max_length=48",
                                             "train.progress=false", "train.lr=1e-3", "train.warmup_ratio=0",
                                             "train.bf16=false",  # exact comparisons below; bf16 has its own test
                                             f"output_dir={out}", *extra])
    return train(cfg)


def test_grad_accumulation_equals_bigger_batch(tiny_models, data, tmp_path):
    # random batching: the 8 pairs of a big batch are exactly the two small batches of 4
    _run(tiny_models["llama"], data, tmp_path / "big", "train.batch_size=8", "train.max_steps=2", "train.batching=random")
    _run(tiny_models["llama"], data, tmp_path / "acc", "train.batch_size=4", "train.grad_accum=2", "train.max_steps=2",
         "train.batching=random")
    a, b = load_file(tmp_path / "big" / "model.safetensors"), load_file(tmp_path / "acc" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    rows = [json.loads(x) for x in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2] or rows[-1]["step"] == 2


def test_bf16_autocast_trains(tiny_models, data, tmp_path):
    res = _run(tiny_models["qwen2"], data, tmp_path / "bf16", "train.bf16=true", "train.max_steps=3",
               "data.eval_size=16")
    assert res.steps == 3 and res.final_eval["n"] == 16
    rows = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_schedule_warmup_then_decay(tiny_models, data, tmp_path, scheduler):
    _run(tiny_models["gpt2"], data, tmp_path / scheduler, "train.batch_size=8", "train.max_steps=8", "train.log_every=1",
         "train.warmup_ratio=0.25", f"train.scheduler={scheduler}")
    lrs = [json.loads(x)["lr"] for x in (tmp_path / scheduler / "metrics.jsonl").read_text().splitlines()
           if json.loads(x)["split"] == "train"]
    # each row logs the lr its step ran at, as HF's Trainer does: warmup over ceil(0.25 * 8) = 2 steps
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = get_scheduler("constant_with_warmup" if scheduler == "constant" else scheduler, opt,
                        num_warmup_steps=2, num_training_steps=8)
    used = []
    for _ in range(8):
        used.append(ref.get_last_lr()[0])
        opt.step()
        ref.step()
    assert lrs == pytest.approx(used) and lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])


def test_eval_size_holds_out_the_end(tiny_models, data, tmp_path):
    res = _run(tiny_models["bert"], data, tmp_path / "e", "data.eval_size=0.25", "train.max_steps=1")
    assert res.final_eval["n"] == 16


@pytest.mark.parametrize("opts", [["train.packing=plain"], ["train.packing=shared_prompt", "train.max_tokens=256"],
                                  ["train.packing=shared_prompt", "train.pack_layout=flat"],
                                  ["train.packing=plain", "train.pack_layout=flat"],
                                  ["train.packing=plain", "model.attn_implementation=eager"],
                                  ["train.max_tokens=200"], ["train.batching=random"], ["train.batching=grouped"],
                                  ["train.gradient_checkpointing=true"],
                                  ["train.gradient_checkpointing=true", "train.checkpoint_every=2"]])
def test_batching_and_packing_options_train(tiny_models, data, tmp_path, opts):
    res = _run(tiny_models["llama"], data, tmp_path / "o", "train.batch_size=8", "train.epochs=2", "train.log_every=1",
               "data.eval_size=16", *opts)
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert sum(r["pairs_per_s"] > 0 for r in train_rows) == len(train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert res.final_eval["accuracy"] >= 0.9
    if any("packing" in o for o in opts):
        assert max(r["padding_fraction"] for r in train_rows) < 0.5
    if "train.pack_layout=flat" in opts:  # no padding between units; on CPU, the row rounded up (1/16 at most)
        assert 0 < max(r["padding_fraction"] for r in train_rows) <= 1 / 16
    if "model.attn_implementation=eager" in opts:  # eager is kept: batch rows, not the flat layout's SDPA
        assert max(r["padding_fraction"] for r in train_rows) > 0


def test_checkpoint_every_below_one_is_refused(tiny_models, data, tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every"):
        _run(tiny_models["llama"], data, tmp_path / "c", "train.checkpoint_every=0")


def test_auto_batching_is_random_for_flat_rows_only():
    assert resolve_batching("auto", flat=True) == "random"
    assert resolve_batching("auto", flat=False) == "grouped"
    assert resolve_batching("grouped", flat=True) == "grouped"


def test_auto_pack_layout_is_batch_rows_on_cuda_under_sdpa_only():
    assert resolve_pack_layout("auto", "cuda", "sdpa") == "batch_rows"
    assert resolve_pack_layout("auto", "cpu", "sdpa") == "flat"
    assert resolve_pack_layout("auto", "cuda", "flash_attention_2") == "flat"  # one varlen call per layer already
    assert resolve_pack_layout("flat", "cuda", "sdpa") == "flat"  # an explicit choice stands
    assert resolve_pack_layout("batch_rows", "cpu", "sdpa") == "batch_rows"


def test_default_pack_layout_on_cpu_trains_flat(tiny_models, data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rewardkit.train"):
        _run(tiny_models["llama"], data, tmp_path / "rm", "train.max_steps=1", "train.batch_size=8")
    assert "pack layout: flat" in caplog.text


@pytest.mark.parametrize("packing", ["plain", "shared_prompt"])
def test_flat_layout_training_equals_padded_first_step(tiny_models, data, tmp_path, packing):
    """One padding-free row per batch with per-unit attention: the same update as plain padded batches."""
    common = ("train.max_steps=1", "train.batch_size=64")
    _run(tiny_models["llama"], data, tmp_path / "pad", *common, "train.packing=none")
    _run(tiny_models["llama"], data, tmp_path / "flat", *common, f"train.packing={packing}", "train.pack_layout=flat")
    a, b = load_file(tmp_path / "pad" / "model.safetensors"), load_file(tmp_path / "flat" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_packed_training_equals_padded_first_step(tiny_models, data, tmp_path):
    """All 64 pairs in one step, packed or padded: the same update (packing changes nothing but speed)."""
    _run(tiny_models["llama"], data, tmp_path / "pad", "train.max_steps=1", "train.batch_size=64",
         "train.batching=random", "train.row_length=4096")
    _run(tiny_models["llama"], data, tmp_path / "pack", "train.max_steps=1", "train.packing=plain",
         "train.row_length=4096", "train.max_tokens=4096")
    a, b = load_file(tmp_path / "pad" / "model.safetensors"), load_file(tmp_path / "pack" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_compiled_flat_training_equals_eager(tiny_models, data, tmp_path):
    """train.compile with the flat layout: the per-unit attention loop runs eagerly between compiled graphs (traced,
    each batch's unit sizes recompiled it: MiniLM ran 19x slower), and three steps give the eager run's weights."""
    import torch._dynamo

    torch._dynamo.reset()
    common = ("train.max_steps=3", "train.batch_size=8", "train.packing=shared_prompt", "train.pack_layout=flat")
    _run(tiny_models["llama"], data, tmp_path / "eager", *common)
    torch._dynamo.utils.counters.clear()
    _run(tiny_models["llama"], data, tmp_path / "compiled", *common, "train.compile=true")
    breaks = " ".join(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()
    assert "_flat_attention" in breaks  # the unit loop was left out of the graphs
    a, b = load_file(tmp_path / "eager" / "model.safetensors"), load_file(tmp_path / "compiled" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
