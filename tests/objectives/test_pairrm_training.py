"""loss=pairrm end to end: it learns an intransitive task (rock-paper-scissors) that no value-head model can,
the trained folder loads as a PairRanker, and combinations it cannot train are config errors."""

from __future__ import annotations

import json
import random

import pytest

from conftest import bert_tokenizer, write_jsonl
from rewardkit.cli import main
from rewardkit.config import ConfigError, TrainRunConfig, load_config
from rewardkit.objectives import make_objective
from rewardkit.scoring import RewardScorer, load_judge
from rewardkit.scoring.pairrm import PairRanker
from rewardkit.train import train

BEATS = {"rock": "scissors", "scissors": "paper", "paper": "rock"}
WORDS = ["red", "blue", "green", "tall", "small", "quick", "slow", "happy", "dark", "bright", "cold", "warm"]


def _rps_rows(n_prompts: int, seed: int) -> list[dict]:
    """Every prompt with all three pairs (winner chosen): a cycle, so any scalar reward orders at most 2 of a
    prompt's 3 pairs right. Prompts are random word draws, those of another seed held out."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_prompts):
        prompt = f"Game {rng.randrange(1000)}: {rng.choice(WORDS)} {rng.choice(WORDS)}. Your move?"
        rows += [{"prompt": prompt, "chosen": f"{w} {w} {w}", "rejected": f"{l} {l} {l}"} for w, l in BEATS.items()]
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a shared CPU they cost several times the time."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT (2 layers, hidden 64) whose weights are drawn 5x wider than BERT's default (std 0.1):
    at the default 0.02 the two answers' tokens barely interact at the start, and on a balanced cycle a
    pointwise gradient is exactly 0, so training sits at the saddle for a long, seed-dependent while."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tok = bert_tokenizer()
    cfg = tf.BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, initializer_range=0.1)
    path = tmp_path_factory.mktemp("pairrm-encoder")
    tf.BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rps(tmp_path_factory):
    d = tmp_path_factory.mktemp("rps")
    return write_jsonl(d / "train.jsonl", _rps_rows(40, 0)), write_jsonl(d / "test.jsonl", _rps_rows(20, 1))


def _cfg(model, train_file, out, loss, *extra):
    return load_config(TrainRunConfig, None, [
        f"model={model}", f"data.train={train_file}", "data.max_length=32", "train.progress=false", "train.lr=1e-3",
        "train.warmup_ratio=0", "train.batch_size=16", "train.log_every=5", "train.max_steps=60", f"loss={loss}",
        f"output_dir={out}", "seed=0", *extra])


@pytest.fixture(scope="module")
def runs(encoder, rps, tmp_path_factory):
    """The same data, model and budget trained as a pairwise ranker and as a value head (bt): their folders
    and final evals on the held-out prompts."""
    train_file, test_file = rps
    out = tmp_path_factory.mktemp("rps-runs")
    results = {loss: train(_cfg(encoder, train_file, out / loss, loss, f"data.eval={test_file}"))
               for loss in ("pairrm", "bt")}
    return {loss: (out / loss, r.final_eval) for loss, r in results.items()}


def _accuracy(judge, rows) -> float:
    """Held-out pair accuracy through the Judge interface (what `rewardkit eval` reads): P(chosen ≻ rejected) > 1/2."""
    comps = judge.compare([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    return sum(c.margin > 0 for c in comps) / len(comps)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairrm_learns_rock_paper_scissors_a_value_head_cannot(runs, rps):
    held_out = _rows(rps[1])
    out, final = runs["pairrm"]
    ranker = load_judge(out)
    assert isinstance(ranker, PairRanker)
    acc = _accuracy(ranker, held_out)
    assert acc > 0.95 and final["accuracy"] > 0.95, (acc, final)
    assert final["accuracy"] == pytest.approx(acc)  # training's eval reads the judge's margins
    metrics = _rows(out / "metrics.jsonl")
    assert metrics[-2]["loss"] < metrics[0]["loss"]
    saved = json.loads((out / "config.json").read_text())["rewardkit"]
    assert saved["kind"] == "pairrm" and saved["objective"]["loss"] == "pairrm" and saved["max_length"] == 32
    assert ranker.rank(held_out[0]["prompt"], ["rock rock rock", "paper paper paper"]).order == [1, 0]
    # a value head trained the same way: any scalar orders at most 2 of each prompt's 3 pairs right
    rm = load_judge(runs["bt"][0])
    assert isinstance(rm, RewardScorer)
    assert _accuracy(rm, held_out) <= 2 / 3 + 1e-9 and runs["bt"][1]["accuracy"] <= 2 / 3 + 1e-9


def test_cli_eval_and_rank_with_a_pair_ranker(runs, rps, tmp_path, capsys):
    out, _ = runs["pairrm"]
    held_out = _rows(rps[1])
    assert main(["eval", str(out), str(rps[1]), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # bf16=None: the precision the CLI resolves (bf16 where native for a model trained in it)
    assert stats["accuracy"] == pytest.approx(_accuracy(load_judge(out, bf16=None), held_out))
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "Game 7: red blue. Your move?",
                                                "responses": ["rock rock rock", "paper paper paper", "rock rock rock"]}])
    for strategy in ("matrix", "knockout"):
        ranked_file = tmp_path / f"ranked-{strategy}.jsonl"
        assert main(["rank", str(out), "--input", str(gen), "--output", str(ranked_file),
                     f"model.rank_strategy={strategy}"]) == 0
        ranked = _rows(ranked_file)[0]
        want = load_judge(out, bf16=None).rank("Game 7: red blue. Your move?", ranked["responses"], strategy=strategy)
        assert ranked["scores"] == pytest.approx(want.scores) and ranked["best_index"] == want.best == 1
    capsys.readouterr()
    assert main(["filter", str(out), "--input", str(gen), "--output", str(tmp_path / "f.jsonl"),
                 "threshold=0"]) == 2
    assert "compares responses and gives no score of its own" in capsys.readouterr().err


def test_decoders_and_pair_margins_are_config_errors(tiny_models, rps, tmp_path):
    train_file, _ = rps
    cfg = _cfg(tiny_models["llama"], train_file, tmp_path / "x", "pairrm")
    with pytest.raises(ConfigError, match="loss=pairrm.*decoder.*needs an encoder"):
        make_objective(cfg).build_model(cfg)
    with pytest.raises(ConfigError, match="loss=pairrm does not use data.margin_table"):
        make_objective(_cfg(tiny_models["bert"], train_file, tmp_path / "y", "pairrm", "data.margin_table=small"))


@pytest.mark.parametrize("loss", ["pairrm", "judge"])
def test_a_margin_column_is_refused_where_no_margin_applies(tiny_models, tmp_path, loss):
    """pairrm and judge label each order 1 or 0: the margin column was read and then silently ignored."""
    from rewardkit.data import DataError

    rows = [{"prompt": "p", "chosen": "a b", "rejected": "b a"}] * 3 + [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.5}]
    f = write_jsonl(tmp_path / "m.jsonl", rows)
    model = tiny_models["bert" if loss == "pairrm" else "llama"]
    with pytest.raises(DataError, match=rf"m.jsonl:line 4: field `margin`: loss={loss} takes no margins"):
        train(_cfg(model, f, tmp_path / "out", loss))
    assert not (tmp_path / "out" / "config.json").exists()
