"""`--help` text from the config dataclasses: one entry per key, its default, its choices and its help."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from rewardkit.config.schema import _hints


def _wrap(text: str, indent: str, first: str = "") -> str:
    return textwrap.fill(text, width=100, initial_indent=first, subsequent_indent=indent, break_on_hyphens=False)


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One help line per key: `key (default: value) [choices]` and its help; groups get a `group.*` line.
    Defaults come from the default instance, so a group's defaults can differ per command."""
    defaults = cls() if defaults is None else defaults
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines.append(_wrap(f"  {prefix}{f.name}.*  {f.metadata['help']}", "      "))
            lines.extend(describe(tp, f"{prefix}{f.name}.", value))
            continue
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        help_ = _wrap(f.metadata["help"], "      ", "      ")
        lines.append(f"  {prefix}{f.name} (default: {value!r}){extra}\n{help_}")
    if not prefix:
        lines += [f"  {alias}: older spelling of {target}" for alias, target in getattr(cls, "ALIASES", {}).items()]
    return lines
