"""Text -> token ids for pairwise rankers (PairRM-style): one encoder sequence reads the prompt and BOTH answers.

Layout (encoders only):
  [CLS] prompt [SEP] A [SEP] B [SEP]      token types 0 | 1 | 0 when the model uses them, so that every
                                          part differs from its neighbours (BERT has two types only)
  [CLS] A [SEP] B [SEP]                   when there is no prompt
Length budget: `max_length` minus the special tokens is split between the parts. The prompt is guaranteed
min(its length, a quarter of the budget); the two answers share the rest equally, a short answer's unused
share going to the other; whatever the answers leave goes back to the prompt. Every part that is too long
keeps its END (cut from the left), as `SequenceEncoder` does: the prompt's last turn and each answer's
conclusion are what a judgement reads. The split depends on (len A, len B) symmetrically, so the swapped
triple (prompt, B, A) holds exactly the same tokens of each part.

A training / evaluation item is a `TokenizedPair` of the two orders: `chosen` = (prompt, chosen, rejected),
label 1; `rejected` = (prompt, rejected, chosen), label 0. The pair collators and packing take it as it is.
"""

from __future__ import annotations

import logging

from rewardkit.data.fields import Text
from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.tokenize import SequenceEncoder, TokenizedPair, TokenizedSequence, render, tokenize_pairs

log = logging.getLogger(__name__)

PROMPT_FLOOR = 4  # the prompt is guaranteed 1/PROMPT_FLOOR of the budget (when it is that long)


def split_budget(budget: int, n_prompt: int, n_a: int, n_b: int) -> tuple[int, int, int]:
    """Tokens kept of (prompt, A, B) when `budget` tokens are left for the three parts (see the module doc);
    kept A / kept B swap exactly when n_a / n_b do."""
    floor = min(n_prompt, budget // PROMPT_FLOOR)
    room = budget - floor
    if n_a + n_b <= room:
        ka, kb = n_a, n_b
    else:
        half = room // 2
        ka = min(n_a, max(half, room - n_b))
        kb = min(n_b, max(half, room - n_a))
    return min(n_prompt, budget - ka - kb), ka, kb


def _common_prefix(x: str, y: str) -> str:
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return x[:n]


class TripleEncoder:
    """Encodes (prompt, A, B) into one encoder sequence for a tokenizer and a max_length (module doc)."""

    def __init__(self, tokenizer, max_length: int, is_encoder: bool):
        if not is_encoder:
            raise ValueError("a pairwise ranker (kind / loss pairrm) reads prompt + A + B in one bidirectional "
                             "pass: it needs an encoder backbone (BERT, MiniLM, DeBERTa, RoBERTa), not a decoder")
        seq = SequenceEncoder(tokenizer, max_length, True)  # finds the tokenizer's [CLS] / [SEP]
        if not seq.suffix:
            raise ValueError("the tokenizer adds no separator token ([SEP], </s>): the parts of a pairwise "
                             "ranker's input could not be told apart")
        self.tok, self.max_length = tokenizer, max_length
        self.prefix, self.sep = seq.prefix, seq.suffix
        self.use_token_types = seq.use_token_types
        self._ids = seq._ids
        if max_length - len(self.prefix) - 3 * len(self.sep) < 3:
            raise ValueError(f"max_length={max_length} leaves no room for prompt and two answers")

    def texts(self, prompt: Text, a: Text, b: Text) -> tuple[str, str, str]:
        """(prompt, A, B) as text: chat messages through the tokenizer's template (as `render`)."""
        pa, ta = render(self.tok, prompt, a)
        pb, tb = render(self.tok, prompt, b)
        # A template that rewrites history could render the prompt differently per answer: keep what both share.
        return (pa if pa == pb else _common_prefix(pa, pb)), ta, tb

    def encode(self, prompt: Text, a: Text, b: Text) -> TokenizedSequence:
        """One triple; `response_start` is A's first token."""
        p_text, a_text, b_text = self.texts(prompt, a, b)
        return self._encode(*(self._ids(t) for t in (p_text, a_text, b_text)))

    def _encode(self, p: list[int], a: list[int], b: list[int]) -> TokenizedSequence:
        head_sep = self.sep if p else []
        budget = self.max_length - len(self.prefix) - len(head_sep) - 2 * len(self.sep)
        kp, ka, kb = split_budget(budget, len(p), len(a), len(b))
        truncated = (kp, ka, kb) != (len(p), len(a), len(b))
        p, a, b = p[len(p) - kp:], a[len(a) - ka:], b[len(b) - kb:]  # each part keeps its end
        head_sep = head_sep if p else []
        head = self.prefix + p + head_sep
        part_a = a + self.sep
        ids = head + part_a + b + self.sep
        types = None
        if self.use_token_types:
            types = [0] * len(head) + [1] * len(part_a) + [0] * (len(b) + len(self.sep))
        return TokenizedSequence(ids, len(head), types, truncated)

    def encode_both(self, prompt: Text, a: Text, b: Text, margin: float = 0.0) -> TokenizedPair:
        """(prompt, A, B) and (prompt, B, A), tokenised once: `chosen` holds the A-first order."""
        p, x, y = (self._ids(t) for t in self.texts(prompt, a, b))
        return TokenizedPair(self._encode(p, x, y), self._encode(p, y, x), margin)

    def encode_pair(self, ex: PreferenceExample) -> TokenizedPair:
        """A training pair in both orders: (prompt, chosen, rejected) labelled 1, (prompt, rejected, chosen) 0."""
        return self.encode_both(ex.prompt, ex.chosen, ex.rejected, ex.margin or 0.0)

    def encode_pairs(self, examples: list[PreferenceExample]) -> list[TokenizedPair]:
        return [self.encode_pair(ex) for ex in examples]


def tokenize_triple_pairs(encoder: TripleEncoder, examples: list[PreferenceExample],
                          name: str = "data") -> list[TokenizedPair]:
    """Every example in both orders; none is dropped, and the truncated count is logged."""
    return tokenize_pairs(encoder, examples, name, what="triples", how="each part keeps its end")
