"""Pointwise rows: one response with a target.

  binary       {"prompt", "response", "label": 1/0/true/false}
  regression   {"prompt", "response", "score": number}
  attributes   {"prompt", "response", <attr_1>: number|null|NaN, ...}        (null/NaN = not labelled)
Prompt and response are strings or chat messages; column names come from `data.columns`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rewardkit.config import Columns
from rewardkit.data import fields
from rewardkit.data.fields import Text
from rewardkit.data.readers import DataError
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence


@dataclass(frozen=True)
class PointExample:
    """One response with a target: a 0/1 label (binary) or a number (regression)."""

    prompt: Text
    response: Text
    target: float
    source: str = ""


@dataclass(frozen=True)
class AttributeExample:
    """One response with A attribute values; NaN = not labelled."""

    prompt: Text
    response: Text
    values: tuple[float, ...]
    source: str = ""


def point_example(row: dict[str, Any], cols: Columns, where: str, kind: str) -> PointExample:
    response = fields.response(fields.need(row, cols.response, where), cols.response, where)
    if kind == "binary":
        target = fields.label(fields.need(row, cols.label, where), cols.label, where)
    else:
        target = fields.number(row.get(cols.score), cols.score, where)
    return PointExample(fields.prompt(row, cols.prompt, where), response, target, where)


def attribute_example(row: dict[str, Any], cols: Columns, where: str) -> AttributeExample:
    response = fields.response(fields.need(row, cols.response, where), cols.response, where)
    absent = [a for a in cols.attributes if a not in row]
    if len(absent) == len(cols.attributes):
        raise DataError(where, absent[0], f"missing: none of the attribute columns is present "
                                          f"(row has: {', '.join(map(str, row))})")
    values = tuple(fields.number(row.get(a), a, where, missing_ok=True) for a in cols.attributes)
    if all(math.isnan(v) for v in values):
        raise DataError(where, cols.attributes[0], "every attribute value is missing")
    return AttributeExample(fields.prompt(row, cols.prompt, where), response, values, where)


@dataclass(frozen=True)
class TokenizedTarget:
    """One sequence with its target: a float (binary, regression) or a tuple of A floats (attributes)."""

    sequence: TokenizedSequence
    target: float | tuple[float, ...]


def tokenize_targets(encoder: SequenceEncoder,
                     examples: list[PointExample | AttributeExample]) -> list[TokenizedTarget]:
    return [TokenizedTarget(encoder.encode(ex.prompt, ex.response),
                            ex.values if isinstance(ex, AttributeExample) else ex.target) for ex in examples]
