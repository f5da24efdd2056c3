"""Reading raw rows: .jsonl (streamed), .json, .parquet, .csv, `datasets.save_to_disk` folders and hub ids.

Every row comes with where it is ("path:line N" or "path:row N", 1-based), so errors can name it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A malformed row: carries where it is and which field is wrong."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        at = f"{where}: field `{field}`" if field else where
        super().__init__(f"{at}: {problem}")


def read_rows(source: str, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield `(where, row)` pairs; `where` is "path:line N" or "path:row N" (1-based).

    Raises `DataError` at the first unreadable row (invalid JSON, not an object).
    """
    for where, row in _iter_rows(source, split):
        if isinstance(row, DataError):
            raise row
        yield where, row


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
        with path.open(encoding="utf-8-sig") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{source}:line {i}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, DataError(where, None, f"invalid JSON ({e.msg} at column {e.colno})")
                    continue
                yield where, _as_mapping(row, where)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise DataError(f"{source}:line {e.lineno}", None, f"invalid JSON ({e.msg})") from None
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
        with path.open(encoding="utf-8-sig", newline="") as fh:  # -sig: Excel writes a BOM
            reader = csv.DictReader(fh)
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
