"""The `rewardkit` command re-executes itself once with tcmalloc/jemalloc preloaded (`cli/allocator.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewardkit.cli import allocator
from rewardkit.config import ConfigError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")


def _loaded(name: str) -> str:
    """The path of a shared library this test process has mapped, e.g. libm (harmless to preload)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if Path(path).name.startswith(name):
            return path
    pytest.skip(f"{name} is not mapped here")


def test_the_choice_follows_the_variable_then_the_environment_then_the_system(tmp_path, monkeypatch):
    assert allocator.find_library({allocator.ENV: "system"}) is None
    assert allocator.find_library({allocator.ENV: " Off "}) is None
    lib = tmp_path / "libwhatever.so"
    lib.write_bytes(b"")
    assert allocator.find_library({allocator.ENV: str(lib)}) == str(lib)
    with pytest.raises(ConfigError, match=f"{allocator.ENV}=.*nope.*no such file"):
        allocator.find_library({allocator.ENV: str(tmp_path / "nope.so")})

    # Nothing on the system: the environment's lib/ is searched, tcmalloc before jemalloc.
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(allocator.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(allocator.sys, "base_prefix", str(tmp_path))
    (tmp_path / "lib").mkdir()
    assert allocator.find_library({}) is None
    (tmp_path / "lib" / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.find_library({}) == str(tmp_path / "lib" / "libjemalloc.so.2")
    (tmp_path / "lib" / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.find_library({}) == str(tmp_path / "lib" / "libtcmalloc_minimal.so.4")
    # ... and a system tcmalloc comes before the environment's jemalloc.
    (tmp_path / "lib" / "libtcmalloc_minimal.so.4").unlink()
    monkeypatch.setattr(allocator.ctypes.util, "find_library",
                        lambda name: "libtcmalloc_minimal.so.4" if name == "tcmalloc_minimal" else None)
    assert allocator.find_library({}) == "libtcmalloc_minimal.so.4"


def test_the_preload_goes_first_and_keeps_what_was_there():
    env = allocator.preload_env("/x/libtcmalloc.so", {"LD_PRELOAD": "/y/libprofiler.so", "A": "1"})
    assert env["LD_PRELOAD"] == "/x/libtcmalloc.so:/y/libprofiler.so" and env["A"] == "1"
    assert env[allocator.ACTIVE] == "/x/libtcmalloc.so"
    assert allocator.preload_env("/x/l.so", {})["LD_PRELOAD"] == "/x/l.so"


def test_batch_commands_keep_freed_memory_and_the_server_returns_it():
    assert allocator.preload_env("/x/l.so", {}, "train")["TCMALLOC_RELEASE_RATE"] == "0"
    assert "TCMALLOC_RELEASE_RATE" not in allocator.preload_env("/x/l.so", {}, "serve")
    assert allocator.preload_env("/x/l.so", {"TCMALLOC_RELEASE_RATE": "2"}, "train")["TCMALLOC_RELEASE_RATE"] == "2"


def test_one_exec_only_and_an_allocator_already_preloaded_stays(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(allocator, "find_library", lambda env=None: "/x/libtcmalloc.so")
    monkeypatch.delenv(allocator.ACTIVE, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    allocator.maybe_reexec(None)  # no command: --help, a usage error
    monkeypatch.setenv(allocator.ACTIVE, "/x/libtcmalloc.so")
    allocator.maybe_reexec("train")
    monkeypatch.delenv(allocator.ACTIVE)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    allocator.maybe_reexec("train")
    assert calls == []
    monkeypatch.delenv("LD_PRELOAD")
    allocator.maybe_reexec("serve")
    assert len(calls) == 1
    exe, argv, env = calls[0]
    assert exe == sys.executable and argv[0] == sys.executable
    assert env["LD_PRELOAD"] == "/x/libtcmalloc.so" and env[allocator.ACTIVE] == "/x/libtcmalloc.so"
    assert "TCMALLOC_RELEASE_RATE" not in env  # the server gives memory back between bursts


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ACTIVE, allocator.ENV)}
    return subprocess.run([sys.executable, "-m", "rewardkit", *args], capture_output=True, text=True, timeout=120,
                          env={**base, "HF_HUB_OFFLINE": "1", **env}, stdin=subprocess.DEVNULL)


def test_the_command_runs_again_on_the_preloaded_library_with_its_arguments_and_exit_code(tmp_path):
    lib = _loaded("libm.so")  # any real library shows the mechanism; it stands in for tcmalloc here
    missing = tmp_path / "no-such-data.jsonl"
    res = _run(["eval", str(tmp_path), str(missing)], REWARDKIT_MALLOC=lib)
    assert res.returncode == 2, res.stderr
    # the re-executed process got the same arguments (its error names the file) and logged what it runs on
    assert f"{missing.name}: file not found" in res.stderr
    line = next(x for x in res.stderr.splitlines() if "memory allocator:" in x)
    assert line.endswith(f"memory allocator: {Path(lib).name.split('.so')[0].removeprefix('lib')} ({lib})"), line

    res = _run(["eval", str(tmp_path), str(missing)], REWARDKIT_MALLOC="system")
    assert res.returncode == 2 and "memory allocator: the C library's malloc" in res.stderr, res.stderr

    res = _run(["eval", str(tmp_path), str(missing)], REWARDKIT_MALLOC=str(tmp_path / "nope.so"))
    assert res.returncode == 2 and "REWARDKIT_MALLOC=" in res.stderr and "Traceback" not in res.stderr


def test_a_real_allocator_is_mapped_when_installed(tmp_path):
    lib = allocator.find_library({})
    if lib is None:
        pytest.skip("no tcmalloc/jemalloc installed here (make install unpacks tcmalloc on Debian-like systems)")
    res = _run(["eval", str(tmp_path), str(tmp_path / "x.jsonl")])
    assert res.returncode == 2, res.stderr
    line = next(x for x in res.stderr.splitlines() if "memory allocator:" in x)
    assert any(n in line for n in allocator.NAMES) and "not mapped" not in line, line
