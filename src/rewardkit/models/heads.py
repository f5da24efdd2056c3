"""Value heads: what a reward model computes from the backbone's hidden states.

`pool` reads each sequence's readout state once, for padded and packed batches alike (both arrive here as a
flat (M, H) tensor plus indices). A head maps `Features` to a `HeadOutput` whose `score` (N,) is the reward:
  ScalarHead      the backbone's own 1-output head (HF `score` / `classifier`): HF-loadable as saved
  AttributeHead   ArmoRM-style: A attribute heads, optional verbosity debiasing, a gate on the prompt state
Each head knows its saved kind name, how to build itself from a loaded backbone and what it saves beside the
HF weights; `models.kinds` maps the kind saved in config.json to the head class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.losses import gated_scores
from rewardkit.models.backbone import own_head

log = logging.getLogger(__name__)

READOUTS = ("last", "mean", "cls")


@dataclass
class Features:
    """pooled: (N, H) hidden state at each sequence's readout (`cls`: its first token, before any pooler);
    prompt: (N, H) hidden state at each sequence's last prompt token."""

    pooled: torch.Tensor
    prompt: torch.Tensor


@dataclass
class HeadOutput:
    """score: (N,) float32 reward. extras: other per-sequence outputs, e.g. attributes (N, A), gate (N, A)."""

    score: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def pool(flat: torch.Tensor, readout: str, *, last: torch.Tensor, first: torch.Tensor,
         response_seq: torch.Tensor, n: int) -> torch.Tensor:
    """Readout states (N, H) from flat hidden states (M, H).

    last, first: (N,) indices into `flat`; response_seq: (M,) sequence number of each response token, -1
    elsewhere. `last`: the last token; `mean`: the mean over response tokens; `cls`: the first token.
    """
    if readout == "last":
        return flat[last]
    if readout == "mean":
        keep = response_seq >= 0
        # Summed in fp32: a bf16 running sum over hundreds of tokens keeps ~3 significant digits.
        sums = torch.zeros(n, flat.shape[-1], dtype=torch.float32, device=flat.device)
        sums.index_add_(0, response_seq[keep], flat[keep].float())
        counts = torch.bincount(response_seq[keep], minlength=n).clamp(min=1)
        return sums / counts.unsqueeze(-1)
    return flat[first]


