"""Field parsers shared by every row format: each returns a typed value or raises a `DataError` that names
the row and the field."""

from __future__ import annotations

import math
from typing import Any, Union

from rewardkit.data.readers import DataError

Message = dict[str, str]
Text = Union[str, list[Message]]  # a plain string or chat messages


def need(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(where, key, f"missing (row has: {', '.join(map(str, row)) or 'nothing'})")
    return row[key]


def text(value: Any, key: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(where, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(where, key, "empty text")
    return value


def messages(value: Any, key: str, where: str, role_key: str = "role", content_key: str = "content",
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


def margin(row: dict[str, Any], key: str, where: str) -> float | None:
    """The optional per-pair margin: None when absent or empty, else a finite number."""
    value = row.get(key)
    return None if value is None or value == "" else number(value, key, where)


def rating_key(value: Any) -> str:
    """Normalised rating label: lower case, `_`/`-` as spaces, whole numbers without `.0`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).lower().replace("_", " ").replace("-", " ").split())


def prompt(row: dict[str, Any], key: str, where: str) -> Text:
    p = row.get(key)
    if p is None:
        return ""
    return text(p, key, where, allow_empty=True) if isinstance(p, str) else messages(p, key, where)


def response(value: Any, key: str, where: str) -> Text:
    if isinstance(value, str):
        return text(value, key, where)
    msgs = messages(value, key, where)
    if not msgs:
        raise DataError(where, key, "no response message")
    return msgs


def number(value: Any, key: str, where: str, missing_ok: bool = False) -> float:
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


def label(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return float(value.strip().lower() in _TRUE)
    raise DataError(where, key, f"expected a 0/1 or true/false label, got {value!r}")
