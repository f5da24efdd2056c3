"""The character cap of scoring: texts are cut BEFORE tokenising, so one huge text cannot hold a worker (the
server) or take minutes and gigabytes (eval of judges, length statistics).

Every model truncates to `max_length` tokens anyway; which end it keeps depends on the kind (value heads
and pairwise rankers keep the end, process rewards the start, generative judges cut the middle). So a text
longer than 2 x CHARS_PER_TOKEN x max_length characters keeps its first and its last
CHARS_PER_TOKEN x max_length characters. CHARS_PER_TOKEN is the data layer's (rewardkit.data.tokenize: 64,
where ordinary text has 3-5 characters per token): each part alone holds more than max_length tokens, so the
model sees what it would have seen from the whole text, and a value head's score equals offline scoring's
(whose encoder keeps the same last characters). The seam lies in the part every kind cuts away. Applies to
each prompt, response, full text and chat message content.
"""

from __future__ import annotations

from typing import Any

from rewardkit.data.tokenize import CHARS_PER_TOKEN

FALLBACK_MAX_LENGTH = 4096  # a judge that does not say its max_length


def model_max_length(scorer: Any) -> int:
    """The token limit a judge truncates to (its encoder's, its judge prompt's, or its own)."""
    for holder in (getattr(scorer, "encoder", None), getattr(scorer, "prompt", None), scorer):
        n = getattr(holder, "max_length", None)
        if isinstance(n, int) and n > 0:
            return n
    return FALLBACK_MAX_LENGTH


def char_limit(max_length: int) -> int:
    """Characters a text may keep: its first and last CHARS_PER_TOKEN * max_length."""
    return 2 * CHARS_PER_TOKEN * max_length


def cap_text(t: Any, limit: int) -> tuple[Any, int]:
    """`t` (a string, or chat messages as dicts) cut to `limit` characters per string, and how many strings
    were cut."""
    if isinstance(t, str):
        if len(t) <= limit:
            return t, 0
        half = limit // 2
        return t[:half] + t[-half:], 1
    if isinstance(t, list):  # chat messages: each content on its own
        out, cut = [], 0
        for m in t:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                content, c = cap_text(m["content"], limit)
                m, cut = {**m, "content": content}, cut + c
            out.append(m)
        return out, cut
    return t, 0
