"""Reward-model applications on row files: scoring, Best-of-N ranking, filtering, DPO pair building.

Every command streams: rows are read lazily (`read_rows`), scored `chunk_rows` rows at a time through the
scorer (length-sorted batches; `score` takes SCORE_CHUNK_ROWS at a time), and written one line at a time to a
temp file that replaces the output at the end, so files larger than memory work and a crash never leaves half
an output. Before the model scores anything, a first pass parses every row (a few seconds per 100k rows): a bad
row anywhere stops the command at once, not after the work on the rows before it, and the row count gives the
progress bar (shown on a terminal) its total.

Row shapes (column names from `config.Columns`, the one column map of every command):
  list rows:       {"prompt": P, "responses": [R1, ..., RN], ...}   (rank, make-pairs, filter)
  pointwise rows:  {"prompt": P, "response": R, ...}                (score, filter)
  chat rows:       {"messages": [..., last message = response]}    (score)
P and R are strings or chat messages. Without a scorer, scores are read from the rows
(`scores` for list rows, `score` for pointwise rows), e.g. the output of `rank`.

The scorer is a `scoring.Judge`: pointwise kinds give rewards and say which responses they truncated
(`score_details`; the summary's `truncated`); kinds that only compare give rank and make-pairs their `rank_many`
rank scores, and filter and score, which need a score per response, refuse them with `NoScores`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardkit.config import Columns
from rewardkit.data import DataError, fields, read_rows
from rewardkit.io import atomic_write, json_line

STRATEGIES = ("max_min", "max_random", "all")
SCORE_CHUNK_ROWS = 4096  # `score`: rows per sorted scoring pass (bounds memory; long enough to sort by length)


@dataclass
class AppReport:
    """Counts for the command's one-line JSON summary."""

    rows_in: int = 0
    rows_out: int = 0
    responses: int = 0
    empty_responses: int = 0  # scored as prompt + end-of-sequence, as a real (bad) answer (as train/eval count them)
    # responses cut to the model's max_length (the model saw their end; as train/eval log it); None where the
    # scores were read from the rows or the kind only compares (no per-response pass to ask)
    truncated: int | None = None
    kept: int | None = None  # filter: responses kept
    dropped_ties: int | None = None  # make-pairs: candidate pairs dropped as ties or below min_margin

    def to_dict(self) -> dict[str, int]:
        """The counts that apply to the command (a count a command does not keep is left out, not 0)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def count(self, r: ScoredRow) -> None:
        """One input row's counts (written rows are counted by the command)."""
        self.rows_in += 1
        self.responses += len(r.responses)
        self.empty_responses += sum(fields.is_empty(x) for x in r.responses)
        if r.truncated is not None:
            self.truncated = (self.truncated or 0) + r.truncated


@dataclass
class ScoredRow:
    """One input row with its responses and their scores (`raw` too when normalised)."""

    where: str
    row: dict[str, Any]
    prompt: Any
    responses: list[Any]
    scores: list[float]
    pointwise: bool
    raw: list[float] | None = None
    truncated: int | None = None  # how many of its responses the scorer cut (None: not scored here)


def _check_text(value: Any, where: str, key: str, response: bool = False) -> Any:
    if isinstance(value, list):  # chat messages: known roles, string contents; a response needs one (data.fields)
        return (fields.response if response else fields.messages)(value, key, where)
    if not isinstance(value, str):
        raise DataError(where, key, f"expected a string or chat messages, got {type(value).__name__}")
    return value


def _prompt(row: dict[str, Any], where: str, cols: Columns) -> Any:
    # A missing or misspelt prompt column is an error (as in train), never an empty prompt; "" stays allowed.
    return _check_text(fields.need(row, cols.prompt, where), where, cols.prompt)


def _scores(row: dict[str, Any], where: str, key: str, n: int, pointwise: bool) -> list[float]:
    """The row's own scores (no model given): `n` finite numbers; numeric strings count (CSV cells are text)."""
    value = row.get(key)
    value = [value] if pointwise else value
    if not isinstance(value, list) or len(value) != n or any(v is None or v == "" for v in value):
        raise DataError(where, key, f"no model given, so each row needs {n} finite score(s) here "
                                    "(e.g. from `rewardkit rank`)")
    return [fields.number(v, key if pointwise else f"{key}[{i}]", where) for i, v in enumerate(value)]


