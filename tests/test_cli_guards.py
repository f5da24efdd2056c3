"""Checks made before any work, and how a command stops: a device this machine lacks, a max_length longer than
the model's position table, `~` in paths from a YAML file, and SIGTERM/Ctrl-C leaving no temp files."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import saved_reward_model, synthetic_pairs, write_jsonl
from rewardkit.cli import main
from rewardkit.config import COMMANDS, load_config
from rewardkit.models.positions import fit_max_length, position_limit
from rewardkit.models.reward_model import RewardModel


@pytest.fixture(scope="module")
def bert_rm(tiny_models, tmp_path_factory):
    return saved_reward_model(tiny_models["bert"], tmp_path_factory.mktemp("guards") / "rm")


@pytest.fixture()
def rows(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl",
                       [{"prompt": r["prompt"], "response": r["chosen"]} for r in synthetic_pairs(6)])


def test_a_device_this_machine_lacks_is_refused_before_loading(bert_rm, rows, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, msg in [("cuda", "no CUDA device here"), ("tpu", "'tpu' is not a torch device")]:
        argv = ["score", str(bert_rm), "--input", str(rows), "--output", str(tmp_path / "o.jsonl"), "--device", device]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "rewardkit score: error: scoring.device: " in err and msg in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_position_limits_of_learned_and_rotary_positions(tiny_models):
    bert, _ = RewardModel.from_pretrained(str(tiny_models["bert"]))
    llama, _ = RewardModel.from_pretrained(str(tiny_models["llama"]))
    gpt2, _ = RewardModel.from_pretrained(str(tiny_models["gpt2"]))
    assert position_limit(bert) == 512 and position_limit(gpt2) == 512 and position_limit(llama) is None
    assert fit_max_length(bert, None, 2048) == 512  # a default is capped at the table
    assert fit_max_length(llama, None, 2048) == 2048 and fit_max_length(llama, 4096, 2048) == 4096
    with pytest.raises(ValueError, match="max_length: 600 exceeds the 512 positions"):
        fit_max_length(bert, 600, 2048)


def test_max_length_beyond_the_position_table_is_one_line(bert_rm, tiny_models, rows, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["score", str(bert_rm), "--input", str(rows), "--output", str(out), "data.max_length=600"]) == 2
    # the key the user typed, not the loader's parameter name
    assert "error: data.max_length: 600 exceeds the 512 positions" in capsys.readouterr().err and not out.exists()
    train = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(4))
    assert main(["eval", str(bert_rm), str(train), "--max-length", "600"]) == 2
    assert "error: data.max_length: 600 exceeds the 512 positions" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", f"model={tiny_models['bert']}", f"data.train={train}", "data.max_length=1000",
                 f"output_dir={run}", "train.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "rewardkit train: error: data.max_length: 1000 exceeds the 512 positions" in err, err
    assert not run.exists()


def test_a_tilde_in_a_yaml_file_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    f = tmp_path / "c.yaml"
    f.write_text("model: ~/m\ndata: {train: ~/d.jsonl}\noutput_dir: ~/out\n")
    cfg = load_config(COMMANDS["train"], f)
    assert (cfg.model.path, cfg.data.train, cfg.output_dir) == (f"{tmp_path}/m", f"{tmp_path}/d.jsonl",
                                                                f"{tmp_path}/out")
    cfg = load_config(COMMANDS["score"], None, ["model=~/m", "data=~/in.jsonl", "output=~/o.jsonl"])
    assert (cfg.model.path, cfg.output) == (f"{tmp_path}/m", f"{tmp_path}/o.jsonl")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_command_leaves_no_temp_file_and_no_traceback(bert_rm, rows, tmp_path, capsys, monkeypatch,
                                                               sig, code, word):
    from rewardkit.scoring import RewardScorer

    real = RewardScorer.run

    def run_then_signal(self, seqs, **kw):  # the signal arrives while the output is being written
        out = real(self, seqs, **kw)
        os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(RewardScorer, "run", run_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out" / "scored.jsonl"
    out.parent.mkdir()
    assert main(["score", str(bert_rm), "--input", str(rows), "--output", str(out)]) == code
    assert f"rewardkit score: {word}" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # neither the output nor its temp file
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("model: m\ndata: {train: d.jsonl}\ntrain:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 3.0e-4\n")
    assert main(["train", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}: line 6, column 3: invalid YAML (key 'lr' given twice (first on line 4))" in err, err


@pytest.mark.parametrize("name", ["scored.csv", "eval.json"])
def test_an_output_named_as_another_format_is_refused(bert_rm, rows, tmp_path, capsys, name):
    out = tmp_path / name
    argv = (["score", str(bert_rm), "--input", str(rows), "--output", str(out)] if name.endswith(".csv")
            else ["eval", str(bert_rm), str(rows), "--output", str(out)])
    assert main(argv) == 2
    assert f"output: {out}: the output is JSON lines" in capsys.readouterr().err and not out.exists()


def test_an_empty_step_separator_is_refused(capsys):
    """A newline typed on the command line arrives stripped to "": a PRM would never split string responses."""
    assert main(["train", "model=m", "data.train=d.jsonl", "loss=prm", "loss.step_separator=\n"]) == 2
    assert "loss.step_separator: is empty; quote whitespace as YAML" in capsys.readouterr().err
    cfg = load_config(COMMANDS["train"], None, ["model=m", "data.train=d", r'loss.step_separator="\n\n"'])
    assert cfg.loss.step_separator == "\n\n"
