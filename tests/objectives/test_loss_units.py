"""Families whose loss is a mean over something other than items (attributes: labelled values; prm: steps)
train the same model whatever way a step's items are split: one batch of 8 against 4 x grad_accum 2 here,
and N processes x B against 1 x N*B by the same weighting (`MicroBatch.units`, `Objective.loss_units`)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.train import train
from test_objectives_e2e import _rows
from test_prm_training import _generator


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("units")
    rows = _rows("attributes", 32)
    for i, r in enumerate(rows):  # rows carry 1 or 2 labelled values, unevenly spread over the batches
        r["helpful"] = None if i % 5 < 3 else r["helpful"]
    attrs = write_jsonl(d / "attributes.jsonl", rows)
    return {"attributes": attrs, "prm": write_jsonl(d / "prm.jsonl", _generator().rows(32, seed=3))}


CASES = {"attributes": ["loss=attributes", "data.columns.attributes=[helpful, verbosity]"],
         "prm": ["loss=prm", "data.max_length=96"]}


def _run(tiny, data, out, extra, *batching):
    cfg = load_config(TrainRunConfig, None, [
        f"model={tiny}", f"data.train={data}", "data.max_length=48", "train.progress=false", "train.lr=3e-3",
        "train.warmup_ratio=0", "train.bf16=false", "train.log_every=1", "train.max_steps=3", "seed=0",
        f"output_dir={out}", *extra, *batching])
    train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(out / "model.safetensors"), [r for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("loss", list(CASES))
def test_accumulation_trains_what_one_bigger_batch_does(loss, files, tiny_models, tmp_path):
    big, big_rows = _run(tiny_models["llama"], files[loss], tmp_path / "big", CASES[loss], "train.batch_size=8")
    acc, acc_rows = _run(tiny_models["llama"], files[loss], tmp_path / "acc", CASES[loss], "train.batch_size=4",
                         "train.grad_accum=2")
    for k in big:
        torch.testing.assert_close(acc[k], big[k], atol=1e-5, rtol=1e-4, msg=k)
    for a, b in zip(acc_rows, big_rows):  # the logged loss is the step's mean over its terms too
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"],
                                                                                                    rel=1e-4)
