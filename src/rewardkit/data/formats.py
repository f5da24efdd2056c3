"""Raw rows -> `PreferenceExample`.

Rows come from `readers` (files, `datasets.save_to_disk` folders, hub ids); this module detects the row
format and turns each row into one typed example. Every error names the file, the line/row and the field.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Union

from rewardkit.data.readers import DataError, _iter_rows, read_rows  # noqa: F401  (read_rows: re-exported)

log = logging.getLogger(__name__)

Message = dict[str, str]
Text = Union[str, list[Message]]  # a plain string or chat messages
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


@dataclass(frozen=True)
class Columns:
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str = "margin"
    conversations: str = "conversations"
    rating: str = "rating"  # read only when a rating -> margin mapping is given


@dataclass
class LoadReport:
    """What loading did besides returning examples: counts that must never be silent."""

    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # first few skip reasons

    def skip(self, err: DataError, on_error: str) -> None:
        """Count a malformed row, or re-raise it when `on_error` is "raise"."""
        if on_error == "raise":
            raise err
        self.skipped += 1
        if len(self.errors) < 5:
            self.errors.append(str(err))

    def finish(self, source: str, kept: int) -> None:
        """Warn about skipped rows; a source with nothing usable is an error."""
        if self.skipped:
            log.warning("%s: skipped %d malformed row(s) of %d; first: %s", source, self.skipped, self.rows,
                        self.errors[0])
        if not kept:
            raise DataError(source, None, "no usable rows")


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


_DETECT_ROWS = 32  # rows looked at by auto-detection


def _detect_majority(rows: list[dict[str, Any]], cols: Columns) -> str:
    """The format most of the first rows have, so that one malformed first row cannot decide it."""
    votes: dict[str, int] = {}
    for row in rows:
        f = detect_format(row, cols)
        votes[f] = votes.get(f, 0) + 1
    return max(votes, key=lambda f: (votes[f], -FORMATS.index(f)))


def _need(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(where, key, f"missing (row has: {', '.join(map(str, row)) or 'nothing'})")
    return row[key]


def _text(value: Any, key: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(where, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(where, key, "empty text")
    return value


def _messages(value: Any, key: str, where: str, role_key: str = "role", content_key: str = "content",
              roles: dict[str, str] | None = None) -> list[Message]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(where, key, f"expected a list of messages, got {type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or role_key not in m or content_key not in m:
            raise DataError(where, f"{key}[{j}]", f"expected an object with `{role_key}` and `{content_key}`")
        role = m[role_key]
        if roles is not None:
            if str(role).lower() not in roles:
                raise DataError(where, f"{key}[{j}].{role_key}", f"unknown role {role!r}")
            role = roles[str(role).lower()]
        if not isinstance(m[content_key], str):
            raise DataError(where, f"{key}[{j}].{content_key}", "expected a string")
        out.append({"role": str(role), "content": m[content_key]})
    return out


def _margin(row: dict[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise DataError(where, key, f"expected a number, got {value!r}") from None
    if not math.isfinite(m):
        raise DataError(where, key, f"expected a finite number, got {value!r}")
    return m


def rating_key(value: Any) -> str:
    """Normalised rating label: lower case, `_`/`-` as spaces, whole numbers without `.0`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).lower().replace("_", " ").replace("-", " ").split())


def _rated_margin(row: dict[str, Any], key: str, where: str, margins: dict[str, float]) -> float:
    value = _need(row, key, where)
    try:
        return margins[rating_key(value)]
    except KeyError:
        raise DataError(where, key, f"rating {value!r} is not in the margin table "
                                    f"({', '.join(map(repr, margins))})") from None


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two transcripts sharing a history into (prompt, chosen response, rejected response).

    The cut is the end of the last assistant marker inside the common prefix, so the prompt ends with
    "\\n\\nAssistant:" and each response is that turn's text. Without markers, the cut falls at the
    last whitespace of the common prefix.
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
        cut = max(common.rfind(" "), common.rfind("\n")) + 1 if n < limit or n == 0 else 0
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
    margin = _margin(row, cols.margin, where) if margins is None else _rated_margin(row, cols.rating, where, margins)
    if fmt == "explicit":
        prompt = _text(_need(row, cols.prompt, where), cols.prompt, where, allow_empty=True)
        chosen = _text(_need(row, cols.chosen, where), cols.chosen, where)
        rejected = _text(_need(row, cols.rejected, where), cols.rejected, where)
        return PreferenceExample(prompt, chosen, rejected, margin, where)
    if fmt == "implicit":
        c = _text(_need(row, cols.chosen, where), cols.chosen, where)
        r = _text(_need(row, cols.rejected, where), cols.rejected, where)
        prompt, chosen, rejected = split_transcripts(c, r)
        if not chosen.strip() and not rejected.strip():
            raise DataError(where, cols.chosen, "chosen and rejected are identical")
        return PreferenceExample(prompt, chosen, rejected, margin, where)
    if fmt == "conversational":
        chosen_raw = _need(row, cols.chosen, where)
        rejected_raw = _need(row, cols.rejected, where)
        as_msgs = lambda v, k: ([{"role": "assistant", "content": _text(v, k, where)}]  # noqa: E731
                                if isinstance(v, str) else _messages(v, k, where))
        chosen, rejected = as_msgs(chosen_raw, cols.chosen), as_msgs(rejected_raw, cols.rejected)
        p = row.get(cols.prompt)
        if p is not None and not (isinstance(p, (str, list)) and not p):
            prompt = ([{"role": "user", "content": _text(p, cols.prompt, where)}] if isinstance(p, str)
                      else _messages(p, cols.prompt, where))
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
        prompt = _messages(_need(row, cols.conversations, where), cols.conversations, where, **kw)

        def response(key: str) -> list[Message]:
            v = _need(row, key, where)
            if isinstance(v, str):  # a bare reply
                return [{"role": "assistant", "content": _text(v, key, where)}]
            msgs = _messages(v, key, where, **kw)
            if not msgs:
                raise DataError(where, key, "no response message")
            return msgs

        return PreferenceExample(prompt, response(cols.chosen), response(cols.rejected), margin, where)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def load_preferences(source: str, *, fmt: str = "auto", columns: Columns | None = None,
                     on_error: str = "raise", split: str = "train", max_samples: int | None = None,
                     margins: dict[str, float] | None = None) -> tuple[list[PreferenceExample], LoadReport]:
    """Read `source` and return its examples plus a report of skipped rows.

    With `on_error="raise"` the first malformed row raises `DataError`; with "skip" it is counted (rows
    that are not even valid JSON objects included). Unless `fmt` is given, the format is the one most of
    the first 32 rows have, so a single malformed first row cannot change how every row is read.
    `margins` maps normalised ratings (`rating_key`) to margins, read from the `rating` column.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    cols = columns or Columns()
    report = LoadReport()
    examples: list[PreferenceExample] = []
    rows = _iter_rows(source, split)
    if max_samples is not None:
        rows = itertools.islice(rows, max(0, max_samples))
    pending: list[tuple[str, dict[str, Any] | DataError]] = []
    if fmt == "auto":  # decide on the first rows together (buffered), not on the first row alone
        pending = list(itertools.islice(rows, _DETECT_ROWS))
        readable = [r for _, r in pending if not isinstance(r, DataError)]
        fmt = _detect_majority(readable, cols) if readable else "explicit"
        log.info("%s: detected format `%s`", source, fmt)
    for where, row in itertools.chain(pending, rows):
        report.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            examples.append(to_example(row, fmt, cols, where, margins))
        except DataError as e:
            report.skip(e, on_error)
    report.finish(source, len(examples))
    return examples, report
