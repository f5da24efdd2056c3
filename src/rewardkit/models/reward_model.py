"""RewardModel: a backbone (HF `*ForSequenceClassification`) composed with a head (`models.heads`).

One path for every batch layout: the backbone's hidden states arrive flat, (M, H), with each sequence's
token indices (padded batches are right-aligned first, so readouts never depend on padding side); the
readout pooling (`heads.pool`) and the head do the rest. `from_pretrained` picks the head from the saved
kind (`models.kinds`); `save_pretrained` writes a plain HF folder whose config.json carries the kind, the
readout, the normalisation (mean/std) and the calibrated temperature.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.batches import PackedBatch, SequenceBatch, Sequences
from rewardkit.io import atomic_write, staged_dir
from rewardkit.models import kinds
from rewardkit.models import lora as lora_mod
from rewardkit.models.backbone import (CONFIG_KEY, check_quantization, is_encoder, load_backbone, resolve_path,
                                       set_attention, varlen_attention)
from rewardkit.models.folder_check import SAVED_FILES, check_model_folder
from rewardkit.models.heads import READOUTS, Features, HeadOutput, pool
from rewardkit.models.lora import LoraSpec
from rewardkit.models.readout_layer import readout_rows
from rewardkit.models.segment_attention import NAME as SEGMENTS, planless_attention, use_segment_attention

log = logging.getLogger(__name__)


class RewardModel(nn.Module):
    """Backbone + head -> one scalar per sequence.

    Args:
        hf_model: a `*ForSequenceClassification` model with num_labels=1.
        head: a head from `models.heads` (default: the backbone's own scalar head).
        readout: "last", "mean" or "cls" (default: last for decoders, cls for encoders).
        mean, std: reward normalisation measured on eval data (applied by `normalize`, never in forward).
        temperature: T of P(a ≻ b) = sigmoid((r_a − r_b) / T), fitted by `rewardkit calibrate` (1.0 = unfitted).
    """

    def __init__(self, hf_model: nn.Module, head: nn.Module | None = None, readout: str | None = None,
                 mean: float = 0.0, std: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.hf = hf_model
        self.is_encoder = is_encoder(hf_model)
        readout = readout or ("cls" if self.is_encoder else "last")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose from {', '.join(READOUTS)}")
        if readout == "cls" and not self.is_encoder:  # causal attention: the first token sees only itself
            raise ValueError("model.readout=cls reads the first token, which in a decoder sees nothing after it: "
                             "every sequence that starts alike would get the same reward; use last or mean")
        self.readout = readout
        self.head = head if head is not None else kinds.head_class("scalar")(hf_model, readout, self.is_encoder)
        self.mean, self.std = float(mean), float(std)
        self.temperature = float(temperature)
        self.saved_max_length: int | None = None
        self.objective_info: dict[str, Any] = {}  # how it was trained (loss, label statistics), saved as-is
        self.lora: lora_mod.LoraState | None = None  # the backbone's LoRA adapter and its base, if any
        self.new_head = False  # from_pretrained: the checkpoint had no value head, this one is random
        self.token_types = True  # encoders: the response is segment B (token_type_ids 1) where the model has them
        self.precision: str | None = None  # "bf16"/"fp32": what training ran in (saved; None: unknown)

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def config(self):
        return self.hf.config

    def set_attention(self, impl: str) -> str:
        return set_attention(self.hf, impl)

    # ------------------------------------------------------------------ building and saving

    @classmethod
    def from_pretrained(cls, path: str, *, kind: str | None = None, gguf_file: str | None = None,
                        tokenizer: str | None = None, readout: str | None = None, trust_remote_code: bool = False,
                        seed: int = 0, lora: LoraSpec | None = None, quantization: str = "none",
                        token_types: bool | None = None) -> tuple["RewardModel", Any]:
        """Load any backbone or saved reward model; return (model, tokenizer).

        The head is the saved kind's unless `kind` asks for another. A checkpoint without a value head (a
        causal LM, a bare encoder) gets one with weights drawn with std 1/(H+1), seeded by `seed`.
        A folder saved with a LoRA adapter (`rewardkit.lora` in its config.json) loads its base, then the
        adapter and the head. `lora` (r > 0) adds a new adapter to any other checkpoint; `quantization`
        (4bit/8bit, with `lora`) loads the backbone through bitsandbytes. Missing peft, bitsandbytes or CUDA
        are one-line errors raised before any weights load. `token_types` (default: as saved, else True):
        whether an encoder's response is segment B (`SequenceEncoder`).
        """
        check_model_folder(*resolve_path(path, gguf_file))  # before anything reads it: one line naming the path
        saved_lora = lora_mod.saved_block(path, gguf_file)
        wants_adapter = lora is not None and lora.r > 0
        if quantization != "none" and not (wants_adapter or saved_lora):
            raise ValueError(f"model.quantization={quantization} needs LoRA (model.lora.r > 0): "
                             "quantised weights cannot train")
        check_quantization(quantization, gguf_file)
        if wants_adapter or saved_lora:
            lora_mod.require_peft("a LoRA adapter (model.lora.r > 0 or a saved adapter folder)")
        state = None
        if saved_lora is not None:
            state = lora_mod.LoraState.from_block(saved_lora["lora"], path)
            if state.quantization != quantization:
                log.info("%s: adapter trained on a %s base, loaded on a %s one", path,
                         state.quantization if state.quantization != "none" else "full-precision",
                         quantization if quantization != "none" else "full-precision")
            if wants_adapter and (lora.r, lora.lora_alpha) != (state.spec.r, state.spec.lora_alpha):
                raise ValueError(f"{path} already has a LoRA adapter (r={state.spec.r}, alpha="
                                 f"{state.spec.lora_alpha:g}): training continues it; drop model.lora.* or "
                                 "`rewardkit merge` it first")
            state.quantization = quantization
            head_path = resolve_path(path)[0]  # the run folder: tokenizer, adapter, head extras
            b = load_backbone(state.base, gguf_file=state.gguf_file, tokenizer=tokenizer or head_path,
                              trust_remote_code=trust_remote_code, quantization=quantization, adapter=True)
            saved, new_head = saved_lora, False
        else:
            b = load_backbone(path, gguf_file=gguf_file, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                              quantization=quantization, adapter=wants_adapter)
            saved, head_path, new_head = b.saved, b.path, b.new_head
        readout = readout or saved.get("readout") or ("cls" if is_encoder(b.hf) else "last")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose from {', '.join(READOUTS)}")
        head = kinds.head_class(kind or kinds.kind_of(saved)).build(
            b.hf, readout, is_encoder(b.hf), saved=saved, path=head_path, new_head=new_head, seed=seed)
        if state is not None:
            lora_mod.load_adapter(b.hf, head_path, state)
        elif wants_adapter:
            lora_mod.add_adapter(b.hf, lora, quantized=quantization != "none")
            state = lora_mod.LoraState(lora_mod.base_name(path), gguf_file, lora, quantization)
        # A folder rewardkit did not write (an OpenRLHF reward model) keeps its normalisation in top-level mean/std.
        norm = saved if saved else {k: getattr(b.hf.config, k) for k in ("mean", "std") if _number(b.hf.config, k)}
        model = cls(b.hf, head, readout, norm.get("mean", 0.0), norm.get("std", 1.0), saved.get("temperature", 1.0))
        model.saved_max_length = saved.get("max_length")
        model.objective_info = dict(saved.get("objective") or {})
        model.lora = state
        model.new_head = new_head
        model.token_types = bool(saved.get("token_types", True) if token_types is None else token_types)
        model.precision = saved.get("precision")
        return model, b.tokenizer

    def save_pretrained(self, out_dir: str | Path, tokenizer, *, max_length: int | None = None) -> None:
        """Write a plain HF folder (atomically); config.json carries kind, readout and normalisation. A model
        with a LoRA adapter writes the adapter and the value head (peft format) instead of the base weights,
        and `rewardkit.lora` names the base."""
        cfg = self.hf.config
        block = {"kind": self.kind, "readout": self.readout, "mean": self.mean, "std": self.std,
                 "max_length": max_length, "hf_equivalent": self.hf_equivalent, "temperature": self.temperature,
                 "objective": self.objective_info, "token_types": self.token_types}
        if self.precision is not None:
            block["precision"] = self.precision
        cfg.mean, cfg.std = self.mean, self.std  # OpenRLHF reads these top-level keys for normalisation
        cfg.pad_token_id = tokenizer.pad_token_id
        out_dir = Path(out_dir)
        with staged_dir(out_dir, owned=SAVED_FILES) as tmp:
            block.update(self.head.save_extras(Path(tmp)))
            if self.lora is not None:
                block["lora"] = self.lora.block()
            setattr(cfg, CONFIG_KEY, block)
            if self.lora is not None:
                lora_mod.save_adapter(self.hf, Path(tmp), self.lora)
                cfg.save_pretrained(tmp)
                _drop_quantization_config(Path(tmp) / "config.json")
            else:
                self.hf.save_pretrained(tmp, safe_serialization=True)
            save_tokenizer(tokenizer, tmp, max_length)

    def merge_lora(self) -> int:
        """Fold the LoRA adapter into the backbone's weights (the model then saves as a plain HF model);
        returns the number of merged layers."""
        if self.lora is None:
            raise ValueError("this model has no LoRA adapter to merge")
        n = lora_mod.merge_adapter(self.hf)
        self.lora = None
        return n

    @property
    def hf_equivalent(self) -> bool:
        """True when AutoModelForSequenceClassification computes the same raw reward from the saved folder
        (never for a LoRA folder, which holds no base weights: `rewardkit merge` first)."""
        return self.lora is None and self.head.hf_equivalent(self.readout, self.is_encoder)

    # ------------------------------------------------------------------ scoring

    def features(self, batch: Sequences) -> Features:
        """Readout and last-prompt-token states, (N, H) each, for a padded or packed batch."""
        rows = None
        if self.readout != "mean" and isinstance(batch, PackedBatch) and batch.units is not None \
                and not torch.is_grad_enabled():  # only these rows of the last layer are read
            rows = readout_rows(self.hf, batch.last_index if self.readout == "last" else batch.first_index,
                                batch.prompt_end_index)
        flat, idx = backbone_hidden(self.hf, batch, rows=rows)
        n = int(idx["last"].shape[0])
        pooled = pool(flat, self.readout, last=idx["last"], first=idx["first"], response_seq=idx["response_seq"], n=n)
        return Features(pooled, flat[idx["prompt_end"]])

    def outputs(self, batch: Sequences) -> HeadOutput:
        """Score (N,) and the head's other outputs for N sequences, one backbone pass."""
        return self.head(self.features(batch))

    def forward(self, batch: Sequences) -> torch.Tensor:
        """Raw rewards, shape (N,), float32."""
        return self.outputs(batch).score

    def token_values(self, batch: SequenceBatch) -> torch.Tensor:
        """The value head applied to every hidden state: (N, T) float32, at the batch's own positions, 0 at
        padding. Causal backbones only; the value at a row's last real token equals `forward` with the
        `last` readout (the token-level loss trains these, inference still reads the last one)."""
        if self.is_encoder:
            raise ValueError("token_values needs a causal backbone: an encoder's states see the whole sequence")
        flat, _ = padded_hidden(self.hf, batch)
        mask = _right_align(batch)[1]
        values = self.head.values(flat).reshape(mask.shape) * mask
        if bool(batch.attention_mask[:, 0].all()):  # already right-aligned
            return values
        order = torch.sort(1 - batch.attention_mask, dim=1, stable=True).indices  # as in _right_align
        return torch.zeros_like(values).scatter_(1, order, values)

    def normalize(self, rewards: torch.Tensor) -> torch.Tensor:
        if not (self.std > 0 and math.isfinite(self.std) and math.isfinite(self.mean)):
            # dividing by 1 instead (as before) would return rewards that only look normalised
            raise ValueError(f"cannot normalise: this model's saved mean/std are {self.mean}/{self.std} (std must be "
                             "a finite number > 0); score without normalize, or set `mean` and `std` in the "
                             "rewardkit block of its config.json")
        return (rewards - self.mean) / self.std


