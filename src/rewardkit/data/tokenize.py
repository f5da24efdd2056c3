"""Text -> token ids, the same way for training, evaluation and scoring.

Layout of one sequence:
  decoder: [BOS?] prompt response EOS          (EOS added once; BOS only if the tokenizer adds one and
                                                the rendered text does not already start with it)
  encoder: [CLS] prompt [SEP] response [SEP]   (token_type_ids 0 then 1, when the model uses them)
Truncation keeps the END of the response: prompt tokens go first (from the left), then response tokens
(from the left), so the readout token is always the real last token.

Before tokenising, a text longer than max_length x CHARS_PER_TOKEN characters keeps only its last that many
characters (the end, as token truncation does), so a 50 MB response costs what a 32k-character one does
instead of millions of tokens. Ordinary text has 3-5 characters per token and GPT-2's longest token has 66,
so the cut only removes text that token truncation would drop anyway.
An empty response still has a token to read the reward from: decoders end every sequence with EOS, encoders
with [SEP] (an encoder tokenizer with neither reads the last prompt token).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewardkit.data.fields import Message, Text, api_text
from rewardkit.data.pairs import PreferenceExample

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 64  # the character cap before tokenising is max_length x this (module doc)

# Used when a tokenizer has no chat template (GPT-2, BERT): the HH transcript style.
_FALLBACK_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}


@dataclass(frozen=True)
class TokenizedSequence:
    input_ids: list[int]
    response_start: int  # index of the first response token
    token_type_ids: list[int] | None = None
    truncated: bool = False


@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedSequence
    rejected: TokenizedSequence
    margin: float = 0.0

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def _fallback_render(messages: list[Message]) -> str:
    return "".join(f"\n\n{_FALLBACK_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def render(tokenizer, prompt: Text, response: Text) -> tuple[str, str]:
    """Turn a prompt and a response (strings or chat messages) into (prompt_text, response_text).

    Messages use the tokenizer's chat template: the prompt is rendered WITH the generation prompt, so
    prompt_text + response_text equals the template applied to the whole conversation.
    """
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt, response
    prompt, response = api_text(prompt, "prompt"), api_text(response, "response")
    p_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else (prompt or [])
    r_msgs = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(p_msgs + r_msgs, tokenize=False)
        p_text = tokenizer.apply_chat_template(p_msgs, tokenize=False, add_generation_prompt=True) if p_msgs else ""
    else:
        full = _fallback_render(p_msgs + r_msgs)
        p_text = _fallback_render(p_msgs) + "\n\nAssistant:" if p_msgs else ""
    if not full.startswith(p_text):
        # Templates that rewrite history (e.g. strip reasoning) break the prefix property: cut at the
        # longest common prefix instead.
        n = 0
        while n < min(len(full), len(p_text)) and full[n] == p_text[n]:
            n += 1
        p_text = full[:n]
    # The template's trailing newline after the end-of-turn token would otherwise become the readout.
    return p_text, full[len(p_text):].rstrip()


def split_queries(texts: Sequence[str], prompts: Sequence[Any] | None) -> list[tuple[str, str] | None]:
    """(prompt, response) for each full text that starts with its (non-empty, string) prompt, else None.
    A prompt the text does not start with (cut for length, or not decoded back verbatim) leaves the text
    whole: it is then read as a full text, never split at a guess."""
    if prompts is None or len(prompts) != len(texts):
        return [None] * len(texts)
    return [(p, t[len(p):]) if isinstance(p, str) and p and t.startswith(p) else None for t, p in zip(texts, prompts)]


class SequenceEncoder:
    """Encodes (prompt, response) into token ids for one tokenizer and layout."""

    def __init__(self, tokenizer, max_length: int, is_encoder: bool, token_types: bool = True):
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length}")
        self.tok = tokenizer
        self.max_length = max_length
        self.is_encoder = is_encoder
        self.max_chars = max_length * CHARS_PER_TOKEN
        probe = tokenizer("hello", add_special_tokens=False)["input_ids"]
        full = tokenizer("hello", add_special_tokens=True)["input_ids"]
        start = next((i for i in range(len(full)) if full[i:i + len(probe)] == probe), 0)
        self.prefix = full[:start]  # e.g. [CLS] or [BOS]
        self.suffix = full[start + len(probe):]  # e.g. [SEP]
        # token_types=False: encoders get all-zero segments (no segment B for the response)
        self.use_token_types = is_encoder and "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        self.response_type = 1 if token_types else 0
        if not is_encoder:
            if tokenizer.eos_token_id is None:
                raise ValueError("decoder tokenizer has no eos_token; set one so the reward has a fixed readout token")
            self.suffix = [tokenizer.eos_token_id]
        self._template_checked = False

    def _check_template_room(self) -> None:
        """Chat rows pay the template's fixed tokens (turn markers, roles) on every sequence: a max_length that
        they alone overflow would leave no token of any response, so it is refused (train, eval, score alike)."""
        self._template_checked = True
        empty = self.encode([{"role": "user", "content": ""}], [{"role": "assistant", "content": ""}])
        if empty.truncated:
            self._template_checked = False
            raise ValueError(f"data.max_length={self.max_length} is shorter than the chat template: an empty user "
                             "turn and an empty reply already overflow it; raise data.max_length")

    def _cap(self, text: str) -> str:
        """At most the last `max_chars` characters of `text` (the character cap, module doc)."""
        return text[len(text) - self.max_chars:] if len(text) > self.max_chars else text

    def _ids(self, text: str) -> list[int]:
        """Token ids of `text`, capped (`_cap`)."""
        text = self._cap(text)
        return self.tok(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []

    def _render(self, prompt: Text, response: Text) -> tuple[str, str]:
        if not self._template_checked and (isinstance(prompt, list) or isinstance(response, list)):
            self._check_template_room()
        return render(self.tok, prompt, response)

    def encode(self, prompt: Text, response: Text) -> TokenizedSequence:
        p_text, r_text = self._render(prompt, response)
        return self._assemble(p_text, r_text, self._ids(p_text), self._ids(r_text))

    def encode_many(self, prompts: Sequence[Text], responses: Sequence[Text],
                    chunk: int = 4096) -> list[TokenizedSequence]:
        """`encode` of each (prompt, response), the same sequences, with every distinct text of `chunk` pairs
        tokenised in one tokenizer call (a prompt shared by its chosen and rejected answers, or by N samples,
        once): training's tokenising phase, 100k pairs, was 0.5 ms a pair one text at a time."""
        out: list[TokenizedSequence] = []
        for s in range(0, len(prompts), chunk):
            rendered = [self._render(p, r) for p, r in zip(prompts[s:s + chunk], responses[s:s + chunk])]
            distinct = list(dict.fromkeys(t for pr in rendered for t in pr if t))
            ids = dict(zip(distinct, self.tok([self._cap(t) for t in distinct], add_special_tokens=False,
                                              verbose=False)["input_ids"] if distinct else []))
            out += [self._assemble(p, r, ids.get(p, []), ids.get(r, [])) for p, r in rendered]
        return out

    def _assemble(self, p_text: str, r_text: str, prompt_ids: list[int], response_ids: list[int]) -> TokenizedSequence:
        """The layout (module doc) around a rendered prompt and response and their token ids."""
        prefix = self.prefix
        bos, bos_id = getattr(self.tok, "bos_token", None), getattr(self.tok, "bos_token_id", None)
        if bos and bos_id is not None and (p_text or r_text).startswith(bos):
            # The chat template already wrote BOS: keep exactly one, and keep it in the prefix so that
            # left truncation of the prompt cannot cut it away.
            if prompt_ids[:1] == [bos_id]:
                prompt_ids = prompt_ids[1:]
                prefix = [bos_id]
            elif not p_text and response_ids[:1] == [bos_id]:
                response_ids = response_ids[1:]
                prefix = [bos_id]
            elif prefix == [bos_id]:
                prefix = []
        if self.is_encoder:
            sep = self.suffix if prompt_ids else []
            end = self.suffix
        else:
            sep = []
            end = [] if response_ids[-1:] == self.suffix else self.suffix
        budget = self.max_length - len(prefix) - len(sep) - len(end)
        truncated = (len(prompt_ids) + len(response_ids) > budget or len(p_text) > self.max_chars
                     or len(r_text) > self.max_chars)
        if truncated:
            keep_prompt = max(0, budget - len(response_ids))
            prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:] if keep_prompt else []
            if not prompt_ids:
                sep = []
                budget = self.max_length - len(prefix) - len(end)
            response_ids = response_ids[max(0, len(response_ids) - budget):]
        head = prefix + prompt_ids + sep
        ids = head + response_ids + end
        if not ids:
            raise ValueError("empty prompt and response, and the tokenizer adds no special token: no token to "
                             "read a reward from")
        types = None
        if self.use_token_types:  # segment B = response, when there is a segment A
            types = [0] * len(head) + [self.response_type if prompt_ids else 0] * (len(ids) - len(head))
        # An empty response without an end token of its own is read at the last prompt token.
        return TokenizedSequence(ids, min(len(head), len(ids) - 1), types, truncated)

    def encode_text(self, text: str) -> TokenizedSequence:
        """A full prompt+response text, as a PPO trainer decodes it (special tokens kept), -> ids.

        Tokenised with add_special_tokens=False. Padding and trailing EOS in the text are dropped and the
        layout's own tokens added once: decoders get [BOS?] text EOS (exactly one EOS), encoders
        [CLS] text [SEP]. Too long keeps the END. The prompt/response split is unknown, so the whole text
        counts as response (as `encode("", text)` does).
        """
        text = self._strip_text(text)
        return self._finish_text(self._ids(text), len(text) > self.max_chars)

    def encode_texts(self, texts: Sequence[str]) -> list[TokenizedSequence]:
        """`encode_text` of each text, tokenised in ONE tokenizer call: the same sequences, less Python per text
        (1,200 HH texts, MiniLM's tokenizer: 0.18-0.29 s against 0.32-0.34 s; on an H200 tokenising was most of
        the texts-in scoring time)."""
        cleaned = [self._strip_text(t) for t in texts]
        cut = [self._cap(t) for t in cleaned]
        nonempty = [t for t in cut if t]
        ids = iter(self.tok(nonempty, add_special_tokens=False, verbose=False)["input_ids"] if nonempty else [])
        return [self._finish_text(next(ids) if t else [], len(c) > self.max_chars) for t, c in zip(cut, cleaned)]

    def encode_queries(self, texts: Sequence[str], prompts: Sequence[Any] | None = None) -> list[TokenizedSequence]:
        """Full texts as `encode_texts`, except that a text which starts with its prompt (OpenRLHF sends the
        prompt of each query) is encoded as the (prompt, rest) pair, the layout training used: encoders get
        the [SEP] between prompt and response, and decoders the prompt/response token boundary."""
        splits = split_queries(texts, prompts)
        whole = iter(self.encode_texts([t for t, s in zip(texts, splits) if s is None]))
        return [next(whole) if s is None else self.encode(s[0], self._strip_tail(s[1])) for s in splits]

    def _strip_text(self, text: str) -> str:
        """Trailing EOS/padding and leading padding of a decoded text removed (see `encode_text`)."""
        tok = self.tok
        pad, eos, bos = (getattr(tok, a, None) for a in ("pad_token", "eos_token", "bos_token"))
        text = self._strip_tail(text)
        # Left padding kept in a decoded batch: the policy pads with its pad token, often its EOS, neither of
        # which starts a real text. A BOS among them goes too unless the chat template writes one (training kept
        # exactly one then); the tokenizer's own BOS comes back in `_finish_text`.
        heads = [t for t in (pad, eos) if t]
        start = 0
        while (cut := next((t for t in heads if text.startswith(t, start)), None)) is not None:
            start += len(cut)
        if start:
            template = str(getattr(tok, "chat_template", None) or "")  # a dict of named templates too
            own_bos = bos and bos in heads and (bos in template or "bos_token" in template)
            text = (bos if own_bos else "") + text[start:]
        return text

    def _strip_tail(self, text: str) -> str:
        """Trailing whitespace, EOS and padding removed: "...<eos>\n<pad><pad>" -> "..." (rstrip first: the
        template's newline after the end-of-turn would otherwise be the readout)."""
        tails = [t for t in (self.tok.eos_token, self.tok.pad_token) if t]
        while True:
            text = text.rstrip()
            cut = next((t for t in tails if text.endswith(t)), None)
            if cut is None:
                return text
            text = text[:-len(cut)]

    def _finish_text(self, ids: list[int], capped: bool) -> TokenizedSequence:
        """The layout's own tokens around a whole text's ids, truncated from the left (see `encode_text`)."""
        tok = self.tok
        bos = getattr(tok, "bos_token", None)
        prefix = self.prefix
        if bos and getattr(tok, "bos_token_id", None) is not None and ids[:1] == [tok.bos_token_id] \
                and not self.is_encoder:
            prefix, ids = [tok.bos_token_id], ids[1:]  # the text's own BOS, kept once
        elif prefix and ids[:len(prefix)] == prefix:
            ids = ids[len(prefix):]
        end = self.suffix
        if self.is_encoder and end and ids[-len(end):] == end:
            ids = ids[:-len(end)]
        budget = self.max_length - len(prefix) - len(end)
        truncated = len(ids) > budget
        if truncated:
            ids = ids[len(ids) - budget:]
        truncated = truncated or capped
        full = prefix + ids + end
        types = [0] * len(full) if self.use_token_types else None
        return TokenizedSequence(full, len(prefix), types, truncated)

    def encode_pair(self, ex: PreferenceExample) -> TokenizedPair:
        return self.encode_pairs([ex])[0]

    def encode_pairs(self, examples: Sequence[PreferenceExample]) -> list[TokenizedPair]:
        """`encode_pair` of each example, tokenised in batches (`encode_many`)."""
        seqs = self.encode_many([ex.prompt for ex in examples for _ in (0, 1)],
                                [r for ex in examples for r in (ex.chosen, ex.rejected)])
        return [TokenizedPair(seqs[2 * i], seqs[2 * i + 1], ex.margin or 0.0) for i, ex in enumerate(examples)]


def tokenize_pairs(encoder: Any, examples: list[PreferenceExample], name: str = "data", *,
                   what: str = "pairs", how: str = "prompt cut first, from the left") -> list[TokenizedPair]:
    """Tokenise every example with `encoder.encode_pairs` (a SequenceEncoder, or a TripleEncoder for pairwise
    rankers); none is dropped, and the truncated count is logged."""
    pairs = encoder.encode_pairs(examples)
    n_trunc = sum(p.truncated for p in pairs)
    if n_trunc:
        log.info("%s: %d of %d %s truncated to max_length=%d (%s)", name, n_trunc, len(pairs), what,
                 encoder.max_length, how)
    return pairs
