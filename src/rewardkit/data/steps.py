"""Stepwise rows for process reward models (TRL's stepwise-supervision format) and their token layout.

Row: {"prompt", "completions": [step, ...], "labels": [bool, ...]}, one label per step (true = the step is
correct); the prompt is a string or chat messages, column names come from `data.columns` (`steps`,
`step_labels`). Labels read like `loss=binary` labels (true/false, 1/0, "yes"/"no").

Layout (decoders):  [BOS?] prompt SEP step_1 SEP step_2 SEP ... step_K SEP
        (encoders): [CLS] prompt [SEP] step_1 SEP ... step_K SEP [SEP]
SEP is the step separator string (default "\\n", TRL's `step_separator`), tokenised on its own and appended
to every step (each step is tokenised apart, so a step never merges with its separator or its neighbour);
a decoder's prompt is followed by it too unless its text already ends with it (a chat template's
generation prompt ending in "\n"). The value
of step k is read at the LAST token of "step_k SEP" (the separator's last token; the step's own last token
where the separator tokenises to nothing, e.g. "\\n" for WordPiece).

Truncation to max_length: the prompt loses tokens from the left first; if the steps alone still do not fit,
whole steps are dropped from the END (their labels with them; the first step always stays, keeping its end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rewardkit.config import Columns
from rewardkit.data import fields
from rewardkit.data.fields import Text
from rewardkit.data.readers import DataError
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence, render

DEFAULT_SEPARATOR = "\n"


@dataclass(frozen=True)
class StepExample:
    """A prompt and K >= 1 reasoning steps with one label each (1.0 = correct, 0.0 = wrong)."""

    prompt: Text
    steps: tuple[str, ...]
    labels: tuple[float, ...]
    source: str = ""


def step_example(row: dict[str, Any], cols: Columns, where: str) -> StepExample:
    """Parse one stepwise row; errors name the row and the field (e.g. `labels`: 3 labels for 2 steps)."""
    raw = fields.need(row, cols.steps, where)
    if not isinstance(raw, list) or not raw:
        raise DataError(where, cols.steps, f"expected a non-empty list of step strings, got {type(raw).__name__}")
    steps = tuple(fields.text(s, f"{cols.steps}[{i}]", where) for i, s in enumerate(raw))
    labels = fields.need(row, cols.step_labels, where)
    if not isinstance(labels, list):
        raise DataError(where, cols.step_labels, f"expected a list of booleans, got {type(labels).__name__}")
    if len(labels) != len(steps):
        raise DataError(where, cols.step_labels, f"{len(labels)} labels for {len(steps)} steps in "
                                                 f"`{cols.steps}` (one label per step)")
    ys = tuple(fields.label(y, f"{cols.step_labels}[{i}]", where) for i, y in enumerate(labels))
    return StepExample(fields.prompt(row, cols.prompt, where), steps, ys, where)


def is_stepwise(row: dict[str, Any], cols: Columns | None = None) -> bool:
    """True when a row has the stepwise columns (a list of steps and a list of labels)."""
    cols = cols or Columns()
    return isinstance(row.get(cols.steps), list) and isinstance(row.get(cols.step_labels), list)


def split_steps(response: Any, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """A response as steps: a list of strings is taken as they are; a string (or chat messages: their
    contents joined) is split on `separator`; pieces are stripped of surrounding whitespace and blank ones
    dropped (so "a\\n\\n b\\n" -> ["a", "b"]): steps as TRL's stepwise rows hold them."""
    if isinstance(response, (list, tuple)) and all(isinstance(s, str) for s in response):
        return list(response)
    if isinstance(response, (list, tuple)):  # chat messages: the response is their text
        response = "".join(str(m.get("content", "")) for m in response if isinstance(m, dict))
    if not isinstance(response, str):
        raise ValueError(f"a response must be a string, a list of step strings or messages, got "
                         f"{type(response).__name__}")
    if not separator:
        return [response] if response.strip() else []
    return [s.strip() for s in response.split(separator) if s.strip()]