def write_temperature(model_dir: str | Path, temperature: float, *, kind: str | None = None) -> Path:
    """Set `rewardkit.temperature` in a saved model's config.json (atomically; other keys untouched). `kind`
    is written too where the block names none, so a plain LM folder calibrated as a judge (generative, dpo)
    is not later read as a value-head model."""
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
    cfg[CONFIG_KEY] = {**({"kind": kind} if kind and not (block or {}).get("kind") else {}), **(block or {}),
                       "temperature": t}
    mode = path.stat().st_mode & 0o777
    with atomic_write(path) as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(path, mode)  # the temp file was created 0600; keep the config readable as before
    return path


def _drop_quantization_config(path: Path) -> None:
    """A LoRA folder's config.json describes the float model its base loads as; a bitsandbytes load's
    `quantization_config` would make transformers expect quantised weights there."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def backbone_hidden(hf: nn.Module, batch: Sequences, *, rows: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one backbone forward of every batch layout: (M, H) last hidden states of `hf.base_model` and flat
    indices into them: last, first, prompt_end (N,), response_seq (M,) and the token ids `ids` (M,).
    On CUDA without cuDNN attention, whatever attention the model uses (segment_attention.PLANLESS_BACKENDS).
    rows (flat packed batches, from `readout_rows`): the last layer runs at these flat rows only, and only
    they hold last-layer states."""
    with planless_attention(batch.input_ids.device):
        return packed_hidden(hf, batch, rows) if isinstance(batch, PackedBatch) else padded_hidden(hf, batch)


