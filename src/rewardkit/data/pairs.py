"""Raw rows -> `PreferenceExample`.

Rows come from `readers` (files, `datasets.save_to_disk` folders, hub ids); this module detects the row
format and turns each row into one typed example. Every error names the file, the line/row and the field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rewardkit.config import Columns
from rewardkit.data import fields
from rewardkit.data.fields import Message, Text, rating_key
from rewardkit.data.readers import DataError, LoadReport, load_examples

log = logging.getLogger(__name__)

FORMATS = ("explicit", "implicit", "conversational", "sharegpt")
# Turn markers of "\n\nHuman: ...\n\nAssistant: ..." transcripts (Anthropic HH and its copies).
ASSISTANT_MARKERS = ("\n\nAssistant:", "\nAssistant:")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                   "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair. `prompt` may be "" (or []) when the data has none."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    source: str = ""  # "file.jsonl:line 12", for error messages downstream

    @property
    def notes(self) -> tuple[str, ...]:
        """What loading counts about this pair (`LoadReport.note`): each empty response, identical answers."""
        empty = tuple("empty_responses" for r in (self.chosen, self.rejected) if fields.is_empty(r))
        return empty + (("identical_pairs",) if self.chosen == self.rejected else ())


# --------------------------------------------------------------------------- formats

def detect_format(row: dict[str, Any], cols: Columns) -> str:
    """Guess the format from one row's keys and value types."""
    if cols.conversations in row:
        return "sharegpt"
    chat = any(isinstance(row.get(k), (list, dict)) for k in (cols.chosen, cols.rejected))
    if cols.prompt in row and row[cols.prompt] is not None:
        if isinstance(row[cols.prompt], list) or chat:
            return "conversational"
        return "explicit"
    if chat:
        return "conversational"
    return "implicit"


def _detect_majority(rows: list[dict[str, Any]], cols: Columns) -> str:
    """The format most of the first rows have, so that one malformed first row cannot decide it."""
    votes: dict[str, int] = {}
    for row in rows:
        f = detect_format(row, cols)
        votes[f] = votes.get(f, 0) + 1
    return max(votes, key=lambda f: (votes[f], -FORMATS.index(f)))


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


def _rated_margin(row: dict[str, Any], key: str, where: str, margins: dict[str, float]) -> float:
    value = fields.need(row, key, where)
    try:
        return margins[rating_key(value)]
    except KeyError:
        raise DataError(where, key, f"rating {value!r} is not in the margin table "
                                    f"({', '.join(map(repr, margins))})") from None


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two transcripts sharing a history into (prompt, chosen response, rejected response).

    The cut is the end of the last assistant marker inside the common prefix, so the prompt ends with
    "\\n\\nAssistant:" and each response is that turn's text. Without markers, the cut falls before the
    last whitespace of the common prefix: the response keeps its leading space, as it does after a marker, so
    prompt and response tokenise as the whole transcript does (" four" is one BPE token, "four" after " " two).
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    cut = -1
    for marker in ASSISTANT_MARKERS:
        at = common.rfind(marker)
        if at >= 0:
            cut = max(cut, at + len(marker))
    if cut < 0:
        cut = max(common.rfind(" "), common.rfind("\n"), 0) if n < limit or n == 0 else 0
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _split_messages(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], list[Message], list[Message]]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def to_example(row: dict[str, Any], fmt: str, cols: Columns, where: str,
               margins: dict[str, float] | None = None) -> PreferenceExample:
    """One raw row in format `fmt` -> a `PreferenceExample`, or a `DataError` naming the field.

    With `margins` (normalised rating -> margin) the margin comes from the rating column instead."""
    margin = fields.margin(row, cols.margin, where) if margins is None else _rated_margin(row, cols.rating, where, margins)
    if fmt == "explicit":
        prompt = fields.text(fields.need(row, cols.prompt, where), cols.prompt, where, allow_empty=True)
        chosen = fields.text(fields.need(row, cols.chosen, where), cols.chosen, where, allow_empty=True)
        rejected = fields.text(fields.need(row, cols.rejected, where), cols.rejected, where, allow_empty=True)
        return PreferenceExample(prompt, chosen, rejected, margin, where)
    if fmt == "implicit":  # a transcript is the whole conversation: it needs text; its last reply may be empty
        c = fields.text(fields.need(row, cols.chosen, where), cols.chosen, where)
        r = fields.text(fields.need(row, cols.rejected, where), cols.rejected, where)
        prompt, chosen, rejected = split_transcripts(c, r)
        return PreferenceExample(prompt, chosen, rejected, margin, where)
    if fmt == "conversational":
        chosen_raw = fields.need(row, cols.chosen, where)
        rejected_raw = fields.need(row, cols.rejected, where)
        as_msgs = lambda v, k: ([{"role": "assistant", "content": fields.text(v, k, where, True)}]  # noqa: E731
                                if isinstance(v, str) else fields.messages(v, k, where))
        chosen, rejected = as_msgs(chosen_raw, cols.chosen), as_msgs(rejected_raw, cols.rejected)
        p = row.get(cols.prompt)
        if p is not None and not (isinstance(p, (str, list)) and not p):
            prompt = ([{"role": "user", "content": fields.text(p, cols.prompt, where, True)}] if isinstance(p, str)
                      else fields.messages(p, cols.prompt, where))
            # Some datasets (e.g. UltraFeedback-binarized) repeat the prompt turns at the start of the
            # responses: drop them so the prompt is not rendered twice.
            n = len(prompt)
            if n and chosen[:n] == prompt and rejected[:n] == prompt and len(chosen) > n and len(rejected) > n:
                chosen, rejected = chosen[n:], rejected[n:]
        else:  # whole conversations (no prompt, or an empty one): the shared leading messages are the prompt
            prompt, chosen, rejected = _split_messages(chosen, rejected)
        if not chosen or not rejected:
            raise DataError(where, cols.chosen if not chosen else cols.rejected, "no response message")
        return PreferenceExample(prompt, chosen, rejected, margin, where)
    if fmt == "sharegpt":
        kw = dict(role_key="from", content_key="value", roles=_SHAREGPT_ROLES)
        prompt = fields.messages(fields.need(row, cols.conversations, where), cols.conversations, where, **kw)

        def response(key: str) -> list[Message]:
            v = fields.need(row, key, where)
            if isinstance(v, str):  # a bare reply
                return [{"role": "assistant", "content": v}]
            msgs = fields.messages(v, key, where, **kw)
            if not msgs:
                raise DataError(where, key, "no response message")
            return msgs

        return PreferenceExample(prompt, response(cols.chosen), response(cols.rejected), margin, where)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


