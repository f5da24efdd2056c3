"""Bad config values, bad model folders, output faults and calibrate's keep-the-old-T rule, each through the
real CLI (`rewardkit.cli.main`): exit 2, one stderr line naming the file or key, no traceback, nothing left
behind (issue 14)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny, synthetic_pairs, write_jsonl
from rewardkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A plain backbone (no value head), a saved reward model, and small input files."""
    from rewardkit.models.reward_model import RewardModel

    root = tmp_path_factory.mktemp("bad")
    backbone = make_tiny("llama", root / "backbone")
    model, tok = RewardModel.from_pretrained(str(backbone))
    model.save_pretrained(root / "rm", tok, max_length=64)
    return SimpleNamespace(
        root=root, backbone=backbone, rm=root / "rm",
        pairs=write_jsonl(root / "pairs.jsonl", synthetic_pairs(10)),
        rows=write_jsonl(root / "rows.jsonl", [{"prompt": "Hi", "response": r} for r in ("Hello!", "Go away.")]),
        lists=write_jsonl(root / "lists.jsonl", [{"prompt": "Hi", "responses": ["Hello!", "Go away."]}] * 3))


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and one stderr error line holding every needle; return that line."""
    assert main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith(f"rewardkit {argv[0]}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- config keys and values

def test_misspelt_keys_suggest_the_full_key(capsys, tmp_path):
    refused(capsys, ["train", "model=x", "data.train=y", "trian.epochs=1"], "`trian.epochs`", "did you mean `train.epochs`")
    refused(capsys, ["train", "model=x", "data.train=y", "train.epoch=1"], "did you mean `train.epochs`")
    refused(capsys, ["eval", "m", "d", "data.max_len=9"], "did you mean `data.max_length`")
    bad = tmp_path / "run.yaml"
    bad.write_text("model: x\ndata:\n  train: y\ntrian:\n  epochs: 1\n")
    refused(capsys, ["train", bad], f"{bad}: unknown config key `trian.epochs`", "did you mean `train.epochs`")


def test_config_file_errors_name_the_file(capsys, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: x\ndata:\n  train: y\ntrain:\n  lr: -1\n")
    refused(capsys, ["train", f], f"{f}: train.lr: must be > 0")
    # The same key set again on the command line: the value at fault is the override's, not the file's.
    line = refused(capsys, ["train", f, "train.lr=-2"], "train.lr: must be > 0, got -2")
    assert str(f) not in line
    f.write_text("model: [x\n")
    refused(capsys, ["train", f], f"{f}: line 2, column 1: invalid YAML")
    refused(capsys, ["train", tmp_path / "none.yaml"], "none.yaml: no such config file")


@pytest.mark.parametrize("argv,key", [
    (["train", "train.lr=-1"], "train.lr: must be > 0"),
    (["train", "train.lr=0"], "train.lr: must be > 0"),
    (["train", "train.lr=.inf"], "train.lr: must be a finite number"),
    (["train", "train.lr=.nan"], "train.lr: must be a finite number"),
    (["train", "train.epochs=-1"], "train.epochs: must be > 0"),
    (["train", "train.batch_size=0"], "train.batch_size: must be at least 1"),
    (["train", "train.grad_accum=0"], "train.grad_accum: must be at least 1"),
    (["train", "data.max_length=2"], "data.max_length: must be at least 8"),
    (["train", "train.warmup_ratio=2"], "train.warmup_ratio: must be in [0, 1]"),
    (["train", "loss.gamma=-1"], "loss.gamma: must be at least 0"),
    (["eval", "--batch-size", "0"], "scoring.batch_size: must be at least 1"),
    (["eval", "--batch-size", "-5"], "scoring.batch_size: must be at least 1"),
    (["eval", "--max-length", "0"], "data.max_length: must be at least 8"),
    (["eval", "scoring.max_tokens=0"], "scoring.max_tokens: must be at least 1"),
    (["score", "--max-length", "0"], "data.max_length: must be at least 8"),
    (["rank", "--chunk-rows", "0"], "chunk_rows: must be at least 1"),
    (["calibrate", "--batch-size", "0"], "scoring.batch_size: must be at least 1"),
])
def test_non_positive_values_are_refused_by_key(capsys, env, tmp_path, argv, key):
    """Checked in the config layer, before a model loads or an output folder is made."""
    out = tmp_path / "out"
    cmd, *rest = argv
    base = {"train": [f"model={env.backbone}", f"data.train={env.pairs}", f"output_dir={out}"],
            "eval": [env.rm, env.pairs], "calibrate": [env.rm, env.pairs],
            "score": [env.rm, "--input", env.rows, "--output", out],
            "rank": [env.rm, "--input", env.lists, "--output", out]}[cmd]
    refused(capsys, [cmd, *base, *rest], key)
    assert not out.exists()


def test_max_length_shorter_than_the_chat_template(capsys, env):
    refused(capsys, ["eval", env.rm, env.pairs, "--as-chat", "--max-length", "8"],
            "data.max_length=8 is shorter than the chat template")
    assert main(["eval", str(env.rm), str(env.pairs), "--as-chat", "--max-length", "24", "--json"]) == 0
    capsys.readouterr()


def test_train_on_chat_rows_checks_the_template_room_too(capsys, env, tmp_path):
    """The check lives in the encoder, so train refuses before training, and leaves no output folder."""
    chat = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "assistant", "content": "Go away."}]}] * 4
    data, out = write_jsonl(tmp_path / "chat.jsonl", chat), tmp_path / "out"
    refused(capsys, ["train", f"model={env.backbone}", f"data.train={data}", "data.max_length=8", f"output_dir={out}"],
            "data.max_length=8 is shorter than the chat template")
    assert not out.exists()


# --------------------------------------------------------------------------- model folders

def _folder(root: Path, name: str, env, make) -> Path:
    path = root / name
    path.mkdir()
    make(path, env)
    return path


def _copy(*names):
    return lambda path, env: [shutil.copy(env.rm / n, path) for n in names]


def _truncate(path, env):
    _copy("config.json", "tokenizer.json", "tokenizer_config.json")(path, env)
    data = (env.rm / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:len(data) // 2])


def _garbage(path, env):
    _copy("config.json", "tokenizer.json", "tokenizer_config.json")(path, env)
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 40)


@pytest.mark.parametrize("name,make,needle", [
    ("empty", lambda p, e: None, "not a model folder (it is empty)"),
    ("notes", lambda p, e: (p / "README.txt").write_text("hi"), "not a model folder (no config.json)"),
    ("braces", lambda p, e: (p / "config.json").write_text("{}"), "not a model folder (its config.json names no model_type)"),
    ("noweights", _copy("config.json", "tokenizer.json", "tokenizer_config.json"), "config.json but no weights"),
    ("notokenizer", _copy("config.json", "model.safetensors"), "no tokenizer files"),
    ("truncated", _truncate, "model.safetensors: corrupt or truncated safetensors file"),
    ("garbage", _garbage, "model.safetensors: corrupt or truncated safetensors file"),
])
@pytest.mark.parametrize("cmd", ["eval", "score"])
def test_bad_model_folders(capsys, env, tmp_path, name, make, needle, cmd):
    folder = _folder(tmp_path, name, env, make)
    out = tmp_path / "scored.jsonl"
    argv = [cmd, folder, env.pairs] if cmd == "eval" else [cmd, folder, "--input", env.rows, "--output", out]
    refused(capsys, argv, str(folder), needle)
    assert not out.exists()


def test_missing_model_paths(capsys, env, tmp_path):
    refused(capsys, ["eval", tmp_path / "nope", env.pairs], f"{tmp_path / 'nope'}: no such model folder")
    refused(capsys, ["eval", env.pairs, env.pairs], "not a model folder (a file")
    # A name that could be a hub id: transformers looks, offline, and its long error becomes one line.
    refused(capsys, ["eval", "no-such-org/no-such-model-xyz", env.pairs],
            "no-such-org/no-such-model-xyz: no such folder, and no hub model of that name could be loaded")
    out = tmp_path / "run"
    refused(capsys, ["train", f"model={tmp_path / 'nope'}", f"data.train={env.pairs}", f"output_dir={out}"],
            "no such model folder")
    assert not out.exists()


def test_decoder_tokenizer_without_eos_or_pad(capsys, env, tmp_path):
    """Decision: refused (pad alone gets a documented fallback: unk, else a new <|pad|> token; an EOS to
    read the reward at cannot be guessed)."""
    folder = tmp_path / "noeos"
    shutil.copytree(env.backbone, folder)
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(eos_token=None, pad_token=None, unk_token=None, bos_token=None)
    cfg_file.write_text(json.dumps(cfg))
    refused(capsys, ["eval", folder, env.pairs, "model.allow_random_head=true"], f"{folder}: its tokenizer has no eos_token")
    out = tmp_path / "run"
    refused(capsys, ["train", f"model={folder}", f"data.train={env.pairs}", f"output_dir={out}"], "no eos_token")
    assert not out.exists()


def test_plain_backbone_needs_allow_random_head(capsys, env):
    refused(capsys, ["eval", env.backbone, env.pairs], f"{env.backbone}: not a reward model",
            "model.allow_random_head=true")
    assert main(["eval", str(env.backbone), str(env.pairs), "model.allow_random_head=true", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10


# --------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("cmd", ["eval-output", "eval-report", "score", "rank", "filter", "make-pairs", "train"])
def test_output_paths_checked_before_any_work(capsys, env, tmp_path, cmd):
    """A model path that does not exist proves the output check comes first: it is what gets reported."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    nope = tmp_path / "no-model"
    rows = ["--input", env.lists]
    argv, needle = {
        "eval-output": (["eval", nope, env.pairs, "--output", tmp_path], f"output: {tmp_path} is a folder"),
        "eval-report": (["eval", nope, env.pairs, "--report-dir", afile], f"report_dir: {afile} is an existing file"),
        "score": (["score", nope, "--input", env.rows, "--output", afile / "x.jsonl"], f"{afile} is a file, not a folder"),
        "rank": (["rank", nope, *rows, "--output", tmp_path], "output: "),
        "filter": (["filter", *rows, "--output", afile / "a" / "b.jsonl", "--threshold", "0"], "is a file, not a folder"),
        "make-pairs": (["make-pairs", nope, *rows, "--output", afile / "p.jsonl"], "is a file, not a folder"),
        "train": (["train", f"model={nope}", f"data.train={env.pairs}", f"output_dir={afile}"],
                  f"output_dir: {afile} is an existing file"),
    }[cmd]
    refused(capsys, argv, needle)
    assert afile.read_text() == "keep me"


