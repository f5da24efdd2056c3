"""Reading raw rows: .jsonl (streamed), .json, .parquet, .csv, `datasets.save_to_disk` folders and hub ids.

Every row comes with where it is ("path:line N" or "path:row N", 1-based), so errors can name it.
`load_examples` is the one loader loop: rows -> typed examples with the `on_error` policy (raise, or skip
and count by reason), used by every row format (pairs, rankings, targets, benchmarks).

Bytes are decoded line by line (UTF-8; a leading BOM is dropped), so undecodable bytes are a row error naming
the line like any other, and skippable. Extra columns are ignored.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A malformed row: carries where it is and which field is wrong."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        at = f"{where}: field `{field}`" if field else where
        super().__init__(f"{at}: {problem}")

    @property
    def reason(self) -> str:
        """The kind of problem without the row's values, for counts: "`chosen`: expected a string"."""
        problem = re.split(r",| \(|: ", self.problem, maxsplit=1)[0]
        field = re.sub(r"\[\d+\]", "[*]", self.field) if self.field else None
        return f"`{field}`: {problem}" if field else problem


@dataclass
class LoadReport:
    """What loading did besides returning examples: counts that must never be silent."""

    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # first few skip reasons
    by_reason: dict[str, int] = field(default_factory=dict)  # skipped rows per `DataError.reason`
    counts: dict[str, int] = field(default_factory=dict)  # kept rows' notes, e.g. empty_responses
    first: dict[str, str] = field(default_factory=dict)  # where each note was first seen

    def skip(self, err: DataError, on_error: str) -> None:
        """Count a malformed row, or re-raise it when `on_error` is "raise"."""
        if on_error == "raise":
            raise err
        self.skipped += 1
        self.by_reason[err.reason] = self.by_reason.get(err.reason, 0) + 1
        if len(self.errors) < 5:
            self.errors.append(str(err))

    def note(self, key: str, where: str) -> None:
        """Count something about a kept row that must not be silent (an empty response, identical answers)."""
        self.counts[key] = self.counts.get(key, 0) + 1
        self.first.setdefault(key, where)

    @classmethod
    def combined(cls, reports: list[LoadReport]) -> LoadReport:
        """One report adding up several (the sources of a training mixture and its eval sets)."""
        out = cls()
        for r in reports:
            out.rows, out.skipped = out.rows + r.rows, out.skipped + r.skipped
            out.errors += r.errors[:max(0, 5 - len(out.errors))]
            for mine, theirs in ((out.by_reason, r.by_reason), (out.counts, r.counts)):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            out.first = {**r.first, **out.first}
        return out

    def summary(self) -> dict[str, Any]:
        """The counts for a command's summary: skipped rows (and why, when any) and every note (0 when none)."""
        out: dict[str, Any] = {"skipped_rows": self.skipped}
        if self.by_reason:
            out["skipped_by_reason"] = dict(sorted(self.by_reason.items(), key=lambda kv: -kv[1]))
        return {**out, **{k: self.counts.get(k, 0) for k in NOTES}, **self.counts}

    def finish(self, source: str, kept: int) -> None:
        """Log skipped rows by reason and the notes; a source with nothing usable is an error."""
        if self.skipped:
            reasons = "; ".join(f"{r}: {n}" for r, n in sorted(self.by_reason.items(), key=lambda kv: -kv[1]))
            log.warning("%s: skipped %d malformed row(s) of %d (by reason: %s); first: %s", source, self.skipped,
                        self.rows, reasons, self.errors[0])
        for key, n in self.counts.items():
            log.warning("%s: %d %s (%s; first: %s)", source, n, key.replace("_", " "), NOTES.get(key, "counted"),
                        self.first[key])
        if not kept:
            raise DataError(source, None, "no rows (the file is empty or blank)" if not self.rows else "no usable rows")


# What each note means, for the log line (README "Reliability": empty responses are scored, not refused).
NOTES = {"empty_responses": "scored as prompt + end-of-sequence, as a real (bad) answer",
         "identical_pairs": "chosen equals rejected: a tie, kept"}


ON_ERROR = ("raise", "skip")
DETECT_ROWS = 32  # rows a `detect` hook of `load_examples` sees


def load_examples(source: str, convert: Callable[[dict[str, Any], str], Any] | None = None, *,
                  on_error: str = "raise", split: str = "train", max_samples: int | None = None,
                  detect: Callable[[list[dict[str, Any]]], Callable[[dict[str, Any], str], Any]] | None = None,
                  ) -> tuple[list, LoadReport]:
    """Read `source` and convert each row with `convert(row, where)`.

    Malformed rows (unreadable JSON included) raise `DataError` (on_error="raise") or are skipped and counted
    by reason ("skip"). With `detect`, the converter is chosen from the first `DETECT_ROWS` readable rows
    together (e.g. the format most of them have), so one odd first row cannot decide how every row is read.
    An example may name counts it adds to the report in a `notes` attribute (e.g. "empty_responses").
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if (convert is None) == (detect is None):
        raise ValueError("give convert or detect")
    report, examples = LoadReport(), []
    rows = _iter_rows(source, split)
    if max_samples is not None:
        rows = itertools.islice(rows, max(0, max_samples))
    pending: list[tuple[str, dict[str, Any] | DataError]] = []
    if detect is not None:  # buffered: the first rows decide together
        pending = list(itertools.islice(rows, DETECT_ROWS))
        convert = detect([r for _, r in pending if not isinstance(r, DataError)])
    for where, row in itertools.chain(pending, rows):
        report.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            example = convert(row, where)
        except DataError as e:
            report.skip(e, on_error)
            continue
        examples.append(example)
        for key in getattr(example, "notes", ()):
            report.note(key, where)
    report.finish(source, len(examples))
    return examples, report


def read_rows(source: str, split: str = "train", empty_ok: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield `(where, row)` pairs; `where` is "path:line N" or "path:row N" (1-based).

    Raises `DataError` at the first unreadable row (invalid JSON, not an object), and at the end when the
    source held no rows at all (an empty or whitespace-only file) unless `empty_ok`.
    """
    n = 0
    for where, row in _iter_rows(source, split):
        if isinstance(row, DataError):
            raise row
        n += 1
        yield where, row
    if not n and not empty_ok:
        raise DataError(str(source), None, "no rows (the file is empty or blank)")


