"""eval --report-dir, calibrate and report through the CLI on a tiny trained model; every PNG is checked."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthetic_pairs, write_jsonl
from rewardkit.cli import main
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.train import train

FIXTURES = Path(__file__).parent / "fixtures"
OLD_KEYS = ("accuracy", "n", "ties", "margin_mean", "chosen_mean", "rejected_mean", "reward_mean", "reward_std",
            "skipped_rows", "truncated_pairs")


@pytest.fixture(scope="module")
def run_dir(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = write_jsonl(root / "train.jsonl", synthetic_pairs(64))
    cfg = load_config(TrainRunConfig, None, [
        f"model={tiny_models['llama']}", f"data.train={data}", "data.eval_size=16", "data.max_length=48",
        "train.max_steps=8", "train.batch_size=8", "train.lr=1e-3", "train.warmup_ratio=0", "train.log_every=2",
        "train.eval_every=4", "train.progress=false", f"output_dir={root / 'run'}", "seed=0"])
    train(cfg)
    return root / "run"


def assert_valid_png(path: Path) -> None:
    """A real, non-trivial picture: PNG signature, decodes, big enough, more than one colour."""
    import matplotlib.image as mpimg

    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(raw) > 5_000, (path, len(raw))
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 300, (path, img.shape)
    colours = {tuple(px) for px in img[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}
    assert len(colours) > 10, (path, len(colours))


def test_eval_report_dir_then_report(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    pairs = tmp_path / "pairs.jsonl"
    assert main(["eval", str(run_dir), str(FIXTURES / "rewardbench_v1.jsonl"), "--json", "--report-dir", str(out),
                 "--output", str(pairs), "--tie-policy", "0.5"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert all(k in stats for k in OLD_KEYS) and stats["n"] == 19 and stats["benchmark"] == "rewardbench"
    rb = stats["rewardbench"]
    assert rb["tie_policy"] == "0.5" and set(rb["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    chat = rb["subsets"]["alpacaeval-easy"]["score"] * 100 + rb["subsets"]["mt-bench-easy"]["score"] * 28
    assert rb["sections"]["Chat"]["score"] == pytest.approx(chat / 128)
    assert rb["overall"] == pytest.approx(sum(s["score"] for s in rb["sections"].values()) / 4)
    cal, lb = stats["calibration"], stats["length_bias"]
    assert cal["temperature"] == 1.0 and len(cal["bins"]) == 15 and 0 <= cal["ece"] <= 0.5
    assert lb["all"]["responses"] == 38 and lb["all"]["spearman_reward_length"] is not None
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(rows) == 19 and {"source", "chosen_reward", "rejected_reward", "margin", "correct"} <= set(rows[0])
    assert rows[0]["chosen_tokens"] > 0 and 0 < rows[0]["prob_chosen"] < 1

    saved = json.loads((out / "eval.json").read_text())
    assert saved["stats"] == stats and Path(saved["meta"]["model_dir"]) == run_dir.resolve()
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 19
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["length_vs_reward.png", "margins.png", "reliability.png", "rewards.png"]

    assert main(["report", str(out)]) == 0
    files = json.loads(capsys.readouterr().out)
    assert (out / "plots" / "training_curves.png").is_file()  # from the model's metrics.jsonl
    for p in (out / "plots").glob("*.png"):
        assert_valid_png(p)
    page = Path(files["html"]).read_text()
    assert page.count("data:image/png;base64,") == 5 and "src='plots" not in page  # self-contained
    for needle in ("RewardBench", "Chat Hard", "Calibration", "Length bias", "Training"):
        assert needle in page
    md = Path(files["markdown"]).read_text()
    links = [line[line.index("(") + 1:-1] for line in md.splitlines() if line.startswith("![")]
    assert len(links) == 5 and all((out / link).is_file() for link in links)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_rewardbench2_eval(run_dir, tmp_path, capsys):
    out = tmp_path / "eval2"
    assert main(["eval", str(run_dir), str(FIXTURES / "rewardbench_v2.jsonl"), "--json", "--report-dir",
                 str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    rb = stats["rewardbench2"]
    assert rb["rows"] == 9 and stats["n"] == 23 and rb["missing"] == ["Precise IF", "Focus"]
    assert rb["score"] == pytest.approx(sum(v["score"] for v in rb["subsets"].values()) / 4)
    assert len((out / "rows.jsonl").read_text().splitlines()) == 9


def test_calibrate_saves_temperature_used_by_compare_and_eval(run_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(run_dir, model)
    rows = synthetic_pairs(40, seed=5)
    for r in rows[::4]:  # a quarter mislabelled, so the model is wrong on some pairs and T stays finite
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    dev = write_jsonl(tmp_path / "dev.jsonl", rows)
    mode = (model / "config.json").stat().st_mode & 0o777
    assert main(["calibrate", str(model), str(dev), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert (model / "config.json").stat().st_mode & 0o777 == mode
    t = fit["temperature"]
    assert fit["saved"] and fit["n"] == 40 and t > 0 and fit["nll_after"] <= fit["nll_before"] + 1e-12
    block = json.loads((model / "config.json").read_text())["rewardkit"]
    assert block["temperature"] == t and block["readout"] == "last" and "mean" in block  # other keys kept

    from rewardkit.scoring import RewardScorer

    scorer = RewardScorer.load(model)
    assert scorer.temperature == t
    prompts, a, b = ["Tell me about tea."] * 2, ["Happy to help: tea is nice.", "No. Go away."], \
        ["No. Go away.", "Happy to help: tea is nice."]
    comps = scorer.compare(prompts, a, b)
    ra, rb = scorer.score(prompts, a), scorer.score(prompts, b)
    for c, x, y in zip(comps, ra, rb):
        assert c.temperature == t and c.reward_a == pytest.approx(x, abs=1e-5)
        assert c.prob_a_better == pytest.approx(1 / (1 + math.exp(-(x - y) / t)), abs=1e-5)
    assert scorer.prob_better(prompts, a, b) == [c.prob_a_better for c in comps]
    assert comps[0].prob_a_better == pytest.approx(1 - comps[1].prob_a_better, abs=1e-6)

    assert main(["eval", str(model), str(dev), "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    assert cal["temperature"] == t and cal["nll"] == pytest.approx(fit["nll_after"], abs=1e-6)
    assert cal["nll_t1"] == pytest.approx(fit["nll_before"], abs=1e-6)

    clean = write_jsonl(tmp_path / "clean.jsonl", synthetic_pairs(40, seed=5))  # all right: T -> 0, not saved
    assert main(["calibrate", str(model), str(clean), "--json"]) == 0
    stuck = json.loads(capsys.readouterr().out)
    assert stuck["at_bound"] and not stuck["saved"]
    assert json.loads((model / "config.json").read_text())["rewardkit"]["temperature"] == t


def test_report_on_a_training_run(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "final eval accuracy" in page
    assert_valid_png(run / "plots" / "training_curves.png")
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_works_without_matplotlib(run_dir, tmp_path, monkeypatch, capsys):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import rewardkit, rewardkit.cli, rewardkit.eval.evaluate, rewardkit.eval.report, rewardkit.eval.plots\n"
            "rewardkit.cli.build_parser().parse_args(['--help'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage: rewardkit" in res.stdout, res.stderr
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any matplotlib import now raises ImportError
    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), str(FIXTURES / "rewardbench_v1.jsonl"), "--report-dir", str(out)]) == 0
    assert (out / "eval.json").is_file() and not (out / "plots").exists()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Chat Hard" in page and "data:image/png" not in page


@pytest.mark.parametrize("content, where, problem", [
    # known failures: a TypeError and a KeyError traceback, and JSON errors that named no file
    ("[1, 2]\n", "eval.json", "not an eval report (a JSON object with `meta` and `stats`, got list)"),
    ('{"accuracy": "high"}\n', "eval.json", "not an eval report (no `meta`)"),
    ('{"meta": {},\n', "eval.json:line 2", "invalid JSON (Expecting property name"),
    ('{"a": 1}\n{"b": 2}\n', "eval.json:line 2", "invalid JSON (Extra data at column 1)"),
    ('{"meta": {"model_dir": 3}, "stats": {}}', "eval.json", "field `meta.model_dir`: expected a string, got int"),
    ('{"meta": {}, "stats": {"calibration": "x"}}', "eval.json", "field `stats.calibration`: not as rewardkit writes"),
    ('{"meta": {}, "stats": {"rewardbench": {}}}', "eval.json", "field `stats.rewardbench`: not as rewardkit writes "
                                                                "it (no 'tie_policy')"),
])
def test_report_on_a_bad_eval_json_is_one_line_and_writes_nothing(tmp_path, capsys, content, where, problem):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "eval.json").write_text(content)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rewardkit report: error: {folder / where}: ") and problem in err, err
    assert "\n" not in err and sorted(p.name for p in folder.iterdir()) == ["eval.json"]


def test_report_names_a_bad_line_of_pairs_or_metrics(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "eval.json").write_text('{"meta": {}, "stats": {"accuracy": 0.5}}')
    (folder / "pairs.jsonl").write_text('{"chosen_reward": 1}\n[1]\n')
    assert main(["report", str(folder)]) == 2
    assert f"{folder / 'pairs.jsonl'}:line 2: expected a JSON object, got list" in capsys.readouterr().err
    (folder / "pairs.jsonl").unlink()
    (folder / "metrics.jsonl").write_text('{"split": "train", "loss": 1.0}\n')  # no `step`
    assert main(["report", str(folder)]) == 2
    assert f"{folder / 'metrics.jsonl'}: not as rewardkit writes it (no 'step')" in capsys.readouterr().err
    assert not (folder / "report.html").exists()
    (folder / "metrics.jsonl").unlink()
    assert main(["report", str(folder)]) == 0  # eval.json alone, without model_dir or data: a summary table
    assert "0.5000" in (folder / "report.html").read_text()
