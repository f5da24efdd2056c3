"""`GenerativeJudge`: a language model asked "Which response is better? Answer A or B." (SteamSHP-style judges).

The verdict is the next-token logits of the label tokens after the judge prompt (`scoring.judge_prompt`):
d(a, b) = l_A − l_B for a shown as A and b as B. Both orders are judged and averaged,

    margin(a ≻ b) = (d(a, b) − d(b, a)) / 2          (log-odds at T = 1)

which cancels the model's position bias and makes margins exactly antisymmetric: the pair is always run in
one canonical order, so margins(p, b, a) is the bitwise negation of margins(p, a, b). Any causal LM folder,
hub id, GGUF file (`dir/x.gguf`, `pypi:PACKAGE/x.gguf`) or seq2seq LM is a judge (`load_judge(path,
kind="generative")`); a folder trained with `loss=judge` says so itself (`rewardkit.kind = "generative"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardkit.config import SCORE_MAX_TOKENS
from rewardkit.data.collators import pad_sequences
from rewardkit.data.fields import Text
from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.models.causal_lm import pad_id
from rewardkit.models.judge_lm import JudgeLM
from rewardkit.models.packed_linear import pack_for_inference
from rewardkit.models.positions import fit_max_length
from rewardkit.scoring.base import PairwiseJudge, _check_triples
from rewardkit.scoring.judge_prompt import JudgePrompt
from rewardkit.scoring.run import length_batches

DEFAULT_MAX_LENGTH = 2048


class GenerativeJudge(PairwiseJudge):
    """An LM plus its judge prompt; implements `Judge` through `margins` (compare / rank follow)."""

    kind = "generative"

    def __init__(self, model: JudgeLM, tokenizer, *, template: str | None = None,
                 max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8, device: torch.device | str = "cpu",
                 max_tokens: int | None = SCORE_MAX_TOKENS, bf16: bool = False, rank_strategy: str = "matrix"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.prompt = JudgePrompt(tokenizer, template or model.judge_info.get("template"), max_length)
        self.batch_size = batch_size
        self.device = device
        self.max_tokens = max_tokens  # padded tokens per forward (None: batch_size alone)
        self.bf16 = bf16
        self.rank_strategy = rank_strategy
        self.temperature = model.temperature
        self.pad_id = pad_id(tokenizer)

    @classmethod
    def load(cls, path: str | Path, *, gguf_file: str | None = None, template: str | None = None,
             max_length: int | None = None, **kw: Any) -> "GenerativeJudge":
        """Any LM checkpoint as a judge; `max_length` defaults to a trained judge's own, else 2048."""
        model, tok = JudgeLM.from_pretrained(str(path), gguf_file=gguf_file)
        judge = cls(model, tok, template=template,
                    max_length=fit_max_length(model, max_length, model.saved_max_length or DEFAULT_MAX_LENGTH), **kw)
        pack_for_inference(model, judge.device, judge.bf16)  # CPU bf16: faster linears, same scores
        return judge

    @classmethod
    def from_folder(cls, path: str, options: dict[str, Any], **settings: Any) -> "GenerativeJudge":
        """The registry's entry (`scoring.judges`): reads `model.template` and `model.rank_strategy`."""
        settings = {k: v for k, v in settings.items() if v is not None or k == "max_tokens"}
        return cls.load(path, template=options.get("template"), rank_strategy=options.get("rank_strategy") or "matrix",
                        **settings)

    # ------------------------------------------------------------------ forwards

    def encode(self, prompt: Text, first: Text, second: Text) -> TokenizedSequence:
        return self.prompt.encode(prompt, first, second)

    @torch.no_grad()
    def label_scores(self, seqs: Sequence[TokenizedSequence]) -> torch.Tensor:
        """(N, 2) label scores (l_A, l_B) of tokenised judge prompts, in input order, float32 on the CPU;
        batches of similar length, left-padded."""
        out = torch.zeros(len(seqs), len(self.prompt.labels))
        dev_type = torch.device(self.device).type
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=self.bf16):
            for idx in length_batches([len(s.input_ids) for s in seqs], self.batch_size, self.max_tokens):
                batch = pad_sequences([seqs[i] for i in idx], self.pad_id, "left").to(self.device)
                out[idx] = self.model.label_scores(batch, self.prompt.labels).float().cpu()
        return out

    def order_logodds(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text]) -> torch.Tensor:
        """(N,) l_A − l_B with `first` shown as A: one order only, position bias included."""
        prompts, first, second = _check_triples(prompts, first, second)
        s = self.label_scores([self.encode(p, a, b) for p, a, b in zip(prompts, first, second)])
        return s[:, 0] - s[:, 1]

    def margins(self, prompts: Sequence[Text], responses_a: Sequence[Text],
                responses_b: Sequence[Text]) -> torch.Tensor:
        """(N,) float64 log-odds of a ≻ b, (d(a, b) − d(b, a)) / 2, exactly antisymmetric."""
        prompts, responses_a, responses_b = _check_triples(prompts, responses_a, responses_b)
        n = len(prompts)
        if n == 0:
            return torch.zeros(0, dtype=torch.float64)
        swap = [repr(a) > repr(b) for a, b in zip(responses_a, responses_b)]  # canonical order per pair
        x = [b if s else a for a, b, s in zip(responses_a, responses_b, swap)]
        y = [a if s else b for a, b, s in zip(responses_a, responses_b, swap)]
        d = self.order_logodds(list(prompts) * 2, x + y, y + x).double()
        m = (d[:n] - d[n:]) / 2
        return torch.where(torch.tensor(swap), -m, m)
