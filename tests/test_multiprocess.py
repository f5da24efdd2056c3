"""Training on several processes (CPU, gloo): real 2-process runs launched the documented way (`accelerate
launch --config_file ... -m rewardkit train`), compared with one process. Dealing batches and shared evaluation
without a launch: test_process_sharding.py. The launches skip where a 2-process gloo group cannot start (see the
`launchable` fixture)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.scoring import run_model
from rewardkit.train import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "accelerate"


# --------------------------------------------------------------------------- launches

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK",
                                                                      "LOCAL_RANK", "MASTER_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    return env


_PROBE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
assert t.item() == 2
dist.destroy_process_group()
"""


@pytest.fixture(scope="session")
def launchable(tmp_path_factory) -> None:
    """Skip (with the reason) where two gloo processes cannot start here: no torch.distributed or gloo, no
    local TCP port, a sandbox without loopback networking, or REWARDKIT_SKIP_MULTIPROCESS set."""
    if os.environ.get("REWARDKIT_SKIP_MULTIPROCESS"):
        pytest.skip("REWARDKIT_SKIP_MULTIPROCESS is set")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    probe = tmp_path_factory.mktemp("probe") / "probe.py"
    probe.write_text(_PROBE)
    try:
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                            str(_free_port()), str(probe)], capture_output=True, text=True, env=_env(), timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"two gloo processes cannot start here: {e}")
    if p.returncode != 0:
        pytest.skip(f"two gloo processes cannot start here: {p.stderr.strip().splitlines()[-1:]}")


def _launch(args: list[str], *, launcher: str = "accelerate", env: dict[str, str] | None = None,
            timeout: int = 120) -> subprocess.CompletedProcess:
    """`rewardkit train ARGS` on two CPU processes: accelerate launch with cpu_2proc.yaml (the documented way),
    torchrun, or plain torchrun without ACCELERATE_USE_CPU (`torchrun-gpu-style`)."""
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
               "-m", "rewardkit", "train", *args]  # the config's main_process_port 0 picks a free port
        env = env if env is not None else _env(ACCELERATE_USE_CPU="true")
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "rewardkit", "train", *args]
        env = env if env is not None else _env(ACCELERATE_USE_CPU="true")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp")
    # 57 pairs = 7 global batches of 8 + 1: the last global micro-batch leaves one process a stand-in
    return write_jsonl(d / "train.jsonl", synthetic_pairs(57)), write_jsonl(d / "eval.jsonl", synthetic_pairs(21, 1))


def _args(model, data, out, *extra) -> list[str]:
    return [f"model={model}", f"data.train={data[0]}", f"data.eval={data[1]}", "data.max_length=48",
            "train.lr=1e-3", "train.warmup_ratio=0", "train.bf16=false", "train.log_every=1", "train.progress=false",
            "seed=0", f"output_dir={out}", *extra]


