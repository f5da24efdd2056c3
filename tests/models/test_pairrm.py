"""Pairwise ranker (kind pairrm): the triple layout and its length budget, exact antisymmetry of the judge's
margins, saving and loading through the kind registry, ranking by matrix and knockout."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.triples import TripleEncoder, split_budget
from rewardkit.models.reward_model import RewardModel, write_temperature
from rewardkit.scoring import NoScores, load_judge
from rewardkit.scoring.pairrm import PairRanker

PROMPT = "\n\nHuman: Tell me about cats, please.\n\nAssistant:"
ANSWERS = [" Cats are small felines that purr.", " No.", " Go away, I am busy.", " Cats sleep a lot, about 15 hours."]


def _ranker(path, max_length=64, **kw) -> PairRanker:
    """A tiny random encoder as a pairrm model, its head scaled so that margins are far from 0."""
    model, tok = RewardModel.from_pretrained(str(path), kind="pairrm", seed=0)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return PairRanker(model, tok, max_length=max_length, **kw)


@pytest.mark.parametrize("budget,lengths", [(28, (40, 18, 1)), (28, (40, 30, 30)), (28, (3, 30, 2)), (28, (0, 40, 40)),
                                            (29, (10, 10, 10)), (9, (50, 50, 50)), (28, (5, 6, 7))])
def test_split_budget(budget, lengths):
    kp, ka, kb = split_budget(budget, *lengths)
    n_p, n_a, n_b = lengths
    assert kp + ka + kb <= budget and kp <= n_p and ka <= n_a and kb <= n_b
    assert split_budget(budget, n_p, n_b, n_a) == (kp, kb, ka)  # symmetric in the answers
    if sum(lengths) <= budget:
        assert (kp, ka, kb) == lengths
    else:
        assert budget - (kp + ka + kb) <= 1  # nothing wasted but the odd token of an even split
        assert kp >= min(n_p, budget // 4)  # the prompt's floor
        if ka < n_a and kb < n_b:
            assert ka == kb  # both cut: equal shares
    assert split_budget(28, 40, 18, 1) == (9, 18, 1)  # short answers: the prompt gets the rest
    assert split_budget(28, 40, 30, 30) == (8, 10, 10)  # long answers: prompt floor 7, +1 of the odd split


def test_triple_layout_and_truncation_keep_each_part_end(tiny_models):
    model, tok = RewardModel.from_pretrained(str(tiny_models["bert"]), kind="pairrm")
    enc = TripleEncoder(tok, 40, model.is_encoder)
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = " ".join(f"p{i}" for i in range(60))
    a = " ".join(f"a{i}" for i in range(50))
    b = "the short answer"
    cls_, sep = tok.cls_token_id, tok.sep_token_id
    seq = enc.encode(prompt, a, b)
    assert len(seq.input_ids) == 40 and seq.truncated
    kp, ka, kb = split_budget(36, len(ids(prompt)), len(ids(a)), len(ids(b)))
    want = [cls_] + ids(prompt)[-kp:] + [sep] + ids(a)[-ka:] + [sep] + ids(b)[-kb:] + [sep]
    assert seq.input_ids == want and kb == len(ids(b))  # the prompt's end, A's end, all of the short B
    assert tok.decode(seq.input_ids[1:kp + 1]).endswith("p59") and tok.decode(ids(a)[-ka:]).endswith("a49")
    assert seq.response_start == kp + 2
    assert seq.token_type_ids == [0] * (kp + 2) + [1] * (ka + 1) + [0] * (kb + 1)  # 0 | 1 | 0
    # the swapped triple holds exactly the same tokens of each part
    both = enc.encode_both(prompt, a, b)
    assert both.chosen == seq
    assert both.rejected.input_ids == [cls_] + ids(prompt)[-kp:] + [sep] + ids(b)[-kb:] + [sep] + ids(a)[-ka:] + [sep]
    # no prompt: no prompt separator; short texts: nothing cut
    short = enc.encode("", "yes", "no")
    assert short.input_ids == [cls_] + ids("yes") + [sep] + ids("no") + [sep] and not short.truncated
    # a training pair: chosen-first order, then rejected-first
    pair = enc.encode_pair(PreferenceExample(PROMPT, "good", "bad"))
    assert pair.chosen == enc.encode(PROMPT, "good", "bad") and pair.rejected == enc.encode(PROMPT, "bad", "good")
    # chat messages render through the tokenizer (HH transcript style for BERT)
    chat = enc.encode([{"role": "user", "content": "Hi"}], "Hello!", "Bye.")
    assert "human : hi" in tok.decode(chat.input_ids) and "assistant" in tok.decode(chat.input_ids)


def test_decoders_are_refused(tiny_models):
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    with pytest.raises(ValueError, match="needs an encoder backbone"):
        TripleEncoder(tok, 64, model.is_encoder)
    with pytest.raises(ValueError, match="needs an encoder backbone"):
        RewardModel.from_pretrained(str(tiny_models["llama"]), kind="pairrm")


def test_margins_are_exactly_antisymmetric(tiny_models):
    ranker = _ranker(tiny_models["bert"], batch_size=3, max_tokens=200)  # several batches, sorted by length
    n = len(ANSWERS)
    a = [ANSWERS[i] for i in range(n) for j in range(n)]
    b = [ANSWERS[j] for i in range(n) for j in range(n)]
    prompts = [PROMPT] * len(a)
    ab, ba = ranker.margins(prompts, a, b), ranker.margins(prompts, b, a)
    assert torch.equal(ab, -ba)
    assert torch.equal(ab.reshape(n, n), -ab.reshape(n, n).T)  # a and b swapped inside one call, too
    assert ab.abs().max() > 1e-4  # far from the trivial all-zero answer (a random encoder: small margins)
    assert ab[torch.tensor([i == j for i in range(n) for j in range(n)])].eq(0).all()  # a vs itself: exactly 0
    # the margin is the mean of the two orders' logits
    both = ranker.encoder.encode_both(PROMPT, ANSWERS[0], ANSWERS[1])
    with torch.no_grad():
        from rewardkit.data.collators import pad_sequences
        logits = ranker.model(pad_sequences([both.chosen, both.rejected], ranker.tokenizer.pad_token_id)).double()
    assert ab[1].item() == pytest.approx(float(logits[0] - logits[1]) / 2, abs=1e-5)
    # probabilities: P(a ≻ b) = 1 − P(b ≻ a); one item alone gives the same margin as in the batch
    fwd, rev = ranker.compare(prompts, a, b), ranker.compare(prompts, b, a)
    assert all(x.prob_a_better + y.prob_a_better == pytest.approx(1.0, abs=1e-12) for x, y in zip(fwd, rev))
    assert all(c.reward_a is None and c.margin == m for c, m in zip(fwd, ab.tolist()))
    assert ranker.margins([PROMPT], [ANSWERS[0]], [ANSWERS[1]]).item() == pytest.approx(ab[1].item(), abs=1e-5)
    assert ranker.margins([], [], []).shape == (0,)


def test_saved_folder_loads_as_a_pair_ranker_with_the_same_margins(tiny_models, tmp_path):
    ranker = _ranker(tiny_models["bert"], max_length=48)
    ranker.model.save_pretrained(tmp_path / "prm", ranker.tokenizer, max_length=48)
    block = json.loads((tmp_path / "prm" / "config.json").read_text())["rewardkit"]
    assert block["kind"] == "pairrm" and block["readout"] == "cls" and block["hf_equivalent"] is False
    loaded = load_judge(tmp_path / "prm")
    assert isinstance(loaded, PairRanker) and loaded.kind == "pairrm" and not loaded.pointwise
    assert loaded.encoder.max_length == 48 and loaded.temperature == 1.0
    prompts, a, b = [PROMPT] * 3, ANSWERS[:3], ANSWERS[1:4]
    torch.testing.assert_close(loaded.margins(prompts, a, b), ranker.margins(prompts, a, b), atol=1e-6, rtol=0)
    with pytest.raises(NoScores, match="compares responses"):
        loaded.score(prompts, a)
    write_temperature(tmp_path / "prm", 2.0)  # `rewardkit calibrate` writes it; compare uses it
    warm = load_judge(tmp_path / "prm", options={"rank_strategy": "knockout"})
    assert warm.temperature == 2.0 and warm.rank_strategy == "knockout"
    c = warm.compare(prompts[:1], a[:1], b[:1])[0]
    assert c.prob_a_better == pytest.approx(1 / (1 + math.exp(-c.margin / 2.0)), abs=1e-12)


def test_rank_by_matrix_and_knockout(tiny_models, monkeypatch):
    ranker = _ranker(tiny_models["bert"])
    cands = ANSWERS + [" Purr."]
    ordered = [(x, y) for x in cands for y in cands if x != y]
    m = ranker.margins([PROMPT] * len(ordered), [x for x, _ in ordered], [y for _, y in ordered])
    margin = dict(zip(ordered, m.tolist()))
    p = lambda x, y: 1 / (1 + math.exp(-margin[(x, y)]))  # noqa: E731
    want = [sum(p(x, y) - p(y, x) for y in cands if y != x) / (len(cands) - 1) for x in cands]
    r = ranker.rank(PROMPT, cands)  # matrix by default
    assert r.scores == pytest.approx(want, abs=1e-6)
    assert r.order == sorted(range(len(cands)), key=lambda i: -want[i]) and r.best == r.order[0]
    ko = ranker.rank(PROMPT, cands, strategy="knockout")
    assert ko.scores[ko.best] == 3 and sorted(ko.scores)[-2] < 3  # 5 candidates: 3 rounds (a bye counts)
    # on a toy judge (the longer answer wins) both strategies give the full order
    monkeypatch.setattr(ranker, "margins", lambda ps, xs, ys: torch.tensor(
        [float(len(x) - len(y)) for x, y in zip(xs, ys)], dtype=torch.float64))
    by_length = sorted(range(len(cands)), key=lambda i: -len(cands[i]))
    assert ranker.rank(PROMPT, cands).order == by_length
    assert ranker.rank(PROMPT, cands, strategy="knockout").best == by_length[0]
