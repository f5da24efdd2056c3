"""`DpoReward`: a DPO policy's implicit reward as a `Judge` (kind "dpo", RewardBench's DPO scoring).

    r(x, y) = β · Σ_t [log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)]      over the response tokens y_t
    reference_free: π_ref dropped (r = β · log π(y | x));  length_normalize: the sum divided by |y| (SimPO)

Texts are laid out as for value-head models (`SequenceEncoder`: prompt + response + EOS, the EOS scored
too) and batched the same way (`length_batches` under `max_tokens`): on CPU each batch is one padding-free
packed row, elsewhere padded. On CPU, responses to one prompt (a pair's two sides in `compare` and
`rewardkit eval`, a Best-of-N row's candidates in `rank`) are laid out [prompt][a][b]..., the prompt computed
once (`scoring.run.unit_batches`). There are no reward statistics, so `normalize` is the identity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardkit.config import SCORE_MAX_TOKENS
from rewardkit.data.collators import pad_sequences
from rewardkit.data.fields import Text
from rewardkit.data.packing import flat_round_steps, pack_sequences
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence
from rewardkit.models.backbone import resolve_path
from rewardkit.models.causal_lm import load_causal_lm, pad_id, response_logprobs
from rewardkit.models.packed_linear import pack_for_inference
from rewardkit.models.positions import fit_max_length
from rewardkit.scoring.base import PointwiseJudge, ScoreDetails
from rewardkit.scoring.run import distinct, unit_batches


class DpoReward(PointwiseJudge):
    """Implicit reward of `policy` against `reference` (None: reference-free), both `*ForCausalLM` sharing
    `tokenizer`'s vocabulary. Rewards are float32; the log-prob sums behind them are float64."""

    kind = "dpo"

    def __init__(self, policy, reference, tokenizer, *, beta: float = 0.1, length_normalize: bool = False,
                 max_length: int = 2048, batch_size: int = 32, device: torch.device | str = "cpu",
                 max_tokens: int | None = SCORE_MAX_TOKENS, bf16: bool = False, temperature: float = 1.0):
        if not beta > 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        self.policy = policy.to(device).eval()
        self.reference = reference.to(device).eval() if reference is not None else None
        self.tokenizer = tokenizer
        self.encoder = SequenceEncoder(tokenizer, max_length, is_encoder=False)
        self.pad_id = pad_id(tokenizer)
        self.beta, self.length_normalize = float(beta), bool(length_normalize)
        self.batch_size, self.max_tokens, self.bf16 = batch_size, max_tokens, bf16
        self.device = device
        self.flat = torch.device(device).type == "cpu"  # one packed row per batch (segment attention), else padded
        self.round_steps = flat_round_steps(device)  # the CPU row rounded up (oneDNN compiles per shape)
        self.temperature = float(temperature)

    @property
    def reference_free(self) -> bool:
        return self.reference is None

    @classmethod
    def from_folder(cls, path: str, options: dict[str, Any], **settings: Any) -> "DpoReward":
        """The registry's entry: `path` is the policy; options reference, beta, reference_free, length_normalize
        (`model.*`). The reference is loaded once more unless it is the policy's own path."""
        ref_path, free = options.get("reference"), bool(options.get("reference_free", False))
        if not ref_path and not free:
            raise ValueError("model.kind=dpo needs the reference model (model.reference=DIR, --dpo-ref DIR) "
                             "or model.reference_free=true")
        policy, tok = load_causal_lm(path)
        reference = None
        if not free:
            if ref_path == path:
                reference = policy
            else:
                reference, ref_tok = load_causal_lm(ref_path)
                if ref_tok.get_vocab() != tok.get_vocab():  # log-ratios of different token ids mean nothing
                    raise ValueError(f"the policy {path} and the reference {ref_path} have different "
                                     "vocabularies: a DPO reward needs one tokenizer for both")
        max_length = fit_max_length(policy, settings.pop("max_length", None), min(
            2048, int(getattr(policy.config, "max_position_embeddings", 2048) or 2048)))
        reward = cls(policy, reference, tok, beta=float(options.get("beta", 0.1)),
                     length_normalize=bool(options.get("length_normalize", False)), max_length=max_length,
                     temperature=_saved_temperature(path), **settings)
        for m in (policy, reference):  # CPU bf16: faster linears, same scores (a shared model is packed once)
            if m is not None:
                pack_for_inference(m, reward.device, reward.bf16)
        return reward

    # ------------------------------------------------------------------ log-probs

    @torch.no_grad()
    def _forward(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy log-prob, reference log-prob, scored tokens) per sequence of one batch, (n,) each, CPU."""
        batch = batch.to(self.device)
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
            lp, count = response_logprobs(self.policy, batch)
            if self.reference is None:
                ref = torch.zeros_like(lp)
            elif self.reference is self.policy:
                ref = lp
            else:
                ref = response_logprobs(self.reference, batch)[0]
        return lp.cpu(), ref.cpu(), count.cpu()

    def logprobs(self, seqs: Sequence[TokenizedSequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log π(y|x), log π_ref(y|x) (zeros when reference-free), scored response tokens), (N,) each, in
        input order; batches sorted by length and cut by `batch_size` and `max_tokens`. On CPU, responses to the
        same prompt share its forward (`run.unit_batches`), as the value-head scorer's do."""
        seqs, inverse = distinct(seqs)  # identical texts computed once: the same log-probs
        lp = torch.zeros(len(seqs), dtype=torch.float64)
        ref, count = torch.zeros_like(lp), torch.zeros(len(seqs), dtype=torch.long)
        for idx, groups in unit_batches(seqs, share=self.flat, batch_size=self.batch_size, max_tokens=self.max_tokens):
            chunk = [seqs[i] for i in idx]
            batch = (pack_sequences(chunk, self.pad_id, causal=True, flat=True, round_steps=self.round_steps,
                                    groups=groups) if self.flat
                     else pad_sequences(chunk, self.pad_id))
            lp[idx], ref[idx], count[idx] = self._forward(batch)
        return lp[inverse], ref[inverse], count[inverse]

    def rewards(self, lp: torch.Tensor, ref: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """β · (log π − log π_ref), per scored token when `length_normalize`; (N,) float32."""
        ratio = lp - ref
        if self.length_normalize:
            ratio = ratio / count.clamp(min=1)
        return (self.beta * ratio).float()

    # ------------------------------------------------------------------ the Judge interface

    def encode(self, prompt: Text, response: Text) -> TokenizedSequence:
        return self.encoder.encode(prompt, response)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """The identity: a DPO policy carries no reward statistics (β already sets the scale)."""
        return raw

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails:
        """Rewards (N,), response tokens seen (incl. EOS), truncation, and extras `logp` (N, 2): the policy's
        and the reference's summed response log-probs (the reference's 0 when reference-free)."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        lp, ref, count = self.logprobs(seqs)
        return ScoreDetails(self.rewards(lp, ref, count),
                            torch.tensor([len(s.input_ids) - s.response_start for s in seqs], dtype=torch.long),
                            torch.tensor([s.truncated for s in seqs], dtype=torch.bool),
                            {"logp": torch.stack([lp, ref], 1).float()}, {"logp": ["policy", "reference"]})

    def score_texts(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) of N (prompt, response) pairs; each may be a string or chat messages."""
        return self.score_details(prompts, responses).rewards


def _saved_temperature(path: str) -> float:
    """`rewardkit.temperature` in the policy's config.json (set by `rewardkit calibrate`), else 1.0."""
    cfg = Path(resolve_path(path)[0]) / "config.json"
    try:
        block = json.loads(cfg.read_text(encoding="utf-8")).get("rewardkit") or {}
        return float(block.get("temperature", 1.0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 1.0