def _rows(out: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def _summary_lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{") and '"output_dir"' in x]


@pytest.mark.usefixtures("launchable")
def test_two_processes_equal_one_process_with_twice_the_batch(tiny_models, data, tmp_path):
    """2 x batch 4 (accumulating 2) == 1 x batch 8 (accumulating 2): same steps, per-step losses, final
    weights and eval metrics (21 eval pairs, not divisible by 2); one summary line."""
    common = ("train.epochs=1", "train.grad_accum=2")
    one = tmp_path / "one"
    res = train(load_config(TrainRunConfig, None, _args(tiny_models["llama"], data, one, *common, "train.batch_size=8")))
    t0 = time.perf_counter()
    two = tmp_path / "two"
    p = _launch(_args(tiny_models["llama"], data, two, *common, "train.batch_size=4"))
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"2-process launch: {wall:.1f} s")
    summaries = _summary_lines(p.stdout)
    assert len(summaries) == 1  # the main process prints, the other does not
    assert res.steps == summaries[0]["steps"] == 4  # ceil(8 global micro-batches / 2), not 2 epochs' worth
    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("loss", "accuracy", "margin_mean", "reward_mean", "reward_std", "lr"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5), (ra["step"], key)
    _assert_same_weights(one, two, atol=1e-5)
    ea, eb = _rows(one, "eval")[-1], _rows(two, "eval")[-1]
    assert eb["n"] == ea["n"] == 21 and eb["ties"] == ea["ties"]
    for key, value in ea.items():
        if isinstance(value, float):
            assert eb[key] == pytest.approx(value, abs=1e-5), key
    for key in ("accuracy", "loss", "margin_mean", "reward_mean", "reward_std"):
        assert summaries[0][key] == pytest.approx(res.final_eval[key], abs=1e-5)
    saved = json.loads((two / "config.json").read_text())["rewardkit"]
    assert saved["mean"] == pytest.approx(res.final_eval["reward_mean"], abs=1e-5)


@pytest.mark.usefixtures("launchable")
def test_two_process_resume_equals_an_uninterrupted_run(tiny_models, data, tmp_path):
    """Checkpoint at step 2 of 4 (every process's RNG and optimiser state, trainer_state.json by the main
    process), resume=auto in a fresh folder: the same steps 3-4 and final weights as the uninterrupted run."""
    common = ("train.max_steps=4", "train.batch_size=4", "data.eval=")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    t0 = time.perf_counter()
    p = _launch(_args(tiny_models["llama"], data, full, *common, "train.save_every=2"))
    assert p.returncode == 0, p.stderr[-3000:]
    state = json.loads((full / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 2
    assert sorted(x.name for x in (full / "checkpoints" / "step-2").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    p = _launch(_args(tiny_models["llama"], data, resumed, *common, "train.resume=auto"))
    print(f"two 2-process launches: {time.perf_counter() - t0:.1f} s")
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_same_weights(full, resumed, atol=1e-6)
    a, b = _rows(full), _rows(resumed)
    assert [r["step"] for r in b] == [3, 4]
    for ra, rb in zip(a[2:], b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6)


@pytest.mark.usefixtures("launchable")
def test_resume_with_another_process_count_is_refused(tiny_models, data, tmp_path):
    out = tmp_path / "r"
    train(load_config(TrainRunConfig, None, _args(tiny_models["llama"], data, out, "train.max_steps=2",
                                                  "train.save_every=1", "data.eval=")))
    p = _launch(_args(tiny_models["llama"], data, out, "train.max_steps=3", "train.resume=auto", "data.eval="))
    assert p.returncode != 0
    assert "was written by 1 process(es); resume it with as many (this launch has 2)" in p.stderr


@pytest.mark.usefixtures("launchable")
def test_torchrun_without_the_cpu_flag_stops_with_how_to_launch(tiny_models, data, tmp_path):
    """Plain torchrun on a machine without GPUs: accelerate would run two independent copies writing the same
    output_dir; each process stops with one error line (exit 2) that says how to launch."""
    out = tmp_path / "g"
    p = _launch(_args(tiny_models["llama"], data, out, "train.max_steps=1"), launcher="torchrun", env=_env())
    assert p.returncode != 0
    errors = [x for x in p.stderr.splitlines() if x.startswith("rewardkit train: error:")]
    # torchrun stops the other process once one exits, so one or both get to print
    assert errors and "WORLD_SIZE=2" in errors[0] and "ACCELERATE_USE_CPU=true accelerate launch" in errors[0]
    assert "exitcode  : 2" in p.stderr or "exitcode: 2" in p.stderr.replace("  ", " ")
    assert not out.exists()


@pytest.mark.usefixtures("launchable")
def test_accelerate_cpu_flag_one_process_is_refused(tiny_models, data, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate needs mpirun for more):
    rewardkit says so instead of silently training on one."""
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "rewardkit", "train",
           *_args(tiny_models["llama"], data, out, "train.max_steps=1")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT)
    assert p.returncode != 0
    # one message; accelerate echoes the child's stderr tail in its own traceback, so it may show twice
    errors = sorted({x for x in p.stderr.splitlines() if x.startswith("rewardkit train: error:")})
    assert len(errors) == 1 and "starts only ONE process" in errors[0], p.stderr
    assert not out.exists()


@pytest.mark.usefixtures("launchable")
def test_fsdp_cannot_run_on_cpu_and_says_so(tiny_models, data, tmp_path):
    """accelerate enables FSDP only on accelerators; on CPUs the FSDP config would silently run DDP."""
    out = tmp_path / "f"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
           "--num_processes", "2", "--main_process_port", str(_free_port()), "-m", "rewardkit", "train",
           *_args(tiny_models["llama"], data, out, "train.max_steps=1")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(ACCELERATE_USE_CPU="true"), timeout=120,
                       cwd=ROOT)
    assert p.returncode != 0
    assert "rewardkit train: error: an FSDP launch, but accelerate runs MULTI_CPU" in p.stderr


# --------------------------------------------------------------------------- the shipped accelerate configs

@pytest.mark.parametrize("name, kind, extra", [
    ("cpu_2proc.yaml", "MULTI_GPU", {}), ("ddp.yaml", "MULTI_GPU", {}),
    ("fsdp.yaml", "FSDP", {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_reshard_after_forward": True}),
    ("deepspeed_zero2.yaml", "DEEPSPEED", {"zero_stage": 2}),
    ("deepspeed_zero3.yaml", "DEEPSPEED", {"zero_stage": 3, "zero3_save_16bit_model": True}),
])
def test_accelerate_configs_parse(name, kind, extra):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert cfg.distributed_type.value == kind and cfg.num_machines == 1
    section = cfg.fsdp_config if kind == "FSDP" else cfg.deepspeed_config
    for key, value in extra.items():
        assert section[key] == value, key
    if kind == "FSDP":  # the layer class comes from the backbone's _no_split_modules
        assert "fsdp_transformer_layer_cls_to_wrap" not in section
    if name == "cpu_2proc.yaml":
        assert cfg.use_cpu and cfg.num_processes == 2 and cfg.main_process_port == 0


# --------------------------------------------------------------------------- the sharded-weights save (FSDP, ZeRO-3)

@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_weightless_copy_filled_with_a_full_state_dict_saves_the_trained_model(tiny_models, tmp_path, kind):
    """What the main process does after FSDP/ZeRO-3 training: a meta-device copy of the model made before
    sharding, filled with the gathered state dict (keys of ObjectiveModule), saves the trained model."""
    from rewardkit.data.tokenize import SequenceEncoder
    from rewardkit.models.reward_model import RewardModel
    from rewardkit.objectives import ObjectiveModule
    from rewardkit.scoring import RewardScorer
    from rewardkit.train import fill_weights, structure_copy

    model, tok = RewardModel.from_pretrained(str(tiny_models[kind]), seed=0)
    model.objective_info = {"loss": "bt"}
    template = structure_copy(model)
    assert all(p.is_meta for p in template.parameters())  # no memory until filled
    with torch.no_grad():  # "training" changes the weights after the copy
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.mean, model.std, model.temperature = 0.25, 2.0, 1.0
    state = {k: v.clone() for k, v in ObjectiveModule(model, None).state_dict().items()}
    saved = fill_weights(template, model, state)
    saved.save_pretrained(tmp_path / "m", tok, max_length=64)
    enc = SequenceEncoder(tok, 64, model.is_encoder)
    seqs = [enc.encode("Tell me about tea.", "Tea is a drink."), enc.encode("Hi", "Go away.")]
    expected = run_model(model, seqs, pad_id=tok.pad_token_id).score
    scorer = RewardScorer.load(tmp_path / "m")
    torch.testing.assert_close(scorer.run(seqs).score, expected, atol=1e-5, rtol=0)
    assert scorer.model.mean == 0.25 and scorer.model.std == 2.0
    assert scorer.model.objective_info == {"loss": "bt"}


def _launch_script(tmp_path: Path, source: str, args: list[str]) -> subprocess.CompletedProcess:
    """`source` (a script that patches rewardkit, then runs its CLI) as `train ARGS` on two CPU processes."""
    script = tmp_path / "patched_rewardkit.py"
    script.write_text(source)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
           str(script), "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(ACCELERATE_USE_CPU="true"), timeout=180,
                          cwd=ROOT)


_NAN_ON_RANK_1 = """
import dataclasses, os, sys
from rewardkit.train import loop

class NanOnRank1(loop.ObjectiveModule):
    calls = 0

    def forward(self, batch):
        res = super().forward(batch)
        NanOnRank1.calls += 1
        if os.environ.get("RANK") == "1" and NanOnRank1.calls == 3:  # this process's 3rd step only
            res = dataclasses.replace(res, loss=res.loss * float("nan"))
        return res

loop.ObjectiveModule = NanOnRank1
from rewardkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.usefixtures("launchable")
def test_a_nan_on_one_process_skips_the_step_on_both(tiny_models, data, tmp_path):
    """Rank 1's loss goes NaN at step 3, rank 0's stays finite: both skip that step (the main process counts it
    and warns), neither applies a NaN update, and the run trains on to a finite model."""
    out = tmp_path / "rm"
    p = _launch_script(tmp_path, _NAN_ON_RANK_1, _args(tiny_models["llama"], data, out, "train.max_steps=5",
                                                       "train.batch_size=4"))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _rows(out)
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 0, 0]
    assert "loss" not in rows[2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["step"] != 3)
    assert "step 3: loss" in p.stderr and "optimiser step skipped (1 in a row)" in p.stderr
    weights = load_file(out / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert len(_summary_lines(p.stdout)) == 1


_FAIL_ON_RANK_1 = """
import os, sys
from rewardkit.train import loop

class FailOnRank1(loop.ObjectiveModule):
    calls = 0

    def forward(self, batch):
        FailOnRank1.calls += 1
        if os.environ.get("RANK") == "1" and FailOnRank1.calls == 3:
            raise ValueError("injected bad batch on rank 1")
        return super().forward(batch)

loop.ObjectiveModule = FailOnRank1
from rewardkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.usefixtures("launchable")
def test_a_process_that_fails_ends_the_other_with_one_line_each(tiny_models, data, tmp_path):
    """Rank 1 fails (one line, exit 2); rank 0 loses it in the next collective and says so in one line instead
    of gloo's traceback; nothing hangs and the run's folder is gone."""
    out = tmp_path / "rm"
    p = _launch_script(tmp_path, _FAIL_ON_RANK_1, _args(tiny_models["llama"], data, out, "train.max_steps=6",
                                                        "train.batch_size=4"))
    assert p.returncode != 0
    errors = [x for x in p.stderr.splitlines() if "rewardkit train: error:" in x]
    assert any("injected bad batch on rank 1" in x for x in errors), p.stderr[-3000:]
    assert any("another training process failed" in x for x in errors), p.stderr[-3000:]
    assert "[rank0]: Traceback" not in p.stderr and "Connection closed by peer" not in p.stderr.split(
        "another training process failed")[0][-200:]
    assert not out.exists()