def _parse(where: str, row: dict[str, Any], cols: Columns, lists_only: bool, need_scores: bool) -> ScoredRow:
    prompt = _prompt(row, where, cols)
    if cols.responses in row:
        responses = row[cols.responses]
        if not isinstance(responses, list) or not responses:
            raise DataError(where, cols.responses, "expected a non-empty list of responses")
        responses = [_check_text(r, where, f"{cols.responses}[{i}]", response=True) for i, r in enumerate(responses)]
        pointwise, score_key = False, cols.scores
    elif cols.response in row and not lists_only:
        responses = [_check_text(row[cols.response], where, cols.response, response=True)]
        pointwise, score_key = True, cols.score
    else:
        want = f"`{cols.responses}` (a list)" + ("" if lists_only else f" or `{cols.response}`")
        raise DataError(where, cols.responses, f"missing: need {want}")
    scores = _scores(row, where, score_key, len(responses), pointwise) if need_scores else []
    return ScoredRow(where, row, prompt, responses, scores, pointwise)


def checked_rows(source: str, check) -> int:
    """Rows of `source`, each passed through `check(where, row)` (raising DataError on the first bad one)."""
    n = 0
    for where, row in read_rows(source):
        check(where, row)
        n += 1
    return n


def progress(total: int, desc: str):
    """A rows-done bar on stderr when it is a terminal (tqdm's auto-disable elsewhere: logs stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rows", disable=None, dynamic_ncols=True, leave=False)


def iter_scored(source: str, scorer=None, *, columns: Columns | None = None, normalize: bool = False,
                chunk_rows: int = 64, lists_only: bool = False, desc: str = "score") -> Iterator[ScoredRow]:
    """Rows of `source` with scores: from `scorer` (a RewardScorer) when given, every row checked first (module
    doc), else from the rows."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    cols = columns or Columns()
    parse = lambda where, row: _parse(where, row, cols, lists_only, need_scores=scorer is None)  # noqa: E731
    total = checked_rows(source, parse) if scorer is not None else None
    chunk: list[ScoredRow] = []
    with progress(total, desc) if total else contextlib.nullcontext() as bar:
        for where, row in read_rows(source):
            chunk.append(parse(where, row))
            if len(chunk) >= chunk_rows:
                yield from _score_chunk(chunk, scorer, normalize, bar)
                chunk = []
        yield from _score_chunk(chunk, scorer, normalize, bar)


def _score_chunk(chunk: list[ScoredRow], scorer, normalize: bool, bar=None) -> list[ScoredRow]:
    """Scores of each row's responses, in one pass over the chunk: pointwise kinds' raw rewards with what was
    truncated (`score_details`), kinds that only compare their `rank_many` rank scores."""
    if scorer is None or not chunk:
        return chunk
    if scorer.pointwise:
        details = scorer.score_details([r.prompt for r in chunk for _ in r.responses],
                                       [x for r in chunk for x in r.responses])
        rewards, cut, start = details.rewards.tolist(), details.truncated.tolist(), 0
        for r in chunk:
            end = start + len(r.responses)
            r.scores, r.truncated, start = rewards[start:end], sum(cut[start:end]), end
    else:
        for r, ranking in zip(chunk, scorer.rank_many([r.prompt for r in chunk], [r.responses for r in chunk])):
            r.scores = list(ranking.scores)
    if bar is not None:
        bar.update(len(chunk))
    for r in chunk:
        if normalize:  # kinds without per-response scores refuse here (NoScores)
            r.raw, r.scores = r.scores, scorer.normalize(torch.tensor(r.scores, dtype=torch.float64)).tolist()
    return chunk


