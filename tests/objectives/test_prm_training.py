"""`loss=prm`: the step BCE and step metrics on hand examples, the objective's options, and a tiny Llama
learning to flag the steps that contain a marker word (held-out step accuracy > 0.9), then used through
`StepScorer` for Best-of-N and through the stepwise evaluation."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from rewardkit.config import ConfigError, EvalRunConfig, TrainRunConfig, load_config
from rewardkit.losses import get_loss, step_bce
from rewardkit.metrics import first_wrong, step_stats
from rewardkit.objectives import make_objective

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "examples" / "make_prm_steps.py"
DATA = ROOT / "examples" / "demo_data" / "prm_steps.jsonl"


def _generator():
    spec = importlib.util.spec_from_file_location("make_prm_steps", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_bce_on_a_hand_example():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    loss = step_bce(logits, labels, mask)
    # -log sigmoid(2) for a correct step, -log(1 - sigmoid(-1)) for a wrong one, 0 for the padding slot
    assert loss[0].tolist() == pytest.approx([math.log1p(math.exp(-2)), math.log1p(math.exp(-1)), 0.0])
    assert get_loss("prm") is step_bce


def test_step_metrics_on_a_hand_example():
    logits = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -5.0], [-1.0, -1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, False]])
    assert first_wrong(~labels.bool(), mask).tolist() == [1, -1, 1]  # row 2's slot 2 is padding
    assert first_wrong(logits <= 0, mask).tolist() == [1, -1, 0]
    s = step_stats(logits, labels, mask)
    assert s["step_accuracy"] == pytest.approx(5 / 7) and s["first_wrong_accuracy"] == pytest.approx(2 / 3)
    assert s["n_steps"] == 7 and s["n"] == 3 and s["wrong_step_rate"] == pytest.approx(3 / 7)


def test_generator_reproduces_the_example_file(tmp_path):
    gen = _generator()
    assert DATA.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in gen.rows(400, 0))


def _cfg(model, data, out, *extra):
    return load_config(TrainRunConfig, None, [
        f"model={model}", f"data.train={data}", "data.max_length=48", "data.eval_size=48", "train.progress=false",
        "train.lr=3e-3", "train.warmup_ratio=0", "train.batch_size=16", "train.log_every=5", "train.max_steps=30",
        "loss=prm", f"output_dir={out}", "seed=0", *extra])


def test_step_separator_is_a_prm_option(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="loss.step_separator"):
        make_objective(load_config(TrainRunConfig, None, [
            f"model={tiny_models['llama']}", "data.train=x.jsonl", "loss=bt", "loss.step_separator=|"]))
    with pytest.raises(ConfigError, match="train.center_rewards_coef"):
        make_objective(_cfg(tiny_models["llama"], "x.jsonl", tmp_path, "train.center_rewards_coef=0.1"))


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    from rewardkit.train import train

    d = tmp_path_factory.mktemp("prm")
    rows = _generator().rows(240, seed=1)
    data = write_jsonl(d / "train.jsonl", rows[:208])  # the last 48 of these are held out by data.eval_size
    held = write_jsonl(d / "held.jsonl", rows[208:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads; on a shared CPU they cost 5x
    try:
        result = train(_cfg(tiny_models["llama"], data, d / "run"))
    finally:
        torch.set_num_threads(threads)
    return result, d / "run", held


def test_tiny_model_learns_to_flag_marked_steps(trained):
    result, run, _ = trained
    stats = result.final_eval
    assert stats["step_accuracy"] > 0.9 and stats["first_wrong_accuracy"] > 0.8 and stats["step_auc"] > 0.95
    block = json.loads((run / "config.json").read_text())["rewardkit"]
    assert block["kind"] == "prm" and block["prm"]["step_separator"] == "\n" and block["objective"]["loss"] == "prm"
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert first["split"] == "train" and {"step_accuracy", "first_wrong_accuracy"} <= set(first)


def test_best_of_n_and_stepwise_eval_with_the_trained_model(trained, tmp_path):
    from rewardkit.eval.prm import evaluate_prm, is_stepwise_data
    from rewardkit.scoring import load_judge

    _, run, held = trained
    judge = load_judge(run)
    assert judge.kind == "prm"
    prompt = "Start at 3, then add 2, then multiply by 4."
    cands = ["I guess 3 + 2 = 6.\n6 * 4 = 24.", "3 + 2 = 5.\nI guess 5 * 4 = 21.", "3 + 2 = 5.\n5 * 4 = 20."]
    for how in ("min", "product"):
        assert load_judge(run, options={"aggregate": how}).rank(prompt, cands).best == 2
    steps = judge.score_steps([prompt], [cands[1]])[0]
    assert steps[0] > 0.5 > steps[1]  # the guess is the step flagged
    cfg = load_config(EvalRunConfig, None, [f"model={run}", f"data={held}", f"output={tmp_path / 'steps.jsonl'}"])
    assert is_stepwise_data(cfg.data)
    stats = evaluate_prm(cfg)
    assert stats["format"] == "stepwise" and stats["n"] == 32 and stats["step_accuracy"] > 0.9
    out = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert len(out) == 32 and len(out[0]["steps"]) == len(out[0]["labels"])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert not is_stepwise_data(load_config(EvalRunConfig, None, [f"model={run}", f"data={pairs}"]).data)


def test_cli_eval_rank_and_score_with_the_trained_model(trained, tmp_path, capsys):
    from rewardkit.cli import main

    _, run, held = trained
    assert main(["eval", str(run), str(held), "--json"]) == 0  # stepwise rows are detected
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["format"] == "stepwise" and stats["step_accuracy"] > 0.9 and stats["skipped_rows"] == 0
    prompt = "Start at 3, then add 2, then multiply by 4."
    rows = write_jsonl(tmp_path / "bon.jsonl", [{"prompt": prompt, "responses": [
        "3 + 2 = 5.\nI guess 5 * 4 = 21.", "3 + 2 = 5.\n5 * 4 = 20.", "I guess 3 + 2 = 6.\n6 * 4 = 24."]}])
    assert main(["rank", str(run), "--input", str(rows), "--output", str(tmp_path / "ranked.jsonl"),
                 "model.aggregate=product"]) == 0
    assert json.loads((tmp_path / "ranked.jsonl").read_text().splitlines()[0])["best_index"] == 1
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": prompt, "response": "3 + 2 = 5.\nI guess 5 * 4 = 21."}])
    assert main(["score", str(run), "--input", str(one), "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = json.loads((tmp_path / "scored.jsonl").read_text().splitlines()[0])
    assert len(scored["steps"]) == 2 and scored["steps"][0] > 0.5 > scored["steps"][1]
    assert scored["score"] == pytest.approx(min(scored["steps"]))  # model.aggregate defaults to min
