"""Data for the non-pairwise objectives: K-wise rankings, pointwise labels/scores, multi-attribute scores.

Row formats (prompt and responses are strings or chat messages; column names are configurable):
  rankings     {"prompt", "responses": [K >= 2], "ranks": [K] (1 = best)}   or  "scores": [K] (higher = better)
  binary       {"prompt", "response", "label": 1/0/true/false}
  regression   {"prompt", "response", "score": number}
  attributes   {"prompt", "response", <attr_1>: number|null|NaN, ...}        (null/NaN = not labelled)
Also the Llama 2 rating -> margin tables for pairs. Errors name the file, the line and the field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from rewardkit.data.collators import SequenceBatch, pad_sequences
from rewardkit.data.formats import DataError, LoadReport, Text, _messages, _need, _text, rating_key
from rewardkit.data.readers import _iter_rows
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence


# Llama 2 (Touvron et al. 2023, Table 27): margin by the annotator's preference strength.
MARGIN_TABLES: dict[str, dict[str, float]] = {
    "small": {"significantly better": 1.0, "better": 2 / 3, "slightly better": 1 / 3,
              "negligibly better": 0.0, "unsure": 0.0},
    "large": {"significantly better": 3.0, "better": 2.0, "slightly better": 1.0,
              "negligibly better": 0.0, "unsure": 0.0},
}
for _t in MARGIN_TABLES.values():  # the paper's merged label, spelled out
    _t["negligibly better or unsure"] = _t["negligibly better / unsure"] = 0.0


def margin_mapping(table: str | None, mapping: dict[str, float] | None) -> dict[str, float] | None:
    """The rating -> margin mapping to use (keys normalised by `rating_key`), or None for margin columns."""
    if table and mapping:
        raise ValueError("set data.margin_table or data.margin_map, not both")
    if mapping:
        return {rating_key(k): float(v) for k, v in mapping.items()}
    if table:
        if table not in MARGIN_TABLES:
            raise ValueError(f"unknown margin table {table!r}; choose from: {', '.join(MARGIN_TABLES)}")
        return dict(MARGIN_TABLES[table])
    return None


@dataclass(frozen=True)
class ObjectiveColumns:
    prompt: str = "prompt"
    response: str = "response"
    responses: str = "responses"
    ranks: str = "ranks"
    scores: str = "scores"
    label: str = "label"
    score: str = "score"
    attributes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, columns: Any) -> "ObjectiveColumns":
        kw = {f.name: getattr(columns, f.name) for f in fields(cls)}
        return cls(**{**kw, "attributes": tuple(kw["attributes"])})


@dataclass(frozen=True)
class RankingExample:
    """A prompt and K >= 2 completions; preference: higher = better (scores, or -rank)."""

    prompt: Text
    responses: tuple[Text, ...]
    preference: tuple[float, ...]
    source: str = ""


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


# --------------------------------------------------------------------------- reading rows

def _prompt(row: dict[str, Any], key: str, where: str) -> Text:
    p = row.get(key)
    if p is None:
        return ""
    return _text(p, key, where, allow_empty=True) if isinstance(p, str) else _messages(p, key, where)


def _response(value: Any, key: str, where: str) -> Text:
    if isinstance(value, str):
        return _text(value, key, where)
    msgs = _messages(value, key, where)
    if not msgs:
        raise DataError(where, key, "no response message")
    return msgs


def _number(value: Any, key: str, where: str, missing_ok: bool = False) -> float:
    """A finite float; with `missing_ok`, None, "" and NaN give NaN."""
    if value is None or value == "":
        if missing_ok:
            return math.nan
        raise DataError(where, key, "missing")
    if isinstance(value, bool):
        raise DataError(where, key, f"expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(where, key, f"expected a number, got {value!r}") from None
    if math.isnan(x) and missing_ok:
        return x
    if not math.isfinite(x):
        raise DataError(where, key, f"expected a finite number, got {value!r}")
    return x


_TRUE, _FALSE = {"1", "true", "yes", "accept", "accepted"}, {"0", "false", "no", "reject", "rejected"}


def _label(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return float(value.strip().lower() in _TRUE)
    raise DataError(where, key, f"expected a 0/1 or true/false label, got {value!r}")


def ranking_example(row: dict[str, Any], cols: ObjectiveColumns, where: str) -> RankingExample:
    raw = _need(row, cols.responses, where)
    if not isinstance(raw, list) or len(raw) < 2:
        raise DataError(where, cols.responses, "expected a list of at least 2 completions")
    responses = tuple(_response(r, f"{cols.responses}[{i}]", where) for i, r in enumerate(raw))
    key = cols.ranks if row.get(cols.ranks) is not None else cols.scores
    if row.get(key) is None:
        raise DataError(where, cols.ranks, f"missing: need `{cols.ranks}` (1 = best) or `{cols.scores}` "
                                           "(higher = better)")
    values = row[key]
    if not isinstance(values, list) or len(values) != len(raw):
        raise DataError(where, key, f"expected a list of {len(raw)} numbers (one per completion)")
    nums = [_number(v, f"{key}[{i}]", where) for i, v in enumerate(values)]
    if len(set(nums)) < 2:
        raise DataError(where, key, "all completions are tied: no ordered pair to learn from")
    pref = tuple(-x for x in nums) if key == cols.ranks else tuple(nums)
    return RankingExample(_prompt(row, cols.prompt, where), responses, pref, where)


def point_example(row: dict[str, Any], cols: ObjectiveColumns, where: str, kind: str) -> PointExample:
    response = _response(_need(row, cols.response, where), cols.response, where)
    if kind == "binary":
        target = _label(_need(row, cols.label, where), cols.label, where)
    else:
        target = _number(row.get(cols.score), cols.score, where)
    return PointExample(_prompt(row, cols.prompt, where), response, target, where)


def attribute_example(row: dict[str, Any], cols: ObjectiveColumns, where: str) -> AttributeExample:
    response = _response(_need(row, cols.response, where), cols.response, where)
    absent = [a for a in cols.attributes if a not in row]
    if len(absent) == len(cols.attributes):
        raise DataError(where, absent[0], f"missing: none of the attribute columns is present "
                                          f"(row has: {', '.join(map(str, row))})")
    values = tuple(_number(row.get(a), a, where, missing_ok=True) for a in cols.attributes)
    if all(math.isnan(v) for v in values):
        raise DataError(where, cols.attributes[0], "every attribute value is missing")
    return AttributeExample(_prompt(row, cols.prompt, where), response, values, where)


def load_examples(source: str, convert: Callable[[dict[str, Any], str], Any], *, on_error: str = "raise",
                  split: str = "train", max_samples: int | None = None) -> tuple[list, LoadReport]:
    """Read `source` and convert each row with `convert(row, where)`; malformed rows raise `DataError`
    (on_error="raise") or are skipped and counted ("skip")."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report, examples = LoadReport(), []
    rows = _iter_rows(source, split)
    if max_samples is not None:
        rows = itertools.islice(rows, max(0, max_samples))
    for where, row in rows:
        report.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            examples.append(convert(row, where))
        except DataError as e:
            report.skip(e, on_error)
    report.finish(source, len(examples))
    return examples, report


