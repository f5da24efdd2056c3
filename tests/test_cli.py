"""The command line: every command takes [CONFIG.yaml] [key=value ...], the older options and positionals are
shorthands for the same keys, one spelling per setting, help lists every key, errors name the closest key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import saved_reward_model, synthetic_pairs, write_jsonl
from rewardkit.cli import _parsers, command_config, main, parse_command
from rewardkit.config import COMMANDS, ConfigError, TrainRunConfig, all_keys, load_config, to_dict


def cfg_of(*argv: str):
    name, args, _ = parse_command(list(argv))
    return command_config(name, args)


def default_of(cls: type, key: str):
    value = cls()
    for part in key.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_and_help_list_every_key_with_its_default(name):
    parser = _parsers()[1][name]
    assert parser.format_usage().startswith(f"usage: rewardkit {name} [-h] [CONFIG.yaml] [key=value ...]")
    text = parser.format_help()
    cls = COMMANDS[name]
    for key in all_keys(cls):
        value = default_of(cls, key)
        if not dataclasses.is_dataclass(value):  # groups: their fields are listed
            assert f"  {key} (default: {value!r})" in text, key


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_stands_for_a_key_and_defaults_agree(name):
    """Each option is `= key` in --help, and its argparse default is the config's default."""
    parser = _parsers()[1][name]
    cls = COMMANDS[name]
    keys = set(all_keys(cls))
    for action in parser._actions:
        opt = getattr(action, "opt", None)
        if opt is None:
            continue
        assert opt.key in keys or opt.key.endswith(".*"), (name, opt)
        if opt.switch is None and not opt.key.endswith(".*"):
            key = opt.key if not dataclasses.is_dataclass(default_of(cls, opt.key)) else opt.key + ".path"
            assert action.default == default_of(cls, key), (name, opt.flag)


def test_key_form_equals_option_form(tmp_path):
    flags = cfg_of("eval", "runs/rm", "held.jsonl", "--json", "--output", "out.jsonl", "--batch-size", "4",
                   "--max-length", "64", "--format", "explicit", "--column", "prompt=q", "--bf16", "--split", "dev",
                   "--max-samples", "5", "--tie-policy", "0.5")
    keys = cfg_of("eval", "model=runs/rm", "data=held.jsonl", "json=true", "output=out.jsonl", "scoring.batch_size=4",
                  "data.max_length=64", "data.format=explicit", "data.columns.prompt=q", "scoring.bf16=true",
                  "data.split=dev", "data.max_samples=5", "tie_policy=0.5")
    assert flags == keys
    assert keys.model.path == "runs/rm" and keys.data.path == "held.jsonl" and keys.scoring.batch_size == 4
    # options may come anywhere: before, between and after the positionals
    assert cfg_of("eval", "--json", "runs/rm", "--batch-size", "4", "held.jsonl") == cfg_of(
        "eval", "model=runs/rm", "data=held.jsonl", "json=true", "scoring.batch_size=4")


def test_columns_are_spelt_the_same_everywhere():
    col = cfg_of("eval", "m", "d", "--column", "prompt=q", "--column", "chosen=good")
    key = cfg_of("eval", "m", "d", "data.columns.prompt=q", "data.columns.chosen=good")
    assert col.data.columns == key.data.columns and key.data.columns.prompt == "q"
    score = cfg_of("score", "m", "--input", "i", "--output", "o", "--prompt-key", "q", "--messages-key", "chat")
    assert score.data.columns == cfg_of("score", "model=m", "data=i", "output=o", "data.columns.prompt=q",
                                        "data.columns.messages=chat").data.columns
    rank = cfg_of("rank", "m", "--input", "i", "--output", "o", "--responses-key", "cands")
    assert rank.data.columns.responses == "cands"
    train = load_config(TrainRunConfig, None, ["data.columns.prompt=q"])
    assert train.data.columns.prompt == "q"


def test_file_then_options_then_overrides(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("model: runs/a\ndata:\n  path: held.jsonl\n  columns: {prompt: q}\nscoring:\n  batch_size: 8\n"
                 "  max_tokens: 1024\njson: true\n")
    cfg = cfg_of("eval", str(f), "--batch-size", "4", "scoring.batch_size=2", "model=runs/b")
    assert (cfg.model.path, cfg.data.path, cfg.data.columns.prompt) == ("runs/b", "held.jsonl", "q")
    assert (cfg.scoring.batch_size, cfg.scoring.max_tokens, cfg.json) == (2, 1024, True)
    assert cfg_of("eval", str(f), "--batch-size", "4").scoring.batch_size == 4


def test_loss_shorthand_and_the_older_spelling(tmp_path):
    a = load_config(TrainRunConfig, None, ["loss=kwise"])
    b = load_config(TrainRunConfig, None, ["train.loss=kwise"])
    assert a == b and a.loss.name == "kwise"
    c = load_config(TrainRunConfig, None, ["loss=internlm2", "loss.gamma=3", "train.loss=bt"])  # later wins
    assert c.loss.name == "bt" and c.loss.gamma == 3
    saved = tmp_path / "train_config.yaml"
    saved.write_text("model: m\ntrain:\n  loss: regression\n  lr: 1.0e-4\n")  # an older saved config
    assert load_config(TrainRunConfig, saved).loss.name == "regression"
    saved.write_text("train: {loss: bt}\nloss: {name: kwise}\n")
    with pytest.raises(ConfigError, match="disagree"):
        load_config(TrainRunConfig, saved)
    with pytest.raises(ConfigError, match="not one of"):
        load_config(TrainRunConfig, None, ["loss=nope"])
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(to_dict(a)))  # what train writes beside the model reads back the same
    assert load_config(TrainRunConfig, again) == a