def padded_hidden(hf: nn.Module, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(N*T, H) states of right-aligned rows and the flat indices of each row's tokens."""
    ids, mask, resp, types = _right_align(batch)
    kw = {"token_type_ids": types} if types is not None else {}
    hidden = hf.base_model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state  # (N, T, H)
    n, t = ids.shape
    start = torch.arange(n, device=ids.device) * t
    rows = torch.arange(n, device=ids.device)[:, None].expand(n, t)
    idx = {"last": start + mask.sum(1) - 1, "first": start,
           "prompt_end": start + (resp.argmax(1) - 1).clamp(min=0),
           "response_seq": torch.where(resp.bool(), rows, -1).reshape(-1), "ids": ids.reshape(-1)}
    return hidden.reshape(n * t, -1), idx


def packed_hidden(hf: nn.Module, b: PackedBatch, rows: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(R*L, H) states of a packed batch (one forward over its rows) and its sequence indices."""
    mask = b.attention_mask
    impl = hf.config._attn_implementation or "sdpa"
    kw: dict[str, Any] = {"token_type_ids": b.token_type_ids} if b.token_type_ids is not None else {}
    if varlen_attention(impl):
        if not b.position_ids_suffice:
            raise ValueError(f"{impl} takes no custom masks: use packing without shared prompts, or sdpa")
        mask = None  # transformers builds varlen boundaries from the position_ids resets
    elif b.units is not None:  # flat batch: one attention call per unit (see segment_attention)
        if impl != SEGMENTS:
            use_segment_attention(hf.config)  # stays: padded batches then run as plain SDPA
        kw["rk_units"] = b.units
        if rows is not None:
            kw["rk_rows"] = rows
        mask = torch.ones(b.input_ids.shape, dtype=torch.long, device=b.input_ids.device)  # no (T, T) mask built
    elif impl == "eager":  # eager wants an additive float mask
        mask = torch.zeros(mask.shape, dtype=hf.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(hf.dtype).min)
    hidden = hf.base_model(input_ids=b.input_ids, attention_mask=mask, position_ids=b.position_ids,
                           **kw).last_hidden_state
    idx = {"last": b.last_index, "first": b.first_index, "prompt_end": b.prompt_end_index,
           "response_seq": b.response_seq.reshape(-1), "ids": b.input_ids.reshape(-1)}
    return hidden.reshape(-1, hidden.shape[-1]), idx


def _right_align(batch: SequenceBatch):
    """Move each row's real tokens to the front, so readouts and positions never depend on padding side."""
    mask = batch.attention_mask
    if bool(mask[:, 0].all()):
        return batch.input_ids, mask, batch.response_mask, batch.token_type_ids
    order = torch.sort(1 - mask, dim=1, stable=True).indices  # (N,T): real tokens first, order kept
    take = lambda t: None if t is None else t.gather(1, order)  # noqa: E731
    return take(batch.input_ids), take(mask), take(batch.response_mask), take(batch.token_type_ids)


def _number(config: Any, key: str) -> bool:
    """Whether `config.key` is a finite number (a usable top-level mean/std)."""
    v = getattr(config, key, None)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def save_tokenizer(tokenizer, folder: str | Path, max_length: int | None) -> None:
    """Save `tokenizer` so that plain transformers cuts a text as rewardkit does: `tokenizer(text,
    truncation=True)` keeps its last `max_length` tokens (rewardkit drops the prompt's start first). The
    caller's tokenizer object is left as it was."""
    settings = {"truncation_side": "left", **({"model_max_length": max_length} if max_length else {})}
    # transformers writes the attributes its init kwargs name: set both, put both back
    old = {k: getattr(tokenizer, k) for k in settings}, dict(tokenizer.init_kwargs)
    for k, v in settings.items():
        setattr(tokenizer, k, v)
    tokenizer.init_kwargs.update(settings)
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        for k, v in old[0].items():
            setattr(tokenizer, k, v)
        tokenizer.init_kwargs.clear()
        tokenizer.init_kwargs.update(old[1])

