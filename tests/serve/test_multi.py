"""Several models in one server: the models file, weighted sum and the Llama 2 rule against single scoring."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from serve_helpers import ServerThread, httpx
from serve_helpers import rm_dirs  # noqa: F401  (fixture)

from rewardkit.config import ConfigError  # noqa: E402
from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.serve.app import create_app  # noqa: E402
from rewardkit.serve.combine import FieldMissing, Llama2, WeightedSum, load_models_config  # noqa: E402
from rewardkit.serve.service import RewardService, ServeSettings  # noqa: E402

TEXTS = ["<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\nI can't help.<|im_end|>",
         "<|im_start|>user\nTell me about tea.<|im_end|>\n<|im_start|>assistant\nTea is a drink.<|im_end|>",
         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>"]


@pytest.fixture(scope="module")
def raws(rm_dirs):  # noqa: F811
    return {name: RewardScorer.load(path).score_full_texts(TEXTS) for name, path in rm_dirs.items()}


def score(rm_dirs, rule, settings=ServeSettings(), normalize=None, fields=None):  # noqa: F811
    scorers = {n: RewardScorer.load(p) for n, p in rm_dirs.items()}
    service = RewardService(scorers, rule, settings, normalize=normalize)

    async def go():
        service.start()
        try:
            return await service.score_full_texts(TEXTS, fields)
        finally:
            service.stop()
    return asyncio.run(go())


def test_weighted_sum_with_per_model_normalisation(rm_dirs, raws):  # noqa: F811
    out = score(rm_dirs, WeightedSum({"llama": 1.0, "qwen2": 0.5}), normalize={"qwen2": True})
    want = raws["llama"] + 0.5 * (raws["qwen2"] + 0.25) / 0.5  # qwen2: mean -0.25, std 0.5
    torch.testing.assert_close(out.reward, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.raw, raws["llama"] + 0.5 * raws["qwen2"], atol=1e-4, rtol=1e-4)
    assert out.extra["qwen2_normalized"] == pytest.approx(((raws["qwen2"] + 0.25) / 0.5).tolist(), abs=1e-4)
    assert out.extra["llama_raw"] == pytest.approx(raws["llama"].tolist(), abs=1e-4)
    clipped = score(rm_dirs, WeightedSum({"llama": 1.0}), ServeSettings(clip=0.5))
    assert clipped.reward.abs().max() <= 0.5 and clipped.raw.abs().max() > 0.5


def test_llama2_rule_from_a_field_and_from_a_classifier(rm_dirs, raws):  # noqa: F811
    rule = Llama2(safety="llama", helpfulness="qwen2", threshold=0.15, is_safety_field="is_safety")
    out = score(rm_dirs, rule, fields={"is_safety": [True, False, False]})
    p_s, p_h = torch.sigmoid(raws["llama"]), torch.sigmoid(raws["qwen2"])
    use_safety = torch.tensor([True, False, False]) | (p_s < 0.15)
    want = torch.where(use_safety, p_s, p_h).clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(out.reward, torch.log(want / (1 - want)), atol=1e-3, rtol=1e-3)
    assert out.extra["is_safety"] == [1.0, 0.0, 0.0] and out.extra["used_safety"] == use_safety.float().tolist()
    with pytest.raises(FieldMissing, match="request field `is_safety`"):
        score(rm_dirs, rule)

    by_cls = Llama2(safety="llama", helpfulness="qwen2", is_safety_classifier="qwen2", classifier_threshold=0.5)
    out = score(rm_dirs, by_cls)
    assert out.extra["is_safety"] == (torch.sigmoid(raws["qwen2"]) >= 0.5).float().tolist()


def test_models_file(tmp_path, rm_dirs):  # noqa: F811
    good = tmp_path / "models.yaml"
    good.write_text(f"models:\n  help: {rm_dirs['qwen2']}\n  safe: {{path: {rm_dirs['llama']}, normalize: true}}\n"
                    "combine: {rule: llama2, safety: safe, helpfulness: help, is_safety_field: labels,"
                    " is_safety_value: safety}\n")
    cfg = load_models_config(good)
    assert cfg.models["safe"].normalize is True and cfg.rule.is_safety_value == "safety"
    opt_in = tmp_path / "random.yaml"  # a plain backbone is served only when its entry opts in, as model.* does
    opt_in.write_text(f"models:\n  a: {{path: {rm_dirs['llama']}, allow_random_head: true}}\n")
    assert load_models_config(opt_in).models["a"].options == {"allow_random_head": True}
    for text, msg in [
        ("models: {a: x}\ncombine: {rule: sum}", "combine.rule: expected one of"),
        ("models: {a: x, b: y}", "combine: required with 2 models"),
        ("models: {a: x}\ncombine: {rule: weighted_sum, weights: {a: 1, c: 2}}", "unknown model\\(s\\) c"),
        ("models: {a: {path: x, dtype: bf16}}", "models.a: expected a path or a mapping"),
        ("models: {a: x}\ncombine: {rule: llama2, safety: a, helpfulness: a, thresh: 1}", "unknown key\\(s\\) thresh"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_models_config(bad)

    # over HTTP, with OpenRLHF's `labels` marking safety prompts
    settings = ServeSettings()
    with ServerThread(create_app(RewardService.load(cfg, settings), settings)) as s:
        r = httpx.post(s.url + "/get_reward", json={"query": TEXTS, "labels": ["safety", "general", "general"]})
        body = r.json()
        assert r.status_code == 200 and body["extra_logs"]["is_safety"] == [1.0, 0.0, 0.0]
        assert {"safe_raw", "safe_normalized", "help_raw", "used_safety"} <= set(body["extra_logs"])
        r = httpx.post(s.url + "/get_reward", json={"query": TEXTS})
        assert r.status_code == 422 and "`labels`" in r.json()["detail"]


TWO = "models: {a: x, b: y}\ncombine: "  # two models and the combination under test


@pytest.mark.parametrize("text,msg", [
    (TWO + "{rule: llama2, safety: a, helpfulness: b, threshold: high}",
     "combine.threshold: expected a finite number, got 'high'"),
    (TWO + "{rule: llama2, safety: a, helpfulness: b, threshold: 1.5}", r"combine.threshold: must be in \[0, 1\]"),
    (TWO + "{rule: llama2, safety: a, helpfulness: b, is_safety_classifier: b, classifier_threshold: .nan}",
     "combine.classifier_threshold: expected a finite number, got nan"),
    (TWO + "{rule: llama2, safety: [a], helpfulness: b}", r"combine.safety: expected a name, got \['a'\]"),
    (TWO + "{rule: weighted_sum, weights: {a: .nan, b: .inf}}", "combine.weights.a: expected a finite number"),
    (TWO + "{rule: weighted_sum, weights: {a: 1, b: -.inf}}", "combine.weights.b: expected a finite number"),
    (TWO + "{rule: weighted_sum, weights: {a: true}}", "combine.weights.a: expected a finite number, got True"),
    (TWO + "{rule: weighted_sum, weights: {a: null}}", "combine.weights.a: expected a finite number, got None"),
    (TWO + "{rule: weighted_sum, weights: [a, b]}", "combine.weights: expected a mapping"),
    ("models: {a: {path: x, beta: .nan}}", "models.a.beta: must be a finite number"),
    ("models: {a: {path: x, beta: -1}}", "models.a.beta: must be > 0"),
    ("models: {a: {path: x, max_length: lots}}", "models.a.max_length: expected int, got 'lots'"),
    ("models: {a: {path: x, max_length: 2}}", "models.a.max_length: must be at least 8"),
    ("models: {a: {path: x, normalize: 'yes'}}", "models.a.normalize: expected true or false, got 'yes'"),
    ("models: {a: {path: x, reference_free: 1}}", "models.a.reference_free: expected bool"),
])
def test_models_file_numbers_names_and_entries_are_checked(tmp_path, text, msg):
    """Combination numbers and names, and each model entry checked as that model's keys, naming the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"^{bad}: {msg}"):
        load_models_config(bad)


