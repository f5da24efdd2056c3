"""`RewardScorer`: the `Judge` of value-head models (every kind in `models.kinds`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardkit.config import SCORE_MAX_TOKENS
from rewardkit.data.fields import Message, Text, api_text, list_arg
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence
from rewardkit.models.heads import HeadOutput
from rewardkit.models.packed_linear import pack_for_inference
from rewardkit.models.positions import fit_max_length
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring.base import PointwiseJudge, ScoreDetails, check_pairs, plain_texts
from rewardkit.scoring.run import run_model

SCORE_CHUNK = 8192  # sequences per tokenise + forward round in `score_details`


class RewardScorer(PointwiseJudge):
    """A loaded value-head reward model plus its tokenizer and sequence layout; implements `Judge`."""

    def __init__(self, model: RewardModel, tokenizer, *, max_length: int | None = None, batch_size: int = 32,
                 device: torch.device | str = "cpu", max_tokens: int | None = SCORE_MAX_TOKENS, bf16: bool = False):
        """max_length: None = the one the model was trained with (2048 where unknown), capped by its position
        table; `load` builds the scorer the same way."""
        max_length = fit_max_length(model, max_length, model.saved_max_length or 2048)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.encoder = SequenceEncoder(tokenizer, max_length, model.is_encoder, model.token_types)
        self.batch_size = batch_size
        self.device = device
        self.max_tokens = max_tokens  # padded tokens per forward (None: batch_size alone)
        self.bf16 = bf16  # bf16 autocast in the forwards (scores then agree with fp32 less closely)

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str = "cpu", batch_size: int = 32,
             max_length: int | None = None, max_tokens: int | None = SCORE_MAX_TOKENS,
             bf16: bool = False, allow_random_head: bool = False, packed: bool = True) -> "RewardScorer":
        """Load a saved reward model folder (any kind); `max_length` defaults to the one it was trained with.
        A checkpoint without a value head (a plain backbone) is refused unless `allow_random_head`: its
        head would be random and its scores noise. `packed` (CPU, bf16): the model's linears keep a
        oneDNN-packed bf16 copy of their weights for inference (`models.packed_linear`; same scores, faster)."""
        model, tok = RewardModel.from_pretrained(str(path))
        if model.kind in ("prm", "pairrm"):  # their heads read other positions than prompt + response + EOS
            raise ValueError(f"{path} holds a {model.kind!r} model, which RewardScorer would read at the wrong "
                             "token; load it with rewardkit.scoring.load_judge(path)")
        if model.new_head and not allow_random_head:
            raise ValueError(f"{path}: not a reward model (no value head saved: a plain backbone?); its scores would "
                             "come from a random head. Train one with `rewardkit train`, or set "
                             "model.allow_random_head=true to score with a random head anyway")
        scorer = cls(model, tok, max_length=max_length,
                     batch_size=batch_size, device=device, max_tokens=max_tokens, bf16=bf16)
        if packed:  # a model this scorer owns (never training's, whose weights change)
            pack_for_inference(model, device, bf16)
        return scorer

    @classmethod
    def from_folder(cls, path: str, options: dict[str, Any], **settings: Any) -> "RewardScorer":
        """The registry's entry (`scoring.judges`): of the kind-specific options, value-head kinds read only
        `allow_random_head`."""
        return cls.load(path, allow_random_head=bool(options.get("allow_random_head", False)), **settings)

    @property
    def kind(self) -> str:
        return self.model.head.kind

    # ------------------------------------------------------------------ tokens in, rewards out

    def encode(self, prompt: Text, response: Text) -> TokenizedSequence:
        return self.encoder.encode(prompt, response)

    def encode_text(self, text: str) -> TokenizedSequence:
        """A full prompt+response text, as a PPO trainer decodes it (see `SequenceEncoder.encode_text`)."""
        return self.encoder.encode_text(text)

    def encode_texts(self, texts: Sequence[str]) -> list[TokenizedSequence]:
        """`encode_text` for many texts in one tokenizer call."""
        return self.encoder.encode_texts(texts)

    def encode_queries(self, texts: Sequence[str], prompts: Sequence[Any] | None = None) -> list[TokenizedSequence]:
        """Full texts, each split at its prompt where it starts with it (`SequenceEncoder.encode_queries`)."""
        return self.encoder.encode_queries(texts, prompts)

    def run(self, seqs: Sequence[TokenizedSequence], **overrides: Any) -> HeadOutput:
        """The model's outputs for tokenised sequences, (N,) score plus extras, in input order; `overrides`
        replace this scorer's `run_model` settings (batch_size, max_tokens, bf16)."""
        kw = dict(pad_id=self.tokenizer.pad_token_id, device=self.device, batch_size=self.batch_size,
                  max_tokens=self.max_tokens, bf16=self.bf16)
        return run_model(self.model, seqs, **{**kw, **overrides})

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw − mean) / std with the statistics saved in the model's config.json."""
        return self.model.normalize(raw)

    # ------------------------------------------------------------------ the Scorer interface

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails:
        """Raw rewards, token lengths and the head's published extras of N (prompt, response) pairs."""
        prompts, responses = check_pairs(prompts, responses)
        names = self.model.head.published
        scores, lengths, cut, extras = [], [], [], {k: [] for k in names}
        # SCORE_CHUNK sequences tokenised and run at a time: memory stays bounded by that, not by N (50k eval
        # pairs held 0.87 GB of token lists), and a chunk is plenty to sort by length.
        for s in range(0, len(prompts), SCORE_CHUNK):
            seqs = self.encoder.encode_many(prompts[s:s + SCORE_CHUNK], responses[s:s + SCORE_CHUNK])
            out = self.run(seqs)
            scores.append(out.score)
            lengths += [len(q.input_ids) - q.response_start for q in seqs]
            cut += [q.truncated for q in seqs]
            for k in names:
                extras[k].append(out.extras[k])
        return ScoreDetails(torch.cat(scores) if scores else torch.zeros(0), torch.tensor(lengths, dtype=torch.long),
                            torch.tensor(cut, dtype=torch.bool),
                            {k: torch.cat(v) if v else torch.zeros(0) for k, v in extras.items()}, dict(names))

    def score_texts(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) for N (prompt, response) pairs; each may be a string or chat messages."""
        raw = self.score_details(prompts, responses).rewards
        return self.normalize(raw) if normalize else raw

    def score_full_texts(self, texts: Sequence[str], *, prompts: Sequence[str] | None = None,
                         normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) for N full prompt+response texts (OpenRLHF's remote-RM queries). With `prompts` (one
        per text), a text that starts with its prompt is scored as that (prompt, response) pair, exactly as
        `score` and training read it; the others as whole texts."""
        texts = plain_texts(texts, "texts")
        if prompts is not None:
            prompts = plain_texts(prompts, "prompts")
            if len(prompts) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(prompts)} prompts")
        raw = self.run(self.encode_queries(texts, prompts)).score
        return self.normalize(raw) if normalize else raw

    def score_messages(self, conversations: Sequence[list[Message]], *, normalize: bool = False) -> list[float]:
        """Rewards for whole chats: the last message is the response, the rest the prompt."""
        chats = []
        for i, c in enumerate(list_arg(conversations, "conversations", "a list of chats (each a list of messages)")):
            if not isinstance(c, list):
                raise TypeError(f"conversations[{i}]: expected a chat (a list of messages), got {type(c).__name__}"
                                + ("; pass a list of chats" if isinstance(c, dict) else ""))
            if not c:
                raise ValueError(f"conversations[{i}]: empty chat (nothing to score)")
            chats.append(api_text(c, f"conversations[{i}]"))
        return self.score([c[:-1] for c in chats], [c[-1:] for c in chats], normalize=normalize)

    @property
    def temperature(self) -> float:
        """T from the model's config.json (`rewardkit.temperature`, set by `rewardkit calibrate`); 1.0 if unfitted."""
        return self.model.temperature