@dataclass(frozen=True)
class TokenizedSteps:
    """One tokenised stepwise sequence. positions: index of each KEPT step's readout token (ascending);
    labels: their labels (empty when unlabelled, i.e. for scoring); steps: how many steps were given
    (steps - len(positions) were cut by max_length)."""

    sequence: TokenizedSequence
    positions: tuple[int, ...]
    labels: tuple[float, ...] = ()
    steps: int = 0
    wrong_cut: bool = False  # labelled, and its first wrong step was cut by max_length (`metrics.step_stats`)

    @property
    def truncated(self) -> bool:
        return self.sequence.truncated


class StepEncoder:
    """Encodes (prompt, steps) for one tokenizer, layout and separator (see the module docstring)."""

    def __init__(self, encoder: SequenceEncoder, separator: str = DEFAULT_SEPARATOR):
        self.enc = encoder
        self.tok = encoder.tok
        self.max_length = encoder.max_length
        self.separator = separator
        self.sep_ids = encoder._ids(separator)

    def encode(self, prompt: Text, steps: list[str] | tuple[str, ...],
               labels: tuple[float, ...] = ()) -> TokenizedSteps:
        if not steps:
            raise ValueError("a stepwise sequence needs at least one step")
        enc = self.enc
        p_text = render(self.tok, prompt, "")[0] if not isinstance(prompt, str) else prompt
        prompt_ids = enc._ids(p_text)
        prefix = enc.prefix
        bos_id = getattr(self.tok, "bos_token_id", None)
        if bos_id is not None and prompt_ids[:1] == [bos_id] and prefix in ([], [bos_id]):
            prompt_ids, prefix = prompt_ids[1:], [bos_id]  # a template's own BOS, kept once (and never cut)
        if enc.is_encoder:
            mid, end = (enc.suffix if prompt_ids else []), enc.suffix
        else:  # the separator closes the prompt unless it already ends with it (a generation prompt's "\n")
            mid = self.sep_ids if prompt_ids and not p_text.endswith(self.separator) else []
            end = []
        segs = []
        for i, s in enumerate(steps):
            ids = enc._ids(s) + self.sep_ids
            if not ids:
                raise EmptyStep(f"step {i + 1} ({s!r}) has no tokens (nothing the tokenizer keeps, e.g. only "
                                "zero-width characters)")
            segs.append(ids)
        budget = self.max_length - len(prefix) - len(end)
        total = sum(map(len, segs))
        truncated = len(prompt_ids) + len(mid) + total > budget
        if truncated:
            room = budget - total - len(mid)
            prompt_ids = prompt_ids[len(prompt_ids) - room:] if room > 0 else []
            if not prompt_ids:
                mid = []
            kept, used = [], 0
            for ids in segs:  # whole steps from the start while they fit
                if used + len(ids) > budget - len(prompt_ids) - len(mid):
                    break
                kept.append(ids)
                used += len(ids)
            segs = kept or [segs[0][len(segs[0]) - budget:]]  # the first step alone, keeping its end
        head = prefix + prompt_ids + mid
        ids, positions = list(head), []
        for s in segs:
            ids += s
            positions.append(len(ids) - 1)
        ids += end
        types = None
        if enc.use_token_types:
            types = [0] * len(head) + [1 if prompt_ids else 0] * (len(ids) - len(head))
        seq = TokenizedSequence(ids, len(head), types, truncated)
        kept = len(positions)
        wrong_cut = all(labels[:kept]) and not all(labels[kept:])  # the first wrong step is not scored
        return TokenizedSteps(seq, tuple(positions), tuple(labels[:kept]), len(steps), wrong_cut)


class EmptyStep(ValueError):
    """A step with no token to read its score from."""


def tokenize_steps(encoder: StepEncoder, examples: list[StepExample]) -> list[TokenizedSteps]:
    """Each example's steps, tokenised; a step that tokenises to nothing names its row."""
    out = []
    for ex in examples:
        try:
            out.append(encoder.encode(ex.prompt, ex.steps, ex.labels))
        except EmptyStep as e:
            raise DataError(ex.source or "a stepwise row", None, str(e)) from None
    return out
