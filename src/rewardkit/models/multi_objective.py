"""Multi-objective reward model in the style of ArmoRM (Wang et al. 2024, arXiv 2406.12845).

  attributes  r = W h_readout + b                 (N, A)   one linear head per attribute, stage 1
  debiasing   r'_i = r_i - lambda_i r_verbosity   (N, A)   optional; lambda_verbosity = 0
  gate        g = softmax(MLP(h_prompt) / T) * e^s (N, A)   h_prompt: hidden state at the last prompt token
  score       sum_i g_i r'_i                      (N,)     stage 2 trains only the gate (BT on pairs)
Saved as a normal HF folder plus `multi_objective.safetensors` (heads, gate, lambdas) and a
`rewardkit.multi_objective` block in config.json. AutoModelForSequenceClassification loads the backbone
but not these parts, so it does NOT reproduce the scores (`hf_equivalent` is false); use `RewardScorer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.data.collators import SequenceBatch, pad_sequences
from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.losses import gated_scores
from rewardkit.models.reward_model import RewardModel

log = logging.getLogger(__name__)

EXTRA_FILE = "multi_objective.safetensors"


@dataclass
class MultiObjectiveOutput:
    """score: (N,); attributes: (N, A) raw predictions; debiased: (N, A) after verbosity debiasing;
    gate: (N, A) weights (uniform 1/A before a gate is trained)."""

    score: torch.Tensor
    attributes: torch.Tensor
    debiased: torch.Tensor
    gate: torch.Tensor


def _init_linear(layer: nn.Linear, gen: torch.Generator) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / (layer.in_features + 1))
        if layer.bias is not None:
            layer.bias.zero_()


class GatingNetwork(nn.Module):
    """MLP (Linear+ReLU x layers, then Linear to A) on the prompt state -> softmax(logits / T) * exp(s).

    h: (N, H) -> (N, A). s is a learned log-scale (ArmoRM's learnable logit scale, kept positive)."""

    def __init__(self, hidden_size: int, n_attributes: int, width: int, layers: int, temperature: float,
                 seed: int = 0):
        super().__init__()
        dims = [hidden_size] + [width] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*mods, nn.Linear(dims[-1], n_attributes))
        self.temperature = temperature
        self.log_scale = nn.Parameter(torch.zeros(()))
        gen = torch.Generator().manual_seed(seed)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                _init_linear(m, gen)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mlp(h) / self.temperature, dim=-1) * self.log_scale.exp()