# --------------------------------------------------------------------------- tokenised items and batches

@dataclass(frozen=True)
class TokenizedRanking:
    sequences: tuple[TokenizedSequence, ...]
    preference: tuple[float, ...]


@dataclass(frozen=True)
class TokenizedTarget:
    """One sequence with its target: a float (binary, regression) or a tuple of A floats (attributes)."""

    sequence: TokenizedSequence
    target: float | tuple[float, ...]


def tokenize_rankings(encoder: SequenceEncoder, examples: list[RankingExample]) -> list[TokenizedRanking]:
    return [TokenizedRanking(tuple(encoder.encode(ex.prompt, r) for r in ex.responses), ex.preference)
            for ex in examples]


def tokenize_targets(encoder: SequenceEncoder,
                     examples: list[PointExample | AttributeExample]) -> list[TokenizedTarget]:
    return [TokenizedTarget(encoder.encode(ex.prompt, ex.response),
                            ex.values if isinstance(ex, AttributeExample) else ex.target) for ex in examples]


def _to(batch: Any, device: torch.device | str) -> Any:
    return replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in fields(batch)})


@dataclass
class RankingBatch:
    """P prompts with up to K completions each, all in one forward.

    sequences: N = sum of K_p rows, prompt by prompt. preference: (P, K) float, higher = better;
    mask: (P, K) bool, False for the padding slots of prompts with fewer than K completions (row-major
    True slots correspond to the rows of `sequences`).
    """

    sequences: SequenceBatch
    preference: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> "RankingBatch":
        return _to(self, device)


@dataclass
class TargetBatch:
    """N sequences with targets. target: (N,) float, or (N, A) float with NaN where missing;
    mask: same shape as target, bool, True where a target is present."""

    sequences: SequenceBatch
    target: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> "TargetBatch":
        return _to(self, device)


@dataclass
class RankingCollator:
    pad_id: int

    def __call__(self, items: list[TokenizedRanking]) -> RankingBatch:
        k = max(len(it.sequences) for it in items)
        pref = torch.zeros(len(items), k)
        mask = torch.zeros(len(items), k, dtype=torch.bool)
        for i, it in enumerate(items):
            pref[i, :len(it.preference)] = torch.tensor(it.preference)
            mask[i, :len(it.sequences)] = True
        seqs = [s for it in items for s in it.sequences]
        return RankingBatch(pad_sequences(seqs, self.pad_id), pref, mask)


@dataclass
class TargetCollator:
    pad_id: int

    def __call__(self, items: list[TokenizedTarget]) -> TargetBatch:
        target = torch.tensor([it.target for it in items], dtype=torch.float32)
        return TargetBatch(pad_sequences([it.sequence for it in items], self.pad_id), target, ~target.isnan())
