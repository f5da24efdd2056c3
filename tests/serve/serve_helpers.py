"""Reward-server test helpers (not a conftest.py: that name would shadow tests/conftest.py): tiny saved reward models and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
httpx = pytest.importorskip("httpx")

from rewardkit.models.reward_model import RewardModel  # noqa: E402


def save_rm(src: Path, out: Path, *, scale: float, mean: float, std: float) -> Path:
    """A saved reward model whose (random) head is scaled so rewards are O(1), with given normalisation."""
    model, tok = RewardModel.from_pretrained(str(src))
    with torch.no_grad():
        model.head.linear.weight.mul_(scale)
    model.mean, model.std = mean, std
    model.save_pretrained(out, tok, max_length=64)
    return out


@pytest.fixture(scope="session")
def rm_dirs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rms")
    return {"llama": save_rm(tiny_models["llama"], root / "llama", scale=30.0, mean=0.5, std=2.0),
            "qwen2": save_rm(tiny_models["qwen2"], root / "qwen2", scale=30.0, mean=-0.25, std=0.5)}


class ServerThread:
    """Run an app under uvicorn in a background thread; `url` is ready when the context is entered.

    `make_server(config)` builds the uvicorn.Server (default: uvicorn's own; the drain tests pass
    `rewardkit.serve.app.draining_server`'s)."""

    def __init__(self, app, make_server=None, **config):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **config)
        self.server = (make_server or uvicorn.Server)(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while True:  # poll /health until the server answers
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not come up")
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