def test_misspelt_keys_name_the_closest_full_key(capsys):
    assert main(["train", "model=x", "trian.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "rewardkit train: error: unknown config key `trian.epochs`; did you mean `train.epochs`?" in err
    assert "rewardkit train --help" in err
    assert main(["eval", "m", "d", "scoring.bacth_size=2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean `scoring.batch_size`?" in err and "rewardkit eval --help" in err
    assert main(["eval", "m", "d", "batch_size=2"]) == 2  # the last part alone finds the key
    assert "did you mean `scoring.batch_size`?" in capsys.readouterr().err


def test_value_checks_and_required_keys(capsys):
    for argv, msg in [
        (["train", "model=x", "data.train=y", "train.lr=0"], "train.lr: must be > 0"),
        (["train", "model=x", "data.train=y", "data.max_length=0"], "data.max_length: must be at least 8"),
        (["eval", "m", "d", "scoring.batch_size=0"], "scoring.batch_size: must be at least 1"),
        (["eval", "m"], "`data` is required"),
        (["score", "m", "--input", "i"], "`output` is required"),
        (["rank", "--input", "i", "--output", "o"], "`model` is required"),
        (["filter", "--input", "i", "--output", "o"], "give `threshold`, `top_percent` or both"),
        (["filter", "--input", "i", "--output", "o", "--top-percent", "120"], "top_percent: must be in (0, 100]"),
        (["make-pairs", "--input", "i", "--output", "o", "--normalize"], "normalize: needs a model"),
        (["serve", "m", "--models", "x.yaml"], "give `model` or `models`, not both"),
        (["serve"], "give `model`"),
        (["eval", "m", "d", "extra"], "unexpected argument 'extra'"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"rewardkit {argv[0]}: error: " in err and msg in err, (argv, err)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        cfg = load_config(TrainRunConfig, None, ["model=x", "data.train=y"])
        cfg.train.checkpoint_every = 0  # set by hand: validate() checks again
        cfg.validate()


def test_serve_and_report_keys():
    cfg = cfg_of("serve", "runs/rm", "--max-batch-size", "8", "--port", "6000", "data.max_length=128")
    assert (cfg.model.path, cfg.scoring.batch_size, cfg.port, cfg.data.max_length) == ("runs/rm", 8, 6000, 128)
    assert cfg.scoring.max_tokens == 32768 and cfg.scoring.bf16 is None  # serve's own; bf16 null: where native
    assert cfg_of("report", "runs/rm", "--output-dir", "r") == cfg_of("report", "path=runs/rm", "output_dir=r")


def test_help_does_not_import_torch():
    code = f"""
import contextlib, io, sys
from rewardkit.cli import main
for argv in [['--help']] + [[c, '--help'] for c in {sorted(COMMANDS)!r}]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, argv
assert 'torch' not in sys.modules, 'torch imported'
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "rewardkit", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "usage: rewardkit" in res.stdout and "make-pairs" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "rewardkit", "eval"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "rewardkit eval: error: `model` and `data` are required" in res.stderr


def test_the_console_script_exits_with_main_s_code_and_its_heap_frozen(monkeypatch):
    """`entry` (the `rewardkit` script, `python -m rewardkit`) freezes every object before exiting, so CPython's
    exit skips its collections over torch's and transformers' objects (0.7 s of each command's exit)."""
    import gc

    from rewardkit import cli

    monkeypatch.setattr(cli, "main", lambda: 2)
    before = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as e:
            cli.entry()
        assert e.value.code == 2 and gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'rewardkit = "rewardkit.cli:entry"' in pyproject


@pytest.fixture(scope="module")
def rm_dir(tiny_models, tmp_path_factory):
    return saved_reward_model(tiny_models["llama"], tmp_path_factory.mktemp("cli") / "rm")


def test_eval_forms_give_the_same_numbers(rm_dir, tmp_path, capsys):
    rows = [{"q": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in synthetic_pairs(6)]
    data = write_jsonl(tmp_path / "held.jsonl", rows)
    assert main(["eval", str(rm_dir), str(data), "--json", "--batch-size", "4", "--column", "prompt=q"]) == 0
    flags = json.loads(capsys.readouterr().out)
    assert main(["eval", f"model={rm_dir}", f"data={data}", "json=true", "scoring.batch_size=4",
                 "data.columns.prompt=q"]) == 0
    keys = json.loads(capsys.readouterr().out)
    f = tmp_path / "eval.yaml"
    f.write_text(f"model: {rm_dir}\ndata: {{path: {data}, columns: {{prompt: q}}}}\njson: true\n")
    assert main(["eval", str(f)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert flags == keys == from_file and flags["n"] == 6
