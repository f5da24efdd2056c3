"""The judge prompt of a generative judge: template -> chat template -> token ids within `max_length`, and the
label tokens whose next-token logits are the verdict.

Layout: the template (default `DEFAULT_TEMPLATE`) filled with the prompt and both responses becomes ONE user
message, rendered by the tokenizer's chat template with `add_generation_prompt=True`, so the next token is the
assistant's answer. A tokenizer without a chat template gets the filled template plus "\\nAnswer:" (unless the
template already ends with ":").

Truncation (`max_length`): the template's own text, the chat-template tokens and the answer instruction are
never cut. The prompt (question / conversation) is kept whole unless that would leave a response fewer than
`MIN_RESPONSE_TOKENS`; then its START is cut (the last turn matters most). The responses share what is left:
a response shorter than half keeps everything and the other gets the rest; one that does not fit keeps its
beginning and end and loses its middle, replaced by " [...] ". The split is symmetric in A and B, so both orders
of a pair see the same texts.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewardkit.data.fields import Text
from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.scoring.limits import cap_text, char_limit

DEFAULT_TEMPLATE = ("Below are a conversation and two candidate responses for the assistant's next turn.\n\n"
                    "[Conversation]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
                    "Which response is better? Answer A or B.")
LABELS = ("A", "B")
ANSWER_CUE = "\nAnswer:"
SLOTS = ("prompt", "a", "b")
MIN_RESPONSE_TOKENS = 16
ELLIPSIS = " [...] "
_MARK = "\x00{}\x00"  # stands in for a slot while the chat template renders (no template writes NULs)
_ROLES = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def label_token_ids(tokenizer, labels: Sequence[str] = LABELS) -> list[list[int]]:
    """Per label, the ids of its single-token spellings ("A" and, for BPE vocabularies, " A"); a label that is
    no single token in either spelling is an error (the verdict is one next-token logit per label)."""
    out: list[list[int]] = []
    for label in labels:
        ids = sorted({x[0] for v in (label, " " + label) if len(x := tokenizer.encode(v, add_special_tokens=False)) == 1})
        if not ids:
            raise ValueError(f"judge label {label!r} is not a single token for this tokenizer (it is "
                             f"{tokenizer.tokenize(label)}); a generative judge reads one next-token logit per label")
        out.append(ids)
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            if set(a) & set(b):
                raise ValueError(f"judge labels {list(labels)} share a token")
    return out


def plain(text: Text) -> str:
    """A prompt or response as plain text: a string as is (HH's trailing "Assistant:" cue dropped), one message
    by its content, a conversation as "Role: content" turns."""
    if isinstance(text, str):
        s = text.strip()
        return s[:-len("Assistant:")].rstrip() if s.endswith("\n\nAssistant:") else s
    if len(text) == 1:
        return text[0]["content"].strip()
    return "\n\n".join(f"{_ROLES.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in text)


def _share(room: int, na: int, nb: int) -> tuple[int, int]:
    """Tokens kept of two responses of na and nb tokens in `room`; symmetric: _share(r, b, a) is swapped."""
    if na + nb <= room:
        return na, nb
    half = room // 2
    if na <= half:
        return na, room - na
    if nb <= half:
        return room - nb, nb
    return half, half


class JudgePrompt:
    """Builds the token ids of (prompt, first, second) for one tokenizer, template and `max_length`."""

    def __init__(self, tokenizer, template: str | None = None, max_length: int = 2048, *, chat: bool | None = None):
        self.tok = tokenizer
        self.template = template or DEFAULT_TEMPLATE
        for slot in SLOTS:
            if self.template.count("{" + slot + "}") != 1:
                raise ValueError(f"model.template must contain {{{slot}}} exactly once: {self.template!r}")
        self.max_length = max_length
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        self.labels = label_token_ids(tokenizer)
        marked = self.template
        for slot in SLOTS:
            marked = marked.replace("{" + slot + "}", _MARK.format(slot))
        if self.chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": marked}], tokenize=False,
                                                 add_generation_prompt=True)
        else:
            text = marked + ("" if marked.rstrip().endswith(":") else ANSWER_CUE)
        # the rendered text cut at the slots: fixed[0] slot fixed[1] slot fixed[2] slot fixed[3]
        where = sorted((text.find(_MARK.format(s)), s) for s in SLOTS)
        if any(text.count(_MARK.format(s)) != 1 for s in SLOTS):
            raise ValueError("the tokenizer's chat template altered the judge template's {prompt}/{a}/{b} slots")
        self.order = [s for _, s in where]
        self.fixed, start = [], 0
        for pos, s in where:
            self.fixed.append(text[start:pos])
            start = pos + len(_MARK.format(s))
        self.fixed.append(text[start:])
        bos = getattr(tokenizer, "bos_token", None)
        self.add_special = not (bos and text.startswith(bos))  # the chat template wrote BOS itself
        self.ellipsis = tokenizer.encode(ELLIPSIS, add_special_tokens=False)

    def text(self, prompt: Text, first: Text, second: Text) -> str:
        """The whole judge prompt as text (before truncation)."""
        return "".join(self._parts(prompt, first, second)[0])

    def _parts(self, prompt: Text, first: Text, second: Text) -> tuple[list[str], dict[str, tuple[int, int]]]:
        limit = char_limit(self.max_length)  # before tokenising: the middle is cut anyway (scoring/limits.py)
        texts = {k: cap_text(plain(t), limit)[0] for k, t in (("prompt", prompt), ("a", first), ("b", second))}
        parts, spans, pos = [], {}, 0
        for i, piece in enumerate(self.fixed):
            parts.append(piece)
            pos += len(piece)
            if i < len(self.order):
                t = texts[self.order[i]]
                spans[self.order[i]] = (pos, pos + len(t))
                parts.append(t)
                pos += len(t)
        return parts, spans

    def _tokens(self, parts: list[str], spans: dict[str, tuple[int, int]]) -> tuple[list[int], dict[str, range]]:
        """Ids of the whole text and the token range of each slot (tokens lying wholly inside it)."""
        try:
            enc = self.tok("".join(parts), add_special_tokens=self.add_special, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # a slow (python) tokenizer: encode the pieces one by one
            return self._tokens_piecewise(parts)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        ranges = {}
        for s, (lo, hi) in spans.items():
            inside = [i for i, (x, y) in enumerate(offsets) if lo <= x and y <= hi and y > x]
            ranges[s] = range(inside[0], inside[-1] + 1) if inside else range(0)
        return ids, ranges

    def _tokens_piecewise(self, parts: list[str]) -> tuple[list[int], dict[str, range]]:
        full = self.tok("x", add_special_tokens=self.add_special)["input_ids"]
        core = self.tok("x", add_special_tokens=False)["input_ids"]
        k = next((i for i in range(len(full)) if full[i:i + len(core)] == core), 0)
        ids, ranges = list(full[:k]), {}
        for i, part in enumerate(parts):
            piece = self.tok(part, add_special_tokens=False)["input_ids"] if part else []
            if i % 2:
                ranges[self.order[i // 2]] = range(len(ids), len(ids) + len(piece))
            ids += piece
        return ids + list(full[k + len(core):]), ranges

    def encode(self, prompt: Text, first: Text, second: Text) -> TokenizedSequence:
        """Token ids of the judge prompt with `first` as response A and `second` as B, at most `max_length`."""
        ids, ranges = self._tokens(*self._parts(prompt, first, second))
        if len(ids) <= self.max_length:
            return TokenizedSequence(ids, 0)
        n = {s: len(r) for s, r in ranges.items()}
        room = self.max_length - (len(ids) - sum(n.values()))
        floor = min(n["a"], MIN_RESPONSE_TOKENS) + min(n["b"], MIN_RESPONSE_TOKENS)
        if room < floor:
            raise ValueError(f"max_length={self.max_length} leaves {room} tokens for the conversation and both "
                             f"responses after the judge template; raise max_length")
        keep = {"prompt": min(n["prompt"], room - floor)}
        keep["a"], keep["b"] = _share(room - keep["prompt"], n["a"], n["b"])
        for s in sorted(ranges, key=lambda s: -ranges[s].start):  # from the end, so earlier ranges stay valid
            r = ranges[s]
            ids[r.start:r.stop] = self._cut(ids[r.start:r.stop], keep[s], middle=s != "prompt")
        return TokenizedSequence(ids, 0, truncated=True)

    def _cut(self, ids: list[int], k: int, *, middle: bool) -> list[int]:
        """`k` of `ids`: the end (prompt), or beginning and end around an ellipsis (a response)."""
        if k >= len(ids):
            return ids
        if not middle:
            return ids[len(ids) - k:] if k else []
        if k < len(self.ellipsis) + 2:
            return ids[:k]
        head = (k - len(self.ellipsis) + 1) // 2
        tail = k - len(self.ellipsis) - head
        return ids[:head] + self.ellipsis + ids[len(ids) - tail:]
