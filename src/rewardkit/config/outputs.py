"""Output paths checked by `validate()` before any work: a run that would fail at its very end because its
output is a folder, sits under a file or cannot be written, fails first, naming the key and the path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rewardkit.config.schema import ConfigError


def _writable_ancestor(folder: Path, key: str, path: str) -> None:
    """The nearest existing ancestor of `folder` (itself included) must be a folder we may write in."""
    q = folder.absolute()
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        raise ConfigError(f"{key}: cannot create {path}: {q} is a file, not a folder")
    try:  # a probe file, not os.access: it also sees read-only mounts, and root passes any os.access
        fd, probe = tempfile.mkstemp(prefix=".rewardkit-write-test-", dir=q)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}: cannot write {path}: cannot write in {q} ({e.strerror or e})") from None


# What the row outputs are not: a name with one of these suffixes promises a format they do not write.
OTHER_FORMATS = (".csv", ".tsv", ".json", ".parquet", ".arrow", ".txt")


def check_output_file(path: str | None, key: str) -> None:
    """A JSON-lines file the command writes (replaced atomically when it exists): not a folder, in a writable
    place, not named as if it held another format."""
    if not path:
        return
    p = Path(path)
    if p.suffix.lower() in OTHER_FORMATS:
        raise ConfigError(f"{key}: {path}: the output is JSON lines, one object per line; name it .jsonl "
                          f"(not {p.suffix})")
    if p.is_dir():
        raise ConfigError(f"{key}: {path} is a folder; give a file path")
    _writable_ancestor(p.parent, key, path)


def check_output_dir(path: str | None, key: str) -> None:
    """A folder the command writes into (created when missing): not an existing file, in a writable place."""
    if not path:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}: {path} is an existing file, not a folder")
    _writable_ancestor(p, key, path)
