"""How long a sequence a backbone can read: learned absolute position embeddings (BERT, RoBERTa, GPT-2, OPT)
have one row per position, and a longer sequence fails deep inside the forward with an IndexError. Rotary and
relative positions (Llama, Qwen, DeBERTa-v3) have no such table and no hard limit."""

from __future__ import annotations

from torch import nn

# Attribute names transformers gives a learned absolute position table (BERT/RoBERTa: position_embeddings,
# GPT-2: wpe, OPT/BART: embed_positions).
_TABLES = ("position_embeddings", "wpe", "embed_positions")


def position_limit(model: nn.Module) -> int | None:
    """The most tokens one sequence may have in `model`, or None where its positions have no table."""
    limits = []
    for module in model.modules():
        for name in _TABLES:
            table = getattr(module, name, None)
            if isinstance(table, nn.Embedding):
                limits.append(table.num_embeddings - _offset(table))
    return min(limits) if limits else None


def _offset(table: nn.Embedding) -> int:
    """Rows a table keeps before its first position: RoBERTa numbers positions from padding_idx + 1, OPT's
    table has an explicit offset of 2."""
    offset = getattr(table, "offset", None)
    if isinstance(offset, int):
        return offset
    return table.padding_idx + 1 if table.padding_idx is not None else 0


class PositionLimit(ValueError):
    """A max_length beyond the model's learned position table; `for_key` restates it for a config key."""

    def __init__(self, key: str, requested: int, limit: int):
        self.requested, self.limit = requested, limit
        super().__init__(f"{key}: {requested} exceeds the {limit} positions this model has (a learned position "
                         f"table); use at most {limit}")

    def for_key(self, key: str) -> "PositionLimit":
        return PositionLimit(key, self.requested, self.limit)


def fit_max_length(model: nn.Module, requested: int | None, fallback: int, *, key: str = "max_length") -> int:
    """The max_length to encode with: `requested` (an error naming `key` when the model's position table is
    shorter), else `fallback` (the trained value or a default) capped at the table's length."""
    limit = position_limit(model)
    if requested is not None:
        if limit is not None and requested > limit:
            raise PositionLimit(key, requested, limit)
        return requested
    return min(fallback, limit) if limit is not None else fallback
