"""rewardkit.io: outputs appear whole or not at all, with ordinary file modes."""

import os
import stat

import pytest

from rewardkit.io import atomic_write, staged_dir


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_write_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_write(out) as fh:
            fh.write("half")
            raise RuntimeError("disk gone")
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_files_get_the_umask_mode_not_0600(tmp_path):
    # safetensors (and mkstemp) create 0600 files; a model folder on a shared disk must be readable by others
    # exactly as the user's umask allows.
    target = tmp_path / "model"
    with staged_dir(target) as tmp:
        p = tmp / "model.safetensors"
        p.write_bytes(b"x")
        os.chmod(p, 0o600)
        (tmp / "config.json").write_text("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target / "model.safetensors") == 0o666 & ~umask
    assert not [n for n in os.listdir(target) if n.startswith(".staging-")]


def test_staged_dir_failure_removes_the_folder_it_created(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(OSError):
        with staged_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            raise OSError(28, "No space left on device")
    assert not target.exists()


def test_written_rows_are_strict_json(tmp_path):
    """A NaN reward (a model that overflows) is written as null: `NaN` is not JSON, other readers refuse it."""
    import json

    from rewardkit.io import write_jsonl

    write_jsonl(tmp_path / "o.jsonl", [{"margin": float("nan"), "r": [1.0, float("inf")], "ok": 2.5}])
    line = (tmp_path / "o.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "margin": None, "r": [1.0, None], "ok": 2.5}