def _write_line(fh, row: dict[str, Any]) -> None:
    fh.write(json_line(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- score

def _score_input(where: str, row: dict[str, Any], cols: Columns) -> tuple[Any, Any]:
    """(prompt, response) of a score row: the `messages` chat (last message = response) or prompt+response."""
    msgs = row.get(cols.messages)
    if (cols.messages in row and cols.response not in row) or (isinstance(msgs, list) and msgs):
        msgs = fields.messages(fields.need(row, cols.messages, where), cols.messages, where)
        if not msgs:
            raise DataError(where, cols.messages, "empty list (need at least the response message)")
        return msgs[:-1], msgs[-1:]
    if cols.response not in row:
        raise DataError(where, cols.response,
                        f"missing (need `{cols.prompt}`+`{cols.response}` or `{cols.messages}`)")
    response = _check_text(row[cols.response], where, cols.response, response=True)
    return _prompt(row, where, cols), response


def score_file(source: str, output: str | Path, scorer, *, columns: Columns | None = None,
               normalize: bool = False, chunk_rows: int = SCORE_CHUNK_ROWS) -> AppReport:
    """Every row of `source` back, in order, with `score` (the `columns.score` column) and the model's
    extras (e.g. a multi-objective model's attributes and gate weights). With `normalize`, `score` is
    (raw - mean) / std from the model's config and the raw value goes to `raw_score`. Every row is checked
    first, then scored `chunk_rows` at a time (one sorted pass each); the output is written atomically."""
    cols = columns or Columns()
    total = checked_rows(source, lambda where, row: _score_input(where, row, cols))
    report = AppReport(truncated=0)
    chunk: list[tuple[dict[str, Any], Any, Any]] = []

    def flush(fh, bar) -> None:
        if not chunk:
            return
        details = scorer.score_details([p for _, p, _ in chunk], [r for _, _, r in chunk])
        final = scorer.normalize(details.rewards).tolist() if normalize else None
        for i, ((row, _, response), extra) in enumerate(zip(chunk, details.rows())):
            raw = extra.pop("score")
            row[cols.score] = final[i] if final is not None else raw
            if final is not None:
                row["raw_score"] = raw
            row.update(extra)
            _write_line(fh, row)
            report.empty_responses += fields.is_empty(response)
        report.rows_in += len(chunk)
        report.truncated += int(details.truncated.sum())
        bar.update(len(chunk))
        chunk.clear()

    with atomic_write(output) as fh, progress(total, "score") as bar:
        for where, row in read_rows(source):
            chunk.append((row, *_score_input(where, row, cols)))
            if len(chunk) >= chunk_rows:
                flush(fh, bar)
        flush(fh, bar)
    report.rows_out = report.responses = report.rows_in
    return report


# --------------------------------------------------------------------------- rank (Best-of-N)

def rank_file(source: str, output: str | Path, scorer=None, *, columns: Columns | None = None, normalize: bool = False,
              chunk_rows: int = 64) -> AppReport:
    """Each list row gets `scores`, `best_index` and `best_response` (first of equal bests)."""
    report, cols = AppReport(), columns or Columns()
    with atomic_write(output) as fh:
        for r in iter_scored(source, scorer, columns=cols, normalize=normalize, chunk_rows=chunk_rows, lists_only=True,
                             desc="rank"):
            report.count(r)
            best = max(range(len(r.scores)), key=lambda i: (r.scores[i], -i))
            out = {**r.row, cols.scores: r.scores, "best_index": best, "best_response": r.responses[best]}
            if r.raw is not None:
                out["raw_scores"] = r.raw
            _write_line(fh, out)
            report.rows_out += 1
    return report


# --------------------------------------------------------------------------- filter

@dataclass
class _TopK:
    """Per-prompt cutoffs for "top k%": keep scores above `cutoff`, and the first `ties` equal to it."""

    scores: dict[bytes, array] = field(default_factory=dict)
    cutoff: dict[bytes, tuple[float, int]] = field(default_factory=dict)

    def add(self, key: bytes, scores: list[float]) -> None:
        self.scores.setdefault(key, array("d")).extend(scores)

    def finish(self, percent: float) -> None:
        for key, arr in self.scores.items():
            ranked = sorted(arr, reverse=True)
            keep = max(1, math.ceil(len(ranked) * percent / 100))
            cut = ranked[keep - 1]
            self.cutoff[key] = (cut, keep - sum(1 for s in ranked if s > cut))
        self.scores.clear()

    def keeps(self, key: bytes, score: float) -> bool:
        cut, ties = self.cutoff[key]
        if score > cut:
            return True
        if score == cut and ties > 0:
            self.cutoff[key] = (cut, ties - 1)
            return True
        return False


def _prompt_key(prompt: Any) -> bytes:
    return hashlib.sha1(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).digest()


def filter_file(source: str, output: str | Path, scorer=None, *, threshold: float | None = None,
                top_percent: float | None = None, columns: Columns | None = None, normalize: bool = False,
                chunk_rows: int = 64) -> AppReport:
    """Keep responses with score >= `threshold` and/or among the top `top_percent`% of their prompt.

    A prompt's responses may be spread over many rows: with `top_percent` the file is read twice (scored
    rows go to a temp file first; only the scores, 8 bytes each, stay in memory). Pointwise rows are kept
    or dropped and get `score`; list rows keep their passing responses (and `scores`), or are dropped.
    """
    if threshold is None and top_percent is None:
        raise ValueError("give a threshold, a top_percent, or both")
    if top_percent is not None and not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    if scorer is not None and not scorer.pointwise:  # a rank score only orders one row's responses
        from rewardkit.scoring import NoScores

        raise NoScores(scorer.kind, "filter's score per response")
    report, cols = AppReport(kept=0), columns or Columns()
    rows = iter_scored(source, scorer, columns=cols, normalize=normalize, chunk_rows=chunk_rows, desc="filter")
    topk = _TopK() if top_percent is not None else None
    tmp = None
    try:
        if topk is not None:
            out_dir = Path(output).parent
            out_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".filter-pass1.", suffix=".jsonl", dir=out_dir)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for r in rows:
                    topk.add(_prompt_key(r.prompt), r.scores)
                    _write_line(fh, {"row": r.row, "scores": r.scores, "truncated": r.truncated})
            topk.finish(top_percent)
            rows = _reread(tmp, cols)
        with atomic_write(output) as fh:
            for r in rows:
                report.count(r)
                key = _prompt_key(r.prompt) if topk is not None else b""
                kept = [i for i, s in enumerate(r.scores)
                        if (topk is None or topk.keeps(key, s)) and (threshold is None or s >= threshold)]
                report.kept += len(kept)
                if not kept:
                    continue
                if r.pointwise:
                    out = {**r.row, cols.score: r.scores[0]}
                else:
                    out = {**r.row, cols.responses: [r.responses[i] for i in kept],
                           cols.scores: [r.scores[i] for i in kept]}
                _write_line(fh, out)
                report.rows_out += 1
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return report


def _reread(path: str, cols: Columns) -> Iterator[ScoredRow]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            r = _parse("", item["row"], cols, lists_only=False, need_scores=False)
            r.scores, r.truncated = item["scores"], item["truncated"]
            yield r


# --------------------------------------------------------------------------- DPO pairs

def pick_pairs(scores: list[float], strategy: str, *, min_margin: float = 0.0,
               rng: random.Random | None = None) -> tuple[list[tuple[int, int]], int]:
    """(chosen, rejected) index pairs from N scores, and how many candidates were dropped as ties.

    max_min: best vs worst; max_random: best vs a random response at least `min_margin` below it; all: every
    pair with |difference| >= min_margin. Equal scores are never a pair; ties go to the earlier response.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    n = len(scores)
    ok = lambda c, r: scores[c] - scores[r] > 0 and scores[c] - scores[r] >= min_margin  # noqa: E731
    if n < 2:
        return [], 0
    best = max(range(n), key=lambda i: (scores[i], -i))
    if strategy == "max_min":
        worst = min(range(n), key=lambda i: (scores[i], -i))
        return ([(best, worst)], 0) if ok(best, worst) else ([], 1)
    if strategy == "max_random":
        eligible = [i for i in range(n) if i != best and ok(best, i)]
        if not eligible:
            return [], 1
        return [(best, (rng or random.Random(0)).choice(eligible))], 0
    pairs, dropped = [], 0
    for i in range(n):
        for j in range(i + 1, n):
            c, r = (i, j) if scores[i] >= scores[j] else (j, i)
            if ok(c, r):
                pairs.append((c, r))
            else:
                dropped += 1
    return pairs, dropped


def make_pairs_file(source: str, output: str | Path, scorer=None, *, strategy: str = "max_min",
                    min_margin: float = 0.0, seed: int = 0, columns: Columns | None = None, normalize: bool = False,
                    chunk_rows: int = 64) -> AppReport:
    """N scored responses per prompt -> preference rows {prompt, chosen, rejected, chosen_reward,
    rejected_reward, margin} plus the row's other fields. Note: `rewardkit train` reads a `margin` column as
    a loss margin; rename or drop it if that is not wanted."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    rng, report, cols = random.Random(seed), AppReport(dropped_ties=0), columns or Columns()
    drop = {cols.responses, cols.scores, "best_index", "best_response", "raw_scores"}
    with atomic_write(output) as fh:
        for r in iter_scored(source, scorer, columns=cols, normalize=normalize, chunk_rows=chunk_rows, lists_only=True,
                             desc="make-pairs"):
            report.count(r)
            pairs, dropped = pick_pairs(r.scores, strategy, min_margin=min_margin, rng=rng)
            report.dropped_ties += dropped
            rest = {k: v for k, v in r.row.items() if k not in drop}
            for c, j in pairs:
                _write_line(fh, {**rest, cols.prompt: r.prompt, "chosen": r.responses[c], "rejected": r.responses[j],
                                 "chosen_reward": r.scores[c], "rejected_reward": r.scores[j],
                                 "margin": r.scores[c] - r.scores[j]})
                report.rows_out += 1
    return report
