"""`rewardkit serve` start-up: a busy port, an unknown host or a bad models file is one line and exit 2 before
any model loads; the port is held (bound, not yet listening) while the models load and freed on failure."""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from serve_helpers import rm_dirs  # noqa: F401  (fixture)

from rewardkit import cli  # noqa: E402
from rewardkit.config import ConfigError  # noqa: E402
from rewardkit.serve.app import run_server  # noqa: E402
from rewardkit.serve.combine import single_model  # noqa: E402
from rewardkit.serve.service import RewardService, ServeSettings  # noqa: E402


@pytest.fixture
def no_loading(monkeypatch):
    """RewardService.load fails the test: these start-ups must stop before it."""
    def load(cls, *a, **kw):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(RewardService, "load", classmethod(load))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rewardkit serve: error: "), err
    return err[0]


def test_a_busy_port_is_exit_2_before_the_model_loads(rm_dirs, no_loading, capsys):  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(rm_dirs["llama"]), "--port", str(port)]) == 2
    line = one_error_line(capsys)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line, line


def test_an_unknown_host_is_exit_2_before_the_model_loads(rm_dirs, no_loading, capsys):  # noqa: F811
    assert cli.main(["serve", str(rm_dirs["llama"]), "--host", "no-such-host.invalid"]) == 2  # keyless: no warning
    assert "cannot listen on no-such-host.invalid:5000: " in one_error_line(capsys)


@pytest.mark.parametrize("combine,message", [
    ("{rule: llama2, safety: a, helpfulness: b, threshold: high}", "combine.threshold: expected a finite number, "
                                                                    "got 'high'"),
    ("{rule: weighted_sum, weights: {a: .nan, b: .inf}}", "combine.weights.a: expected a finite number, got nan"),
], ids=["llama2-threshold", "weighted_sum-nan"])
def test_bad_numbers_in_the_models_file_are_exit_2_before_any_model_loads(tmp_path, no_loading, capsys, combine,
                                                                          message):
    models = tmp_path / "models.yaml"
    models.write_text(f"models: {{a: x, b: y}}\ncombine: {combine}\n")
    assert cli.main(["serve", "--models", str(models), "--port", str(free_port())]) == 2
    line = one_error_line(capsys)
    assert f"{models}: {message}" in line, line


def test_the_port_is_held_while_the_models_load_and_freed_after(rm_dirs, monkeypatch):  # noqa: F811
    port, seen = free_port(), {}

    def load(cls, *a, **kw):
        with socket.socket() as other:
            with pytest.raises(OSError) as bind:  # bound: nobody else gets the port ...
                other.bind(("127.0.0.1", port))
            seen["bind"] = bind.value.errno
        with socket.socket() as client:
            seen["connect"] = client.connect_ex(("127.0.0.1", port))  # ... but not listening: clients are refused
        raise ConfigError("stop here")
    monkeypatch.setattr(RewardService, "load", classmethod(load))
    with pytest.raises(ConfigError, match="stop here"):
        run_server(single_model(str(rm_dirs["llama"])), ServeSettings(), port=port)
    assert seen == {"bind": errno.EADDRINUSE, "connect": errno.ECONNREFUSED}
    with socket.socket() as again:  # closed on the way out
        again.bind(("127.0.0.1", port))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEADDR lets a second binder in on Linux")
def test_a_port_taken_while_the_models_load_is_one_line_too(rm_dirs, monkeypatch):  # noqa: F811
    port, real_load, thief = free_port(), RewardService.load, socket.socket()

    def load(cls, *a, **kw):  # another server that sets SO_REUSEADDR (as uvicorn does) binds and listens first
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        thief.bind(("127.0.0.1", port))
        thief.listen()
        return real_load(*a, **kw)
    monkeypatch.setattr(RewardService, "load", classmethod(load))
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*taken while the models loaded"):
            run_server(single_model(str(rm_dirs["llama"])), ServeSettings(), port=port)
    finally:
        thief.close()
