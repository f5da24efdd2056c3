"""OpenRLHF custom reward function that calls `rewardkit serve` through rewardkit's client.

Use it instead of a bare URL when the server needs an API key (OpenRLHF's own HTTP client sends no
Authorization header) or when you want rewardkit's retries/backoff:

    export REWARDKIT_URL=http://10.0.0.5:5000 REWARDKIT_API_KEY=...
    python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url examples/openrlhf_reward_func.py

OpenRLHF calls `reward_func(queries, prompts, labels)` with full decoded prompt+response texts.
"""

from __future__ import annotations

import functools
import os

import torch

from rewardkit.serve.client import RewardClient


@functools.lru_cache(maxsize=1)
def _client() -> RewardClient:
    # One connection pool per process; the key comes from REWARDKIT_API_KEY.
    return RewardClient(os.environ.get("REWARDKIT_URL", "http://127.0.0.1:5000"),
                        timeout=float(os.environ.get("REWARDKIT_TIMEOUT", "180")), retries=5)


def reward_func(queries: list[str], prompts: list[str], labels: list, **kwargs) -> dict:
    if not queries:
        return {"rewards": torch.zeros(0), "scores": torch.zeros(0), "extra_logs": {}}
    r = _client().get_reward(queries, prompts, labels)
    return {"rewards": torch.tensor(r.rewards), "scores": torch.tensor(r.scores),
            "extra_logs": {k: torch.tensor(v) for k, v in r.extra_logs.items()}}
