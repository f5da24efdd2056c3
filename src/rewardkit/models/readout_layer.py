"""Inference: the backbone's last layer computed only at the rows the reward is read from.

With the `cls` or `last` readout a reward reads one token of the last layer's output (and the head's prompt
state one more), yet the layer runs its attention, output projection and MLP for every token. For BERT-style
encoders (post-norm: keys and values are plain projections of the layer's input), the last layer can run on
those rows alone: keys and values still come from every token, everything else from the R readout rows.
MiniLM (6 layers): 400 HH texts score 1.14x faster (README, the twelfth-session notes under "Benchmark against
TRL on a CPU with native bf16").

Only for flat packed batches (segment attention) without autograd; the returned (1, T, H) states hold the
last layer's output at the R rows and the previous layer's output elsewhere, so only readouts at those rows
may be taken from it (`RewardModel.features` passes exactly the rows it reads). Scores match the full
layer's: the same ops on fewer rows, with the readout rows' attention in float32 at least (fp32: within 1e-5;
bf16, `runs/hh-minilm` on 300 HH pairs: max |Δ| 0.0023 against the full layer, 0 pairs flipped; against fp32
2 pairs flipped and max |Δ| 0.0057, where the full bf16 layer flips 2 with max |Δ| 0.0070).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn

# Layers whose forward is BERT's (self-attention through transformers' attention interface with plain
# `key`/`value` projections, then dense + LayerNorm, then the MLP); other kinds keep the full layer.
LAYER_CLASSES = ("BertLayer", "RobertaLayer", "XLMRobertaLayer", "ElectraLayer", "CamembertLayer")
_MARK = "_rk_readout_forward"


@dataclass
class ReadoutKeys:
    """Keys and values of every token (1, H, T, D) and, per unit, the query rows (qs, qe) it holds among
    the R readout rows, its key span (ks, ke) and its (n, n) mask's rows for those queries (None: full)."""

    key: torch.Tensor
    value: torch.Tensor
    spans: list[tuple[int, int, int, int, torch.Tensor | None]]

    def attend(self, query: torch.Tensor, scale: float | None, dtype: torch.dtype) -> torch.Tensor:
        """query (1, H, R, D) -> (1, R, H, D): each readout row attends over its own unit only."""
        # float32 at least: elementwise products would otherwise round each term to bf16 before the sum, where a
        # bf16 matmul accumulates in float32 (these are a few rows; the keys and values are one copy each)
        wide = torch.promote_types(dtype, torch.float32)
        q, k, v = query.to(wide), self.key.to(wide), self.value.to(wide)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        outs = []
        # Products and sums, not matmuls: oneDNN would build (and keep) a matmul primitive for every unit length
        # it meets with one query row (measured: +0.3 GB of RSS and slower first passes over 400 HH texts).
        for qs, qe, ks, ke, mask in self.spans:
            scores = ((q[:, :, qs:qe, None] * scale) * k[:, :, None, ks:ke]).sum(-1)  # (1, H, r, n)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            outs.append((weights[..., None] * v[:, :, None, ks:ke]).sum(-2))  # (1, H, r, D)
        return torch.cat(outs, dim=2).transpose(1, 2).to(dtype).contiguous()  # the dtype attention computes in


def last_layer(hf: nn.Module) -> nn.Module | None:
    """The backbone's last layer where it can run at readout rows only (see LAYER_CLASSES), else None."""
    encoder = getattr(getattr(hf, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return None
    layer = layers[-1]
    if type(layer).__name__ not in LAYER_CLASSES or getattr(layer, "add_cross_attention", False):
        return None
    sa = getattr(getattr(layer, "attention", None), "self", None)
    if sa is None or getattr(sa, "is_causal", False) or not all(
            isinstance(getattr(sa, name, None), nn.Linear) for name in ("query", "key", "value")):
        return None
    return layer


def readout_rows(hf: nn.Module, *indices: torch.Tensor) -> torch.Tensor | None:
    """Sorted unique flat rows (R,) to compute the last layer at, installing the pruned forward on first use;
    None where the layer cannot be pruned (the caller then runs the whole layer)."""
    layer = last_layer(hf)
    if layer is None:
        return None
    if not hasattr(layer, _MARK):
        setattr(layer, _MARK, layer.forward)
        layer.forward = types.MethodType(_forward, layer)
    return torch.unique(torch.cat(indices))


def _forward(self: nn.Module, hidden_states: torch.Tensor, *args, rk_rows: torch.Tensor | None = None,
             rk_units: list | None = None, **kwargs):
    """The layer at `rk_rows` only: hidden_states (1, T, H) -> (1, T, H) (see the module docstring)."""
    full = getattr(self, _MARK)
    if rk_rows is None or rk_units is None or torch.is_grad_enabled():
        return full(hidden_states, *args, rk_units=rk_units, **kwargs)
    sa = self.attention.self
    t, d = hidden_states.shape[1], sa.attention_head_size
    keys = sa.key(hidden_states).view(1, t, -1, d).transpose(1, 2)
    values = sa.value(hidden_states).view(1, t, -1, d).transpose(1, 2)
    rows = rk_rows.tolist()
    spans, i = [], 0
    for start, end, mask in rk_units:
        j = i
        while j < len(rows) and rows[j] < end:
            j += 1
        if j > i:
            rel = rk_rows[i:j] - start
            spans.append((i, j, start, end, None if mask is None else mask[rel]))
        i = j
    out = full(hidden_states[:, rk_rows], *args, rk_units=[(0, len(rows), None)],
               rk_keys=ReadoutKeys(keys, values, spans), **kwargs)
    return hidden_states.index_copy(1, rk_rows, out)
