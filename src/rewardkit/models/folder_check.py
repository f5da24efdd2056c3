"""Model folders checked before transformers reads them, so that a wrong path, an empty or foreign folder, or
a truncated weights file is one line naming the path (transformers' own errors name a missing sentencepiece
or a hub connection, or end in a SafetensorError traceback). Hub ids are left to transformers; its errors
are shortened to one line naming the id (`load_error`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Files whose presence makes a folder a checkpoint (sharded forms come with their index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "tf_model.h5", "flax_model.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt", "tekken.json")
# What a model save owns (globs): saving into a folder that held another model, or the other form of this one
# (full weights vs LoRA adapter), removes those it did not write. Stale weights would be found by transformers or
# peft; a stale chat_template.jinja would change how chats render.
SAVED_FILES = (*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
               "chat_template.json", "spm.model", "model*.safetensors", "model.safetensors.index.json",
               "pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_config.json",
               "adapter_model.safetensors")
MAX_HEADER = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB too
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def could_be_hub_id(path: str) -> bool:
    """`name` or `owner/name`: a missing local path of this shape may still be a hub model."""
    return bool(_HUB_ID.match(path)) and ".." not in path


def check_safetensors(file: Path) -> None:
    """Refuse a truncated or non-safetensors file from its header alone (8 bytes + JSON, no tensor read):
    the header's last data offset must end exactly where the file does."""
    size = file.stat().st_size

    def bad(why: str) -> ValueError:
        return ValueError(f"{file}: corrupt or truncated safetensors file ({why}); save or download the model "
                          "again")

    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than a header")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER):
            raise bad(f"header of {n} bytes in a file of {size}")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise bad("unreadable header") from None
    if not isinstance(header, dict):
        raise bad("unreadable header")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise bad("unreadable header") from None
    if 8 + n + end != size:
        raise bad(f"its tensors need {8 + n + end} bytes, the file has {size}")


def check_model_folder(path: str, gguf_file: str | None = None) -> None:
    """Raise a one-line error unless `path` (resolved: no `pypi:` prefix) is a loadable checkpoint folder,
    a GGUF file, or a name that may be a hub id. Checks config.json, that some weights are there and the
    headers of every *.safetensors file."""
    p = Path(path)
    if not p.exists():
        if could_be_hub_id(path):
            return  # transformers looks on the hub (or its cache); `load_error` names it if it fails
        raise FileNotFoundError(f"{path}: no such model folder")
    if p.is_file():
        if p.suffix == ".gguf":
            return
        raise ValueError(f"{path}: not a model folder (a file; give the folder that holds config.json)")
    if gguf_file:
        if not (p / gguf_file).is_file():
            raise FileNotFoundError(f"{p / gguf_file}: no such GGUF file (model.gguf_file)")
        return
    names = {q.name for q in p.iterdir()}
    if not names:
        raise ValueError(f"{path}: not a model folder (it is empty)")
    if "config.json" not in names:
        raise ValueError(f"{path}: not a model folder (no config.json)")
    cfg_file = p / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: line {e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{cfg_file}: not UTF-8 text") from None
    if not isinstance(cfg, dict) or not cfg.get("model_type"):
        raise ValueError(f"{path}: not a model folder (its config.json names no model_type)")
    if not names.intersection(WEIGHT_FILES):
        raise ValueError(f"{path}: not a model folder (config.json but no weights: model.safetensors or "
                         "pytorch_model.bin)")
    for name in sorted(names):
        if name.endswith(".safetensors"):
            check_safetensors(p / name)


def check_tokenizer_folder(path: str) -> None:
    """A local tokenizer folder must hold tokenizer files (transformers would ask for sentencepiece instead)."""
    p = Path(path)
    if p.is_dir() and not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.*); save the "
                         "tokenizer beside the model, or give its folder with model.tokenizer")


def first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def load_error(path: str, what: str, e: BaseException) -> ValueError:
    """transformers' (often multi-line) load error as one line naming the path and what was loaded."""
    if not Path(path).exists() and could_be_hub_id(path):
        return ValueError(f"{path}: no such folder, and no hub model of that name could be loaded (misspelt, "
                          "or offline and not cached)")
    return ValueError(f"{path}: cannot load {what}: {first_line(e)}")


def hf_load(path: str, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """`fn(*args, **kw)` (a transformers `from_pretrained`) with its load errors as one line naming `path`."""
    from safetensors import SafetensorError

    try:
        return fn(*args, **kw)
    except (OSError, ValueError, SafetensorError) as e:
        raise load_error(path, what, e) from e
