"""Dataset mixing: sources by weight, drawn per epoch with a seed; named eval sets; config forms."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import ConfigError, Source, TrainRunConfig, load_config
from rewardkit.data.mixing import eval_sources, mixture_counts, mixture_indices, training_sources


def test_counts_follow_the_weights():
    assert mixture_counts([100, 100], [0.7, 0.3]) == [140, 60]
    assert mixture_counts([10, 1000], [1, 1]) == [505, 505]  # the small source repeats, the big one is cut
    assert mixture_counts([10, 10], [1, 0]) == [20, 0]


def test_draw_is_seeded_per_epoch_and_repeats_only_when_needed():
    sizes, weights = [10, 1000], [1.0, 1.0]
    a0 = mixture_indices(sizes, weights, seed=3, epoch=0)
    assert a0 == mixture_indices(sizes, weights, seed=3, epoch=0)
    assert a0 != mixture_indices(sizes, weights, seed=3, epoch=1)
    assert a0 != mixture_indices(sizes, weights, seed=4, epoch=0)
    small = Counter(i for i in a0 if i < 10)
    big = [i for i in a0 if i >= 10]
    assert sum(small.values()) == 505 and set(small) == set(range(10))  # each row ~50 times
    assert max(small.values()) - min(small.values()) <= 1  # whole passes before any row repeats again
    assert len(big) == 505 and len(set(big)) == 505 and all(10 <= i < 1010 for i in big)  # no repeats


def test_config_forms(tmp_path):
    cfg = load_config(TrainRunConfig, None, ["model=m", "data.train=[{path: a.jsonl, weight: 0.7}, b.jsonl]",
                                             "data.eval={hh: h.jsonl, other: {path: o.jsonl, format: explicit}}"])
    assert cfg.data.train == [Source(path="a.jsonl", weight=0.7), Source(path="b.jsonl")]
    specs = training_sources(cfg.data)
    assert [(s.name, s.weight, s.format) for s in specs] == [("a", 0.7, "auto"), ("b", 1.0, "auto")]
    sets = eval_sources(cfg.data)
    assert list(sets) == ["hh", "other"] and sets["other"].format == "explicit" and sets["hh"].path == "h.jsonl"
    plain = load_config(TrainRunConfig, None, ["data.train=x.jsonl", "data.eval=y.jsonl"])
    assert [s.path for s in training_sources(plain.data)] == ["x.jsonl"] and list(eval_sources(plain.data)) == ["eval"]
    with pytest.raises(ConfigError, match="weight"):
        load_config(TrainRunConfig, None, ["data.train=[{path: a.jsonl, weight: -1}]"])


def test_objective_data_keeps_sources_and_named_sets(tiny_models, tmp_path):
    from rewardkit.data.tokenize import SequenceEncoder
    from rewardkit.models.reward_model import RewardModel
    from rewardkit.objectives import make_objective

    a = write_jsonl(tmp_path / "a.jsonl", synthetic_pairs(12, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", [{"q": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                           for r in synthetic_pairs(8, seed=2)])
    cfg = load_config(TrainRunConfig, None, [
        f"model={tiny_models['llama']}", f"data.train=[{{path: {a}, weight: 2}}, {{path: {b}, columns: {{prompt: q}}}}]",
        "data.eval_size=2", "data.max_length=64"])
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    data = make_objective(cfg).load_data(cfg, SequenceEncoder(tok, 64, False))
    assert [(s.name, s.start, s.size, s.weight) for s in data.sources] == [("a", 0, 10, 2.0), ("b", 10, 6, 1.0)]
    assert data.mixed and len(data.train) == 16
    assert {k: len(v) for k, v in data.eval_sets.items()} == {"a": 2, "b": 2} and len(data.eval) == 4


def test_mixture_dataset_redraws_per_epoch_with_a_fixed_length():
    from rewardkit.data.mixing import MixtureDataset

    items = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(40)]
    ds = MixtureDataset(items, [4, 40], [1.0, 1.0], seed=0)
    first = [ds[i] for i in range(len(ds))]
    assert len(ds) == 44 and sum(x.startswith("a") for x in first) == 22  # the small source repeats
    ds.set_epoch(1)
    second = [ds[i] for i in range(len(ds))]
    assert len(second) == 44 and second != first
    assert ds[(0, 1)] == (second[0], second[1]) and ds.lengths(len) == [len(x) for x in second]


def test_training_on_a_mixture_reports_each_eval_set(tiny_models, tmp_path, caplog):
    import json
    import logging

    from rewardkit.train import train

    a = write_jsonl(tmp_path / "a.jsonl", synthetic_pairs(24, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", synthetic_pairs(8, seed=2))
    ha = write_jsonl(tmp_path / "ha.jsonl", synthetic_pairs(6, seed=3))
    hb = write_jsonl(tmp_path / "hb.jsonl", synthetic_pairs(5, seed=4))
    cfg = load_config(TrainRunConfig, None, [
        f"model={tiny_models['llama']}", f"data.train=[{{path: {a}, weight: 1}}, {{path: {b}, weight: 3}}]",
        f"data.eval={{ha: {ha}, hb: {hb}}}", "data.max_length=48", "train.batch_size=4", "train.epochs=2",
        "train.bf16=false", "train.progress=false", "train.log_every=1", f"output_dir={tmp_path / 'rm'}", "seed=0"])
    with caplog.at_level(logging.INFO, logger="rewardkit"):
        res = train(cfg)
    assert "training source b: 8 pairs, weight 3 -> 24 per epoch" in caplog.text
    assert res.steps == 2 * (32 // 4)  # each epoch draws 8 + 24 pairs
    evals = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "eval"]
    assert evals[-1]["n"] == 11 and evals[-1]["ha/n"] == 6 and evals[-1]["hb/n"] == 5
    assert "ha/accuracy" in res.final_eval and "hb/loss" in res.final_eval


def test_an_eval_set_that_reads_the_training_data_is_refused(tmp_path):
    """data.eval naming the training file, or the same split of a DatasetDict folder (data.split serves both):
    the "held-out" accuracy would be training accuracy."""
    from rewardkit.data.mixing import check_held_out

    def specs(*overrides):
        d = load_config(TrainRunConfig, None, list(overrides)).data
        return training_sources(d), eval_sources(d)

    with pytest.raises(ValueError, match="data.eval: reads the same data as data.train"):
        check_held_out(*specs(f"data.train={tmp_path}/dd", f"data.eval={tmp_path}/dd"))
    with pytest.raises(ValueError, match="data.eval.dev: reads the same data"):
        same = f"{tmp_path}/../{tmp_path.name}/p.jsonl"  # another spelling of the training file
        check_held_out(*specs(f"data.train={tmp_path}/p.jsonl", f"data.eval={{dev: {same}}}"))
    check_held_out(*specs(f"data.train={tmp_path}/dd", f"data.eval={{test: {{path: {tmp_path}/dd, split: test}}}}"))
    check_held_out(*specs(f"data.train={tmp_path}/p.jsonl", f"data.eval={tmp_path}/q.jsonl"))
