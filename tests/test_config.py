import pytest

from rewardkit.config import ConfigError, TrainRunConfig, all_keys, load_config, parse_overrides


def test_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: gpt2\ndata:\n  train: a.jsonl\n  max_length: 128\ntrain:\n  lr: 1e-5\n")
    cfg = load_config(TrainRunConfig, f, ["train.epochs=2", "data.max_length=64", "seed=7", "model.readout=mean"])
    assert cfg.model.path == "gpt2" and cfg.model.readout == "mean"
    assert cfg.data.train == "a.jsonl" and cfg.data.max_length == 64
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2.0 and cfg.seed == 7


def test_required_keys_exist():
    keys = set(all_keys(TrainRunConfig))
    for k in ["model", "data.train", "data.eval", "data.max_length", "train.epochs", "train.batch_size",
              "train.lr", "output_dir", "seed"]:
        assert k in keys


@pytest.mark.parametrize("override, suggestion", [("train.lrr=1", "train.lr"), ("data.max_len=3", "data.max_length"),
                                                  ("train.learning_rate=1", None), ("sed=1", "seed"),
                                                  ("trian.epochs=1", "train.epochs"), ("los=bt", "loss"),
                                                  ("data.columns.promt=q", "data.columns.prompt")])
def test_unknown_key_names_closest(override, suggestion):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        load_config(TrainRunConfig, None, [override])
    if suggestion:
        assert f"`{suggestion}`" in str(e.value)


def test_type_and_choice_errors():
    with pytest.raises(ConfigError, match="train.batch_size: expected int"):
        load_config(TrainRunConfig, None, ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match="train.batch_size: expected int"):
        load_config(TrainRunConfig, None, ["train.batch_size=2.5"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(TrainRunConfig, None, ["model.readout=first"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TrainRunConfig, f, [])


def test_group_defaults_come_from_the_command():
    """A group keeps its command's defaults for the keys not given (serve scores in bigger batches than eval)."""
    from rewardkit.config import EvalRunConfig, ServeRunConfig

    serve = load_config(ServeRunConfig, None, ["scoring.batch_size=8"])
    assert (serve.scoring.batch_size, serve.scoring.max_tokens) == (8, 32768)
    assert load_config(EvalRunConfig, None, ["scoring.bf16=true"]).scoring.max_tokens == 4096


def test_loss_names_come_from_losses_py():
    import ast
    from pathlib import Path

    import rewardkit.config as config

    source = (Path(config.__file__).parent / "groups.py").read_text()
    assert "LOSS_NAMES = _loss_names()" in source  # derived, never a second literal list
    assert not any(isinstance(n, ast.Tuple) and {"bt", "kwise"} <= {getattr(e, "value", None) for e in n.elts}
                   for n in ast.walk(ast.parse(source)))
