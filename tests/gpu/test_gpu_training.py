"""CUDA only (skipped elsewhere): a bf16 training step, and the shipped accelerate configs on the GPUs of this
machine: DDP (needs 2+ GPUs) equals one process with the global batch, FSDP trains and saves a whole model that
scores as the run's own evaluation did, DeepSpeed ZeRO-2/3 start, train a step and save (needs deepspeed)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "accelerate"
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    return write_jsonl(d / "train.jsonl", synthetic_pairs(64)), write_jsonl(d / "eval.jsonl", synthetic_pairs(21, 1))


def _args(model, data, out, *extra) -> list[str]:
    return [f"model={model}", f"data.train={data[0]}", f"data.eval={data[1]}", "data.max_length=48", "train.lr=1e-3",
            "train.warmup_ratio=0", "train.log_every=1", "train.progress=false", "seed=0", f"output_dir={out}", *extra]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: str, n: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--num_processes", str(n), "--main_process_port", str(_port()), "-m", "rewardkit", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def _rows(out: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _summaries(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{") and '"output_dir"' in x]


def test_bf16_training_step_on_cuda(tiny_models, data, tmp_path):
    res = train(load_config(TrainRunConfig, None, _args(tiny_models["qwen2"], data, tmp_path / "bf16",
                                                        "train.bf16=true", "train.max_steps=3", "train.batch_size=8")))
    assert res.steps == 3 and res.final_eval["n"] == 21
    rows = _rows(tmp_path / "bf16")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] + 0.05


@pytest.mark.skipif(GPUS < 2, reason="DDP needs 2+ GPUs")
def test_ddp_on_all_gpus_equals_one_process(tiny_models, data, tmp_path):
    common = ("train.bf16=false", "train.epochs=1")
    one = train(load_config(TrainRunConfig, None, _args(tiny_models["llama"], data, tmp_path / "one", *common,
                                                        f"train.batch_size={2 * GPUS}")))
    p = _launch("ddp.yaml", GPUS, _args(tiny_models["llama"], data, tmp_path / "ddp", *common, "train.batch_size=2"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(_summaries(p.stdout)) == 1
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "ddp")
    assert [r["step"] for r in a] == [r["step"] for r in b] and one.steps == b[-1]["step"]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-4)
    wa, wb = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-3, msg=k)
    assert _rows(tmp_path / "ddp", "eval")[-1]["accuracy"] == pytest.approx(one.final_eval["accuracy"])


def test_fsdp_trains_and_saves_a_whole_model(tiny_models, data, tmp_path):
    from rewardkit.scoring import RewardScorer

    out = tmp_path / "fsdp"
    p = _launch("fsdp.yaml", GPUS, _args(tiny_models["llama"], data, out, "train.bf16=false", "train.max_steps=4",
                                         "train.batch_size=4", "train.save_every=2"))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = _summaries(p.stdout)
    assert len(summary) == 1 and summary[0]["steps"] == 4 and summary[0]["n"] == 21
    assert (out / "checkpoints" / "step-2" / "trainer_state.json").exists()
    # the saved folder is whole: scoring it again gives the run's final eval
    rows = [json.loads(x) for x in data[1].read_text().splitlines()]
    scorer = RewardScorer.load(out, device="cuda")
    rc = torch.tensor(scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]))
    rr = torch.tensor(scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows]))
    assert float((rc > rr).double().mean()) == pytest.approx(summary[0]["accuracy"])
    assert float((rc - rr).mean()) == pytest.approx(summary[0]["margin_mean"], abs=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_configs_start_train_and_save(tiny_models, data, tmp_path, config):
    out = tmp_path / config.split(".")[0]
    p = _launch(config, GPUS, _args(tiny_models["llama"], data, out, "train.bf16=true", "train.max_steps=2",
                                    "train.batch_size=4"))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = _summaries(p.stdout)
    assert len(summary) == 1 and summary[0]["steps"] == 2 and summary[0]["n"] == 21
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