class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` characters, as on a full disk."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def __getattr__(self, name):
        return getattr(self.fh, name)


@pytest.fixture
def full_disk(monkeypatch):
    """`full_disk(folder, match)`: files opened by rewardkit.io under `folder` whose name contains `match`
    fail with ENOSPC after 20 characters."""
    real = os.fdopen

    def arm(folder: Path, match: str = "") -> None:
        def fdopen(fd, *a, **kw):
            fh = real(fd, *a, **kw)
            path = os.readlink(f"/proc/self/fd/{fd}")
            return _FullDisk(fh, 20) if path.startswith(str(folder)) and match in Path(path).name else fh

        monkeypatch.setattr("rewardkit.io.os.fdopen", fdopen)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    return arm


@pytest.mark.parametrize("cmd", ["score", "rank", "eval"])
def test_full_disk_names_the_output_and_leaves_nothing(capsys, env, tmp_path, full_disk, cmd):
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    out = out_dir / "result.jsonl"
    argv = {"score": ["score", env.rm, "--input", env.rows, "--output", out],
            "rank": ["rank", env.rm, "--input", env.lists, "--output", out],
            "eval": ["eval", env.rm, env.pairs, "--output", out]}[cmd]
    full_disk(out_dir)
    refused(capsys, argv, "No space left on device", str(out))
    assert leftovers(out_dir) == []  # neither the output nor its temp file


@pytest.mark.parametrize("failing", ["pairs.jsonl", "eval.json", ".png"])
def test_full_disk_during_the_report_dir_leaves_no_partial_report(capsys, env, tmp_path, full_disk, failing):
    if failing == ".png":
        pytest.importorskip("matplotlib")
    report = tmp_path / "report"
    full_disk(tmp_path, failing)
    refused(capsys, ["eval", env.rm, env.pairs, "--report-dir", report], "No space left on device", str(report / ""))
    assert not report.exists()
    if failing != "eval.json":
        return
    # A report folder from an earlier run keeps its files, untouched.
    report.mkdir()
    (report / "eval.json").write_text("{}")
    refused(capsys, ["eval", env.rm, env.pairs, "--report-dir", report], "No space left on device")
    assert leftovers(report) == ["eval.json"] and (report / "eval.json").read_text() == "{}"


# --------------------------------------------------------------------------- calibrate

def test_calibrate_keeps_the_old_temperature_when_ece_gets_worse(capsys, env, tmp_path, monkeypatch):
    """Margins whose NLL-optimal T (about 18) lowers the NLL (0.83 -> 0.69) but raises the ECE (0.44 -> 0.50):
    reported, not saved, unless force=true."""
    import rewardkit.eval.evaluate as evaluate

    model = tmp_path / "model"
    shutil.copytree(env.rm, model)
    before = (model / "config.json").read_text()
    margins = torch.tensor([0.5] * 9 + [-4.0], dtype=torch.float64)
    monkeypatch.setattr(evaluate, "judge_eval_data", lambda judge, data: SimpleNamespace(margins=margins))
    assert main(["calibrate", str(model), str(env.pairs), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["nll_after"] < fit["nll_before"] and fit["ece_after"] > fit["ece_before"]
    assert fit["saved"] is False and fit["kept"] == "ece_worse" and fit["temperature_before"] == 1.0
    assert (model / "config.json").read_text() == before
    assert main(["calibrate", str(model), str(env.pairs), "--json", "force=true"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["saved"] is True and fit["kept"] is None
    assert json.loads((model / "config.json").read_text())["rewardkit"]["temperature"] == fit["temperature"]


def test_calibrate_measures_before_at_the_temperature_in_use():
    from rewardkit.eval.calibration import calibration, fit_temperature

    m = torch.tensor([1.0, 2.0, -0.5, 0.3, 3.0, -1.0])
    fit = fit_temperature(m, temperature_before=2.0)
    assert fit.temperature_before == 2.0
    assert fit.ece_before == pytest.approx(calibration(m, 2.0).ece) and fit.nll_before == pytest.approx(calibration(m, 2.0).nll)


def test_calibrate_refuses_an_unwritable_model_before_scoring(capsys, env, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(env.rm, model)
    os.chmod(model / "config.json", 0o444)
    if os.access(model / "config.json", os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    refused(capsys, ["calibrate", model, env.pairs], "config.json: not writable", "save=false")


# --------------------------------------------------------------------------- make hh

def test_make_hh_says_where_the_data_goes(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    res = subprocess.run(["make", "-s", "-C", str(ROOT), "hh-data", f"HH_DATA={tmp_path / 'train.jsonl'}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert f"no HH data at {tmp_path / 'train.jsonl'}" in res.stderr and "HH_DATA=" in res.stderr
