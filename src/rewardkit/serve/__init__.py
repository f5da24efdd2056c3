"""Reward server (needs the `serve` extra: fastapi, uvicorn, pydantic).

`create_app(service, settings)` builds the FastAPI app; `RewardService` holds the models and their
batching workers; `run_server` is what `rewardkit serve` calls. Importing this package loads nothing
heavy: the submodules are imported when their names are first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "build_app", "run_server", "RewardService", "ServeSettings", "BatchSettings",
           "load_models_config", "single_model"]

_LAZY = {
    "create_app": "rewardkit.serve.app",
    "build_app": "rewardkit.serve.app",
    "run_server": "rewardkit.serve.app",
    "RewardService": "rewardkit.serve.service",
    "ServeSettings": "rewardkit.serve.service",
    "BatchSettings": "rewardkit.serve.batcher",
    "load_models_config": "rewardkit.serve.combine",
    "single_model": "rewardkit.serve.combine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rewardkit.serve' has no attribute {name!r}")
