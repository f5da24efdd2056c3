"""Model kinds: the saved `rewardkit.kind` picks the head; every head works on every batch layout; a new kind
plugs in through the registry alone; every consumer reaches it through the one Scorer interface."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from rewardkit.data.collators import PairCollator, pad_sequences
from rewardkit.data.packing import PackedPairCollator, pack_sequences
from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.models import kinds
from rewardkit.models.heads import Features, HeadOutput
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import RewardScorer, Scorer

EXAMPLES = [
    PreferenceExample("\n\nHuman: Tell me about cats, please.\n\nAssistant:", " Cats are small felines.", " No."),
    PreferenceExample("\n\nHuman: Hi\n\nAssistant:", " Hello! How can I help you today?", " Go away, I am busy."),
    PreferenceExample("", "A response without any prompt.", "Another one."),
]


def _multi_objective(path, seed=0):
    model, tok = RewardModel.from_pretrained(str(path), kind="multi_objective", seed=seed)
    model.head.set_attributes(["helpful", "verbosity"], seed=seed)
    model.head.add_gate(16, 1, 1.0, seed=seed)
    with torch.no_grad():
        model.head.attr_head.weight.normal_(0, 0.5)
    return model.eval(), tok


@pytest.mark.parametrize("shared", [False, True])
def test_multi_objective_head_is_layout_invariant(tiny_models, shared):
    """Attributes, gate (read at the last prompt token) and score agree between padded and flat packed
    batches, the shared-prompt layout included (rejected reads its prompt state inside the shared prompt)."""
    model, tok = _multi_objective(tiny_models["llama"])
    enc = SequenceEncoder(tok, 48, model.is_encoder)
    pairs = [enc.encode_pair(e) for e in EXAMPLES]
    with torch.no_grad():
        padded = model.outputs(PairCollator(tok.pad_token_id)(pairs).sequences)
        packed = model.outputs(PackedPairCollator(tok.pad_token_id, causal=True, shared_prompt=shared,
                                                  flat=True)(pairs).sequences)
    torch.testing.assert_close(packed.score, padded.score, atol=1e-4, rtol=1e-4)
    for name in ("attributes", "gate"):
        torch.testing.assert_close(packed.extras[name], padded.extras[name], atol=1e-4, rtol=1e-4)


def test_saved_kind_picks_the_head(tiny_models, tmp_path):
    model, tok = _multi_objective(tiny_models["llama"])
    model.save_pretrained(tmp_path / "mo", tok, max_length=48)
    block = json.loads((tmp_path / "mo" / "config.json").read_text())["rewardkit"]
    assert block["kind"] == "multi_objective" and block["hf_equivalent"] is False
    again, _ = RewardModel.from_pretrained(str(tmp_path / "mo"))
    assert again.kind == "multi_objective" and again.head.attribute_names == ["helpful", "verbosity"]

    del block["kind"]  # folders written before kinds were saved: told apart by their multi-objective block
    assert kinds.kind_of(block) == "multi_objective" and kinds.kind_of({}) == "scalar"
    with pytest.raises(ValueError, match="unknown model kind 'pairwise'"):
        kinds.kind_of({"kind": "pairwise"})

    scalar, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    scalar.save_pretrained(tmp_path / "rm", tok, max_length=48)
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["rewardkit"]["kind"] == "scalar"


class _LengthHead(nn.Module):
    """A toy kind: reward = mean of the readout state (one learnable scale), to show a kind is one class."""

    kind = "toy"
    published: dict[str, list[str]] = {}

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    @classmethod
    def build(cls, hf, readout, encoder, *, saved, path, new_head, seed):
        return cls()

    def forward(self, f: Features) -> HeadOutput:
        return HeadOutput((f.pooled.mean(-1) * self.scale).float())

    def values(self, hidden):
        raise ValueError("no per-token values")

    def hf_equivalent(self, readout, encoder):
        return False

    def save_extras(self, out_dir):
        return {}


def test_a_new_kind_needs_only_its_head_and_a_registry_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "toy", f"{__name__}:_LengthHead")
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), kind="toy")
    model.save_pretrained(tmp_path / "toy", tok, max_length=48)
    scorer = RewardScorer.load(tmp_path / "toy")
    assert scorer.model.kind == "toy"
    prompts, responses = ["Hi", "Hi"], ["Hello there!", "Go away."]
    with torch.no_grad():
        enc = SequenceEncoder(tok, 48, False)
        seqs = [enc.encode(p, r) for p, r in zip(prompts, responses)]
        want = model.eval()(pad_sequences(seqs, tok.pad_token_id))
    assert scorer.score(prompts, responses) == pytest.approx(want.tolist(), abs=1e-4)
    ranking = scorer.rank("Hi", responses)
    assert ranking.order == sorted(range(2), key=lambda i: -want[i].item())


def test_reward_scorer_is_a_scorer(tiny_models):
    scorer = RewardScorer.load(tiny_models["llama"], max_length=48, allow_random_head=True)
    assert isinstance(scorer, Scorer)
    cands = ["Hello!", "Go away.", "Hi, how can I help you today?"]
    scores = scorer.score(["Hi"] * 3, cands)
    ranking = scorer.rank("Hi", cands)
    assert ranking.scores == pytest.approx(scores) and ranking.best == ranking.order[0]
    assert ranking.order == sorted(range(3), key=lambda i: -scores[i])
    (c,) = scorer.compare(["Hi"], ["Hello!"], ["Go away."], temperature=2.0)
    assert c.prob_a_better == pytest.approx(torch.sigmoid(torch.tensor((c.reward_a - c.reward_b) / 2.0)).item())


def test_flat_packed_scoring_equals_padded_for_every_kind(tiny_models):
    """run_model packs each CPU batch into one flat row; the multi-objective kind now takes it too."""
    model, tok = _multi_objective(tiny_models["qwen2"])
    enc = SequenceEncoder(tok, 48, False)
    seqs = [enc.encode(e.prompt, r) for e in EXAMPLES for r in (e.chosen, e.rejected)]
    with torch.no_grad():
        flat = model.outputs(pack_sequences(seqs, tok.pad_token_id, causal=True, flat=True))
        padded = model.outputs(pad_sequences(seqs, tok.pad_token_id, padding_side="left"))
    torch.testing.assert_close(flat.score, padded.score, atol=1e-4, rtol=1e-4)


def test_attribute_eval_reports_an_attribute_with_one_labelled_row(tiny_models):
    """An attribute labelled on one eval row still gets its error (its correlation is undefined: NaN)."""
    from types import SimpleNamespace

    from rewardkit.data.targets import TokenizedTarget
    from rewardkit.objectives.multi_objective import AttributeObjective

    model, tok = _multi_objective(tiny_models["llama"])
    enc = SequenceEncoder(tok, 48, model.is_encoder)
    cfg = SimpleNamespace(data=SimpleNamespace(columns=SimpleNamespace(attributes=["helpful", "verbosity"])),
                          loss=SimpleNamespace(freeze_backbone=False))
    items = [TokenizedTarget(enc.encode(e.prompt, e.chosen), (float(i), 1.0 if i == 0 else math.nan))
             for i, e in enumerate(EXAMPLES)]
    stats = AttributeObjective("attributes", cfg).evaluate(model, items, pad_id=tok.pad_token_id, batch_size=4,
                                                           device="cpu")
    assert math.isfinite(stats["mse/helpful"]) and math.isfinite(stats["pearson/helpful"])
    assert math.isfinite(stats["mse/verbosity"]) and math.isnan(stats["pearson/verbosity"])


def test_scoring_in_chunks_gives_the_one_pass_details(tiny_models, monkeypatch):
    """`score_details` tokenises and runs SCORE_CHUNK sequences at a time (bounded memory): scores, lengths,
    truncation flags and a multi-objective model's extras equal one pass's, in input order."""
    import rewardkit.scoring.reward as reward

    model, tok = _multi_objective(tiny_models["llama"])
    scorer = RewardScorer(model, tok, max_length=48)
    prompts = [e.prompt for e in EXAMPLES] * 3
    responses = [e.chosen if i % 2 else e.rejected + " and more words" * (4 * i) for i, e in enumerate(EXAMPLES * 3)]
    whole = scorer.score_details(prompts, responses)
    monkeypatch.setattr(reward, "SCORE_CHUNK", 2)
    chunked = scorer.score_details(prompts, responses)
    torch.testing.assert_close(chunked.rewards, whole.rewards, atol=1e-5, rtol=1e-5)
    assert chunked.lengths.tolist() == whole.lengths.tolist() and chunked.truncated.tolist() == whole.truncated.tolist()
    assert any(whole.truncated.tolist())
    for k in whole.extras:
        torch.testing.assert_close(chunked.extras[k], whole.extras[k], atol=1e-5, rtol=1e-5)
