"""Field parsers shared by every row format: each returns a typed value or raises a `DataError` that names
the row and the field.

Empty responses (README "Reliability"): one rule for every format. A response that is "" (or only
whitespace, or messages whose contents are all empty) is a real, bad answer: it is kept, scored as the prompt
followed by the end-of-sequence token, and counted (`empty_responses` in the logs and the summaries). Only
fields that must hold text refuse it: an implicit-format transcript (the whole conversation) and a step of a
stepwise row.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Union

from rewardkit.data.readers import DataError

Message = dict[str, str]
Text = Union[str, list[Message]]  # a plain string or chat messages


# Chat roles a message may have: the ones chat templates know (OpenAI's developer/function, Llama 3.1's
# ipython). Anything else is a typo or another dataset's convention, never something to pass on silently.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function", "ipython")


def need(row: dict[str, Any], key: str, where: str) -> Any:
    if key in row and row[key] is None:
        raise DataError(where, key, "is null (expected a value)")
    if key not in row:
        close = difflib.get_close_matches(key, [str(k) for k in row], n=1, cutoff=0.75)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise DataError(where, key, f"missing (row has: {', '.join(map(str, row)) or 'nothing'}){hint}")
    return row[key]


def is_empty(value: Text) -> bool:
    """True for an empty response: blank text, no messages, or messages whose contents are all blank."""
    if isinstance(value, str):
        return not value.strip()
    return all(not str(m.get("content", "")).strip() for m in value)


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
        if not isinstance(m, dict):
            raise DataError(where, f"{key}[{j}]", f"expected a message object with `{role_key}` and "
                                                  f"`{content_key}`, got {type(m).__name__}")
        for k in (role_key, content_key):
            if m.get(k) is None:
                raise DataError(where, f"{key}[{j}].{k}", "missing" if k not in m else "is null")
        role = m[role_key]
        known = roles if roles is not None else {r: r for r in CHAT_ROLES}
        if not isinstance(role, str) or role.lower() not in known:
            raise DataError(where, f"{key}[{j}].{role_key}",
                            f"unknown role {role!r} (known: {', '.join(sorted(set(known)))})")
        if not isinstance(m[content_key], str):
            raise DataError(where, f"{key}[{j}].{content_key}", f"expected a string, got {type(m[content_key]).__name__}")
        out.append({"role": known[role.lower()], "content": m[content_key]})
    return out


def api_text(value: Any, name: str) -> Text:
    """A prompt or response handed to the Python API, checked as rows and the server check theirs: a string,
    or chat messages (a list of {role, content} dicts, or one such dict) whose content may be OpenAI-style text
    parts, joined with newlines as the server (and vLLM) join them. TypeError/ValueError name `name`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise TypeError(f"{name}: expected a string or a list of chat messages, got {type(value).__name__}")
    value = [{**m, "content": join_text_parts(m["content"], f"{name}[{j}].content")}
             if isinstance(m, dict) and isinstance(m.get("content"), list) else m for j, m in enumerate(value)]
    try:
        return messages(value, name, "")
    except DataError as e:
        raise ValueError(f"{e.field}: {e.problem}") from None


def join_text_parts(parts: list, name: str) -> str:
    """OpenAI-style content parts as one text, joined with newlines as vLLM joins them; only text parts."""
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
        raise ValueError(f'{name}: only text parts ({{"type": "text", "text": ...}}) can be scored')
    return "\n".join(p["text"] for p in parts)


def list_arg(value: Any, name: str, what: str) -> list:
    """A Python-API list argument as a list; a lone string (or message) is refused: iterated, it would give one
    item per character. `what` says what was expected ("a list of strings")."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}"
                        + ("; put a single text in a list" if isinstance(value, (str, dict)) else ""))
    return list(value)


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
    """A response: text (empty allowed and counted, see the module doc) or at least one chat message."""
    if isinstance(value, str):
        return value
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
