"""Atomic output: write beside the target, then rename, so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def strict(v: Any) -> Any:
    """`v` with every NaN and infinity (in nested dicts and lists too) as None: Python's json writes `NaN`,
    which is not JSON, and a reader in another language refuses the line."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict(x) for x in v]
    return v


def json_line(obj: Any, **kw: Any) -> str:
    """One line of strict JSON (no newline): non-finite numbers as null."""
    return json.dumps(strict(obj), allow_nan=False, **kw)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file in the target's folder; on success it replaces `path`, on error it vanishes. A write
    error that names no file (ENOSPC from write() or close()) is raised again naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        _raise_named(e, path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; outputs should look like any other file
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        _raise_named(e, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _raise_named(e: OSError, path: Path) -> None:
    """Raise `e`, naming the output `path` where it names no file (or only our temp file): `[Errno 28] No space
    left on device: 'out.jsonl'` instead of a bare `[Errno 28] No space left on device`."""
    named = e.filename is not None and not Path(str(e.filename)).name.startswith(f".{path.name}.")
    if named:
        raise e
    raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(json_line(row, ensure_ascii=False) + "\n")
            n += 1
    return n


@contextmanager
def staged_dir(target: str | Path, last: str = "config.json", owned: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temp folder; on success its files are moved into `target` one atomic rename each, and the
    files matching the glob patterns in `owned` that this save did not write are removed from `target`.

    `last` (config.json) moves last so a reader never sees a config that points at missing weights. On
    failure nothing moves, and a `target` this call created is removed again (when still empty).
    """
    target = Path(target)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    ok = False
    try:
        yield tmp
        names = sorted(os.listdir(tmp), key=lambda n: n == last)
        for name in names:
            dest = target / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif (tmp / name).is_file():  # safetensors writes 0600; a saved model should be readable like any file
                os.chmod(tmp / name, _default_mode())
            os.replace(tmp / name, dest)
        for pattern in owned:
            for stale in target.glob(pattern):
                if stale.name not in names and stale.is_file():
                    stale.unlink(missing_ok=True)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not ok:
            try:
                target.rmdir()
            except OSError:  # not empty: another writer put something there meanwhile
                pass