def full_precision(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` outside any autocast, in the module's own weight dtype (fp32 for a trained head).

    Under bf16 autocast a head's output is rounded to bf16 (~3 significant digits): close chosen/rejected
    rewards then tie or swap, and the loss sees rounded margins. The heads are a sliver of the FLOPs."""
    dtype = next(module.parameters()).dtype
    with torch.autocast(x.device.type, enabled=False):
        return module(x.to(dtype))


def _init_linear(layer: nn.Module, gen: torch.Generator) -> None:
    """Weights N(0, 1/(in+1)) (OpenRLHF's value-head init), bias 0."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name == "weight":
                p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] + 1))
            else:
                p.zero_()


class ScalarHead(nn.Module):
    """The backbone's own 1-output head, so the saved folder scores the same in transformers.

    Decoders: `last` = head(state at the last non-pad token), HF's own pooling. Encoders: `cls` = HF's
    pooler + dropout + classifier on the first token; `mean`/`last`/decoder `cls` apply the linear head to
    the pooled state (no HF equivalent for `mean`)."""

    kind = "scalar"

    def __init__(self, hf: nn.Module, readout: str, encoder: bool):
        super().__init__()
        self.linear = own_head(hf)
        self.encoder_cls = encoder and readout == "cls"
        if encoder and not self.encoder_cls and not isinstance(self.linear, nn.Linear):
            raise ValueError(f"readout {readout!r} needs a linear classifier head; "
                             f"{type(hf).__name__} has {type(self.linear).__name__}")
        # HF's pooler and dropout, kept out of this module's parameters (they belong to the backbone).
        pooler = getattr(hf.base_model, "pooler", None) or getattr(hf, "pooler", None)
        self._hf_parts = (pooler, getattr(hf, "dropout", nn.Identity()))
        self.published: dict[str, list[str]] = {}

    @classmethod
    def build(cls, hf: nn.Module, readout: str, encoder: bool, *, saved: dict[str, Any], path: str,
              new_head: bool, seed: int) -> "ScalarHead":
        head = cls(hf, readout, encoder)
        if new_head:
            _init_linear(head.linear, torch.Generator().manual_seed(seed))
            log.info("initialised a new value head")
        return head

    def forward(self, f: Features) -> HeadOutput:
        if not self.encoder_cls:
            return HeadOutput(full_precision(self.linear, f.pooled)[:, 0].float())
        pooler, dropout = self._hf_parts
        first = f.pooled.unsqueeze(1)  # (N, 1, H): HF's heads read position 0 of a sequence
        x = dropout(pooler(first)) if pooler is not None else first
        return HeadOutput(full_precision(self.linear, x)[:, 0].float())

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """The linear head on every state: (..., H) -> (...,) float32 (the token-level loss trains these)."""
        return full_precision(self.linear, hidden)[..., 0].float()

    def hf_equivalent(self, readout: str, encoder: bool) -> bool:
        return readout == ("cls" if encoder else "last")

    def save_extras(self, out_dir: Path) -> dict[str, Any]:
        return {}


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


EXTRA_FILE = "multi_objective.safetensors"


class AttributeHead(nn.Module):
    """Multi-objective head in the style of ArmoRM (Wang et al. 2024, arXiv 2406.12845).

      attributes  r = W h_readout + b                 (N, A)   one linear head per attribute, stage 1
      debiasing   r'_i = r_i - lambda_i r_verbosity   (N, A)   optional; lambda_verbosity = 0
      gate        g = softmax(MLP(h_prompt) / T) * e^s (N, A)  uniform 1/A until a gate is trained
      score       sum_i g_i r'_i                      (N,)     stage 2 trains only the gate (BT on pairs)
    Saved as `multi_objective.safetensors` plus a `rewardkit.multi_objective` block in config.json.
    AutoModelForSequenceClassification loads the backbone but not these parts (`hf_equivalent` is false).
    """

    kind = "multi_objective"

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.attribute_names: list[str] = []
        self.attr_head: nn.Linear | None = None
        self.gate: GatingNetwork | None = None
        self.gate_config: dict[str, Any] | None = None
        self.verbosity_attribute: str | None = None
        self.register_buffer("debias", torch.zeros(0))  # (A,) lambda per attribute

    @property
    def published(self) -> dict[str, list[str]]:
        """Per-sequence outputs a scorer reports beside the score, with the names of their columns."""
        return {"attributes": self.attribute_names, "gate": self.attribute_names}

    @classmethod
    def build(cls, hf: nn.Module, readout: str, encoder: bool, *, saved: dict[str, Any], path: str,
              new_head: bool, seed: int) -> "AttributeHead":
        head = cls(getattr(own_head(hf), "in_features", hf.config.hidden_size))
        mo = saved.get("multi_objective")
        if mo:  # a trained multi-objective model; a plain backbone gets its heads from set_attributes
            from safetensors.torch import load_file
            from transformers.utils import cached_file

            tensors = load_file(cached_file(path, mo.get("file", EXTRA_FILE)))
            head.set_attributes(mo["attributes"])
            head.attr_head.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("attr_head.")})
            if mo.get("gate"):
                g = mo["gate"]
                head.add_gate(g["width"], g["layers"], g["temperature"])
                head.gate.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")})
            head.set_debias(mo.get("verbosity_attribute"), tensors.get("debias"))
        return head.to(hf.device)

    def set_attributes(self, names: Sequence[str], seed: int = 0) -> None:
        """A new Linear(H, A) head, weights N(0, 1/(H+1)) seeded by `seed`; removes any gate and debiasing."""
        if not names or len(set(names)) != len(names):
            raise ValueError(f"attribute names must be non-empty and distinct, got {list(names)}")
        device = self.debias.device
        self.attribute_names = list(names)
        self.attr_head = nn.Linear(self.hidden_size, len(names)).to(device)
        _init_linear(self.attr_head, torch.Generator().manual_seed(seed))
        self.gate, self.gate_config, self.verbosity_attribute = None, None, None
        self.debias = torch.zeros(len(names), device=device)

    def add_gate(self, width: int, layers: int, temperature: float, seed: int = 0) -> None:
        self._need_attributes()
        self.gate_config = {"width": width, "layers": layers, "temperature": temperature}
        self.gate = GatingNetwork(self.hidden_size, len(self.attribute_names), width, layers, temperature,
                                  seed).to(self.debias.device)

    def set_debias(self, verbosity_attribute: str | None, lambdas: torch.Tensor | None = None) -> None:
        """r'_i = r_i - lambdas_i * r_verbosity; None switches debiasing off."""
        self._need_attributes()
        if verbosity_attribute is not None and verbosity_attribute not in self.attribute_names:
            raise ValueError(f"unknown attribute {verbosity_attribute!r}; the model has: "
                             f"{', '.join(self.attribute_names)}")
        self.verbosity_attribute = verbosity_attribute
        lam = torch.zeros(len(self.attribute_names)) if lambdas is None else lambdas.detach().float().cpu()
        self.debias = lam.to(self.debias.device)

    def _need_attributes(self) -> None:
        if self.attr_head is None:
            raise ValueError("this model has no attribute heads: train it with loss=attributes first")

    def forward(self, f: Features) -> HeadOutput:
        """score (N,); extras: attributes (N, A) raw predictions, debiased (N, A), gate (N, A)."""
        self._need_attributes()
        attrs = full_precision(self.attr_head, f.pooled).float()
        debiased = attrs
        if self.verbosity_attribute is not None:
            v = self.attribute_names.index(self.verbosity_attribute)
            debiased = attrs - self.debias[None, :] * attrs[:, v:v + 1]
        gate = (torch.full_like(attrs, 1.0 / attrs.shape[1]) if self.gate is None
                else full_precision(self.gate, f.prompt))
        return HeadOutput(gated_scores(debiased, gate), {"attributes": attrs, "debiased": debiased, "gate": gate})

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        raise ValueError("per-token values need the scalar value head, not a multi-objective model")

    def hf_equivalent(self, readout: str, encoder: bool) -> bool:
        return False

    def save_extras(self, out_dir: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        self._need_attributes()
        tensors = {f"attr_head.{k}": v for k, v in self.attr_head.state_dict().items()}
        if self.gate is not None:
            tensors.update({f"gate.{k}": v for k, v in self.gate.state_dict().items()})
        tensors["debias"] = self.debias
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out_dir / EXTRA_FILE))
        return {"multi_objective": {"attributes": self.attribute_names, "gate": self.gate_config,
                                    "verbosity_attribute": self.verbosity_attribute, "file": EXTRA_FILE}}