def _looks_like_path(source: str, suffix: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with a separator, a file suffix or a path start is a path.
    return (suffix in _SUFFIXES or source.startswith((".", "/", "~")) or source.count("/") > 1
            or "\\" in source)


_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _iter_rows(source: str, split: str) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    """Like `read_rows`, but a row that cannot be read is yielded as its `DataError` (so it can be skipped).

    Errors about the whole source (missing file, unsupported type, unparsable .json) are raised.
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _read_saved_dataset(path, source, split)
        return
    suffix = path.suffix.lower()
    if not path.exists():
        if _looks_like_path(source, suffix):
            raise DataError(source, None, "file not found")
        yield from _read_hub(source, split)
        return
    if suffix == ".jsonl":
        for i, line in _lines(path, source):
            where = f"{source}:line {i}"
            if isinstance(line, DataError):
                yield where, line
                continue
            if not line.strip():
                continue
            try:  # without the line ending, so a line cut short is reported at its end, not at column 1
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield where, DataError(where, None, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:  # e.g. [[[[...]]]] 200,000 deep: bad input like any other, skippable
                yield where, DataError(where, None, TOO_DEEP)
                continue
            yield where, _as_mapping(row, where)
    elif suffix == ".json":
        data = load_json(path, source)
        if isinstance(data, dict):  # {"data": [...]} wrappers (or any single list-valued key)
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if isinstance(data.get("data"), list):
                data = data["data"]
            elif len(lists) == 1 and len(data) == 1:
                data = data[lists[0]]
        if not isinstance(data, list):
            raise DataError(source, None, 'a .json file must hold a list of rows (or {"data": [...]})')
        for i, row in enumerate(data, 1):
            yield f"{source}:row {i}", _as_mapping(row, f"{source}:row {i}")
    elif suffix == ".csv":
        reader = csv.DictReader(_csv_lines(path, source))  # BOM dropped: Excel writes one
        reader.fieldnames  # reads the header, so line_num is where the first record starts
        start = reader.line_num + 1
        for row in reader:  # a record may span lines (quoted newlines): name the line it starts on
            yield f"{source}:line {start}", dict(row)
            start = reader.line_num + 1
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # ArrowInvalid and friends
            raise DataError(source, None, f"cannot read parquet: {e}") from None
        for i, row in enumerate(table.to_pylist(), 1):
            yield f"{source}:row {i}", row
    else:
        raise DataError(source, None, f"unsupported file type `{suffix}` (use .jsonl, .json, .parquet, "
                                      ".csv or a datasets folder)")


TOO_DEEP = "invalid JSON (nested too deeply)"


def load_json(path: Path, source: str) -> Any:
    """A whole .json file (UTF-8, a BOM allowed); unreadable bytes or JSON are a `DataError` naming the line."""
    raw = _open(path, source, lambda p: p.read_bytes())
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{source}:line {line}", None, _not_utf8(e, raw.rfind(b"\n", 0, e.start) + 1)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{source}:line {e.lineno}", None, f"invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(source, None, TOO_DEEP) from None


def _open(path: Path, source: str, read: Callable[[Path], Any]) -> Any:
    """`read(path)` with an unreadable file (permissions, a folder) as a `DataError` naming it."""
    try:
        return read(path)
    except OSError as e:
        raise DataError(source, None, f"cannot read the file: {e.strerror or e}") from None


def _not_utf8(e: UnicodeDecodeError, line_start: int = 0) -> str:
    byte = e.object[e.start:e.start + 1].hex()
    return f"not UTF-8 text (byte 0x{byte} at byte {e.start - line_start + 1} of the line); save the file as UTF-8"


def _lines(path: Path, source: str) -> Iterator[tuple[int, str | DataError]]:
    """(1-based line number, text) of a text file read as bytes, so one undecodable line is that line's
    error (the rest of the file still reads); a UTF-8 BOM at the start is dropped. Memory: one line."""
    fh = _open(path, source, lambda p: p.open("rb"))
    with fh:
        for i, raw in enumerate(fh, 1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield i, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, DataError(f"{source}:line {i}", None, _not_utf8(e))


def _csv_lines(path: Path, source: str) -> Iterator[str]:
    # A CSV record cannot be skipped alone once its bytes are bad (quoting may span lines): stop there.
    for _, line in _lines(path, source):
        if isinstance(line, DataError):
            raise line
        yield line


def _as_mapping(row: Any, where: str) -> dict[str, Any] | DataError:
    if not isinstance(row, dict):
        return DataError(where, None, f"expected a JSON object, got {type(row).__name__}")
    return row


def _read_saved_dataset(path: Path, source: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(source, None, f"a folder must be a `datasets.save_to_disk` dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(source, None, f"no split `{split}` (has: {', '.join(ds)})")
        ds = ds[split]
        source = f"{source}[{split}]"
    for i, row in enumerate(ds, 1):
        yield f"{source}:row {i}", row


def _read_hub(name: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub raises many types; the user needs the name and the reason
        raise DataError(name, None, f"not a local file and not loadable as a hub dataset: {e}") from e
    for i, row in enumerate(ds, 1):
        yield f"{name}[{split}]:row {i}", row