def test_rule_values_are_checked_and_kept_as_numbers(tmp_path):
    good = tmp_path / "good.yaml"  # PyYAML reads 1e-3 (no dot) as a string; it is a number, as in config files
    good.write_text("models: {a: x, b: {path: y, beta: 2, max_length: 128}}\n"
                    "combine: {rule: llama2, safety: a, helpfulness: b, threshold: 1e-3}\n")
    cfg = load_models_config(good)
    assert cfg.rule.threshold == 0.001 and cfg.models["b"].options == {"beta": 2.0}
    assert cfg.models["b"].max_length == 128
    with pytest.raises(ValueError, match="threshold: expected a finite number"):
        Llama2(safety="a", helpfulness="b", threshold=float("nan"))
    with pytest.raises(ValueError, match="weights.a: expected a finite number"):
        WeightedSum({"a": float("inf")})


def test_cli_serve_end_to_end(rm_dirs, tmp_path):  # noqa: F811
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "REWARDKIT_API_KEY": "k3y", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rewardkit.cli", "serve", str(rm_dirs["llama"]), "--port", str(port),
                             "--normalize", "--max-wait-ms", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:  # poll /health until it answers
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.05)
        r = httpx.post(url + "/get_reward", json={"query": TEXTS[:1]}, headers={"Authorization": "Bearer k3y"})
        raw = RewardScorer.load(rm_dirs["llama"]).score_full_texts(TEXTS[:1]).item()
        assert r.json()["rewards"][0] == pytest.approx((raw - 0.5) / 2.0, abs=1e-4)
        assert r.json()["extra_logs"]["reward_raw"][0] == pytest.approx(raw, abs=1e-4)
        assert httpx.post(url + "/get_reward", json={"query": ["x"]}).status_code == 401
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "k3y" not in out and "Tell me about" not in out


def test_cli_serve_defaults_match_the_library():
    from rewardkit.cli import build_parser
    from rewardkit.serve.batcher import BatchSettings

    args = build_parser().parse_args(["serve", "m"])
    s, b = ServeSettings(), BatchSettings()
    assert (args.max_texts, args.max_body_bytes, args.clip, args.normalize) == (s.max_texts, s.max_body_bytes, s.clip,
                                                                                s.normalize)
    assert (args.max_batch_size, args.max_batch_tokens, args.max_wait_ms, args.max_queue) == (
        b.max_batch_size, b.max_batch_tokens, b.max_wait_ms, b.max_queue)
    assert args.host == "127.0.0.1" and args.port == 5000
