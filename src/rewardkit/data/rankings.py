"""K-wise ranking rows: a prompt and K >= 2 completions with ranks or scores.

Row: {"prompt", "responses": [K >= 2], "ranks": [K] (1 = best)}  or  "scores": [K] (higher = better);
prompt and responses are strings or chat messages, column names come from `data.columns`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rewardkit.config import Columns
from rewardkit.data import fields
from rewardkit.data.fields import Text
from rewardkit.data.readers import DataError
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence


@dataclass(frozen=True)
class RankingExample:
    """A prompt and K >= 2 completions; preference: higher = better (scores, or -rank)."""

    prompt: Text
    responses: tuple[Text, ...]
    preference: tuple[float, ...]
    source: str = ""

    @property
    def notes(self) -> tuple[str, ...]:
        """What loading counts (`LoadReport.note`): each empty response (kept and scored, see `fields`)."""
        return tuple("empty_responses" for r in self.responses if fields.is_empty(r))


def ranking_example(row: dict[str, Any], cols: Columns, where: str) -> RankingExample:
    raw = fields.need(row, cols.responses, where)
    if not isinstance(raw, list) or len(raw) < 2:
        raise DataError(where, cols.responses, "expected a list of at least 2 completions")
    responses = tuple(fields.response(r, f"{cols.responses}[{i}]", where) for i, r in enumerate(raw))
    key = cols.ranks if row.get(cols.ranks) is not None else cols.scores
    if row.get(key) is None:
        raise DataError(where, cols.ranks, f"missing: need `{cols.ranks}` (1 = best) or `{cols.scores}` "
                                           "(higher = better)")
    values = row[key]
    if not isinstance(values, list) or len(values) != len(raw):
        raise DataError(where, key, f"expected a list of {len(raw)} numbers (one per completion)")
    nums = [fields.number(v, f"{key}[{i}]", where) for i, v in enumerate(values)]
    if len(set(nums)) < 2:
        raise DataError(where, key, "all completions are tied: no ordered pair to learn from")
    pref = tuple(-x for x in nums) if key == cols.ranks else tuple(nums)
    return RankingExample(fields.prompt(row, cols.prompt, where), responses, pref, where)


@dataclass(frozen=True)
class TokenizedRanking:
    sequences: tuple[TokenizedSequence, ...]
    preference: tuple[float, ...]


def tokenize_rankings(encoder: SequenceEncoder, examples: list[RankingExample]) -> list[TokenizedRanking]:
    return [TokenizedRanking(tuple(encoder.encode(ex.prompt, r) for r in ex.responses), ex.preference)
            for ex in examples]