# Names datasets give a prompt column (Alpaca, UltraFeedback, SHP, math sets...).
PROMPT_NAMES = ("question", "instruction", "query", "input", "context", "history", "problem", "request",
                "prompt_text", "user_prompt")


def _refuse_unread_prompt(source: str, rows: list[dict[str, Any]], cols: Columns) -> None:
    """Rows read as whole transcripts (no prompt column) that carry a prompt under another name in most rows,
    text that their `chosen` does not contain: reading them as transcripts would silently drop it."""
    counts: dict[str, int] = {}
    for row in rows:
        chosen = row.get(cols.chosen)
        if chosen is None or cols.rejected not in row:  # not a pair at all: the missing field says more
            continue
        for k in PROMPT_NAMES:
            v = row.get(k)
            if isinstance(v, str) and v.strip() and not (isinstance(chosen, str) and v.strip() in chosen):
                counts[k] = counts.get(k, 0) + 1
    extra = sorted(k for k, n in counts.items() if 2 * n >= len(rows))
    if extra:
        raise DataError(str(source), cols.prompt,
                        f"missing, and the rows have text in `{'`, `'.join(extra)}`: set data.columns.prompt="
                        f"{extra[0]} if that is the prompt, or data.format=implicit if `{cols.chosen}` and "
                        f"`{cols.rejected}` are whole transcripts (the other columns are then ignored)")


def load_preferences(source: str, *, fmt: str = "auto", columns: Columns | None = None,
                     on_error: str = "raise", split: str = "train", max_samples: int | None = None,
                     margins: dict[str, float] | None = None) -> tuple[list[PreferenceExample], LoadReport]:
    """Read `source` and return its examples plus a report of skipped rows.

    With `on_error="raise"` the first malformed row raises `DataError`; with "skip" it is counted (rows
    that are not even valid JSON objects included). Unless `fmt` is given, the format is the one most of
    the first rows have, so a single malformed first row cannot change how every row is read.
    `margins` maps normalised ratings (`rating_key`) to margins, read from the `rating` column.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    cols = columns or Columns()

    def converter(f: str):
        return lambda row, where: to_example(row, f, cols, where, margins)

    def detect(rows: list[dict[str, Any]]):
        found = _detect_majority(rows, cols) if rows else "explicit"
        log.info("%s: detected format `%s`", source, found)
        if found == "implicit":
            _refuse_unread_prompt(source, rows, cols)
        return converter(found)

    return load_examples(source, None if fmt == "auto" else converter(fmt), on_error=on_error, split=split,
                         max_samples=max_samples, detect=detect if fmt == "auto" else None)