class MultiObjectiveRewardModel(RewardModel):
    """`RewardModel` whose score is a gated sum of attribute predictions (see the module docstring).

    The backbone's own 1-output head is kept (so the folder stays a valid HF checkpoint) but unused."""

    packed_input = False  # forward reads padded batches only

    def __init__(self, hf_model: nn.Module, readout: str | None = None, mean: float = 0.0, std: float = 1.0,
                 temperature: float = 1.0):
        super().__init__(hf_model, readout, mean, std, temperature)
        self.attribute_names: list[str] = []
        self.attr_head: nn.Linear | None = None
        self.gate: GatingNetwork | None = None
        self.gate_config: dict[str, Any] | None = None
        self.verbosity_attribute: str | None = None
        self.register_buffer("debias", torch.zeros(0))  # (A,) lambda per attribute

    @property
    def hidden_size(self) -> int:
        return self.head.in_features if isinstance(self.head, nn.Linear) else self.hf.config.hidden_size

    @property
    def hf_equivalent(self) -> bool:
        return False

    # ------------------------------------------------------------------ building

    def add_attribute_head(self, names: Sequence[str], seed: int = 0) -> None:
        """A new Linear(H, A) head, weights N(0, 1/(H+1)) seeded by `seed`; removes any gate and debiasing."""
        if not names or len(set(names)) != len(names):
            raise ValueError(f"attribute names must be non-empty and distinct, got {list(names)}")
        self.attribute_names = list(names)
        self.attr_head = nn.Linear(self.hidden_size, len(names)).to(self.hf.device)
        _init_linear(self.attr_head, torch.Generator().manual_seed(seed))
        self.gate, self.gate_config, self.verbosity_attribute = None, None, None
        self.debias = torch.zeros(len(names), device=self.hf.device)

    def add_gate(self, width: int, layers: int, temperature: float, seed: int = 0) -> None:
        self._need_attributes()
        self.gate_config = {"width": width, "layers": layers, "temperature": temperature}
        self.gate = GatingNetwork(self.hidden_size, len(self.attribute_names), width, layers, temperature,
                                  seed).to(self.hf.device)

    def set_debias(self, verbosity_attribute: str | None, lambdas: torch.Tensor | None = None) -> None:
        """r'_i = r_i - lambdas_i * r_verbosity; None switches debiasing off."""
        self._need_attributes()
        if verbosity_attribute is not None and verbosity_attribute not in self.attribute_names:
            raise ValueError(f"unknown attribute {verbosity_attribute!r}; the model has: "
                             f"{', '.join(self.attribute_names)}")
        self.verbosity_attribute = verbosity_attribute
        lam = torch.zeros(len(self.attribute_names)) if lambdas is None else lambdas.detach().float().cpu()
        self.debias = lam.to(self.hf.device)

    def _need_attributes(self) -> None:
        if self.attr_head is None:
            raise ValueError("this model has no attribute heads: train it with train.loss=attributes first")

    # ------------------------------------------------------------------ scoring

    def outputs(self, batch: SequenceBatch) -> MultiObjectiveOutput:
        """Score, attributes and gate for N sequences, one backbone pass."""
        self._need_attributes()
        if not isinstance(batch, SequenceBatch):
            raise ValueError("multi-objective models take padded SequenceBatch inputs (no packing)")
        hidden, mask, resp = self.hidden_states(batch)
        attrs = self.attr_head(self.pool(hidden, mask, resp)).float()
        debiased = attrs
        if self.verbosity_attribute is not None:
            v = self.attribute_names.index(self.verbosity_attribute)
            debiased = attrs - self.debias[None, :] * attrs[:, v:v + 1]
        if self.gate is None:
            gate = torch.full_like(attrs, 1.0 / attrs.shape[1])
        else:  # last prompt token = the token before the first response token (rows are right-aligned)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            prompt_end = (resp.argmax(1) - 1).clamp(min=0)
            gate = self.gate(hidden[rows, prompt_end].float())
        return MultiObjectiveOutput(gated_scores(debiased, gate), attrs, debiased, gate)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        """The gate-weighted score, (N,) float32."""
        return self.outputs(batch).score

    # ------------------------------------------------------------------ saving and loading

    def _save_extras(self, out_dir: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        self._need_attributes()
        tensors = {f"attr_head.{k}": v for k, v in self.attr_head.state_dict().items()}
        if self.gate is not None:
            tensors.update({f"gate.{k}": v for k, v in self.gate.state_dict().items()})
        tensors["debias"] = self.debias
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out_dir / EXTRA_FILE))
        return {"multi_objective": {"attributes": self.attribute_names, "gate": self.gate_config,
                                    "verbosity_attribute": self.verbosity_attribute, "file": EXTRA_FILE}}

    def _load_extras(self, path: str, saved: dict[str, Any]) -> None:
        mo = saved.get("multi_objective")
        if not mo:
            return  # a plain backbone: heads come from add_attribute_head
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        file = cached_file(path, mo.get("file", EXTRA_FILE))
        tensors = load_file(file)
        self.add_attribute_head(mo["attributes"])
        self.attr_head.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("attr_head.")})
        if mo.get("gate"):
            g = mo["gate"]
            self.add_gate(g["width"], g["layers"], g["temperature"])
            self.gate.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")})
        self.set_debias(mo.get("verbosity_attribute"), tensors.get("debias"))


@torch.no_grad()
def batched_outputs(model: MultiObjectiveRewardModel, seqs: Sequence[TokenizedSequence], *, pad_id: int,
                    batch_size: int = 32, device: torch.device | str = "cpu") -> MultiObjectiveOutput:
    """`outputs` for many sequences, batched by length, returned in input order (tensors on the CPU)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))
    parts: dict[str, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        idx = torch.tensor(order[start:start + batch_size])
        out = model.outputs(pad_sequences([seqs[i] for i in idx], pad_id).to(device))
        for name in ("score", "attributes", "debiased", "gate"):
            t = getattr(out, name).float().cpu()
            if name not in parts:
                parts[name] = torch.empty((len(seqs), *t.shape[1:]))
            parts[name][idx] = t
    model.train(was_training)
    return MultiObjectiveOutput(**parts)


def verbosity_lambdas(attributes: torch.Tensor, verbosity: int, threshold: float = 0.03,
                      grid: torch.Tensor | None = None) -> torch.Tensor:
    """Per attribute i, the smallest lambda in `grid` (default 0, 0.01, ..., 1) with
    |Spearman(r_i - lambda r_v, r_v)| <= threshold; where none qualifies, the lambda with the smallest
    |Spearman|. attributes: (N, A) predictions on reference responses; returns (A,), 0 for the verbosity
    attribute itself (ArmoRM's debiasing, arXiv 2406.12845 section 3)."""
    from rewardkit.metrics import spearman

    grid = torch.linspace(0, 1, 101, dtype=torch.float64) if grid is None else grid.double()
    a = attributes.double()
    rv = a[:, verbosity]
    out = torch.zeros(a.shape[1], dtype=torch.float64)
    for i in range(a.shape[1]):
        if i == verbosity:
            continue
        rhos = [spearman(a[:, i] - lam * rv, rv) for lam in grid]
        rhos = [abs(r) if r is not None and math.isfinite(r) else math.inf for r in rhos]  # None: constant
        ok = [j for j, r in enumerate(rhos) if r <= threshold]
        out[i] = grid[ok[0] if ok else min(range(len(rhos)), key=rhos.__getitem__)]
        if not ok:
            log.warning("verbosity debiasing: no lambda in [%g, %g] brings attribute %d to |Spearman| <= %g "
                        "(best %.3f)", float(grid[0]), float(grid[-1]), i, threshold, min(rhos))
    return out
