"""Scoring with prompt groups: responses to one prompt laid out [prompt][r1]...[rk], the prompt computed once,
each response scored exactly as it is alone (Best-of-N files, a pair's two sides, PPO's samples per prompt)."""

from __future__ import annotations

import pytest
import torch

from rewardkit.data.packing import pack_sequences, prompt_groups, unit_tokens
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring.run import length_batches, run_model

PROMPTS = ["\n\nHuman: Tell me about cats, please, in detail.\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant:"]
RESPONSES = [" Cats are small felines.", " No.", " They purr, sleep a lot and hunt mice at night.",
             " Hello! How can I help you today?", " Go away."]


def _seqs(model, tok, max_length=64) -> list[TokenizedSequence]:
    enc = SequenceEncoder(tok, max_length, model.is_encoder)
    rows = [(PROMPTS[0], r) for r in RESPONSES[:3]] + [(PROMPTS[1], r) for r in RESPONSES[3:]]
    rows += [("", "A text without any prompt."), (PROMPTS[1], " Fine.")]
    return [enc.encode(p, r) for p, r in rows]


def _model(path, readout):
    model, tok = RewardModel.from_pretrained(str(path), readout=readout, seed=1)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 0.5)
    return model, tok


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_prompt_groups_score_as_alone(tiny_models, kind, readout):
    model, tok = _model(tiny_models[kind], readout)
    seqs = _seqs(model, tok)
    units = prompt_groups(seqs, causal=True)
    assert sorted(len(u) for u in units if len(u) > 1) == [3, 3]  # two prompts, each computed once
    kw = dict(pad_id=tok.pad_token_id, batch_size=4)
    alone = run_model(model, seqs, share_prompts=False, **kw).score
    shared = run_model(model, seqs, **kw).score
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)
    # bf16 autocast too (CPU flat rows, flash kernel for the masked units): within bf16's rounding
    torch.testing.assert_close(run_model(model, seqs, bf16=True, **kw).score,
                               run_model(model, seqs, bf16=True, share_prompts=False, **kw).score, atol=0.05, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prompt_groups_in_padded_rows_match(tiny_models, kind):
    """The same units in ordinary rows with (L, L) masks (the batch_rows layout): same rewards."""
    model, tok = _model(tiny_models[kind], "last")
    seqs = _seqs(model, tok)
    groups = prompt_groups(seqs, causal=True)
    b = pack_sequences(seqs, tok.pad_token_id, causal=True, row_length=64, groups=groups)
    lone = pack_sequences(seqs, tok.pad_token_id, causal=True, row_length=64)
    assert b.num_tokens < lone.num_tokens and not b.position_ids_suffice
    with torch.no_grad():
        torch.testing.assert_close(model(b), model(lone), atol=1e-5, rtol=0)


def test_prompt_group_layout():
    p = [7, 8, 9]
    seqs = [TokenizedSequence(p + [1, 2], 3), TokenizedSequence(p + [3], 3), TokenizedSequence(p + [4, 5, 6], 3)]
    units = prompt_groups(seqs, causal=True)
    assert units == [[0, 1, 2]] and unit_tokens(seqs, units[0]) == 3 + 2 + 1 + 3
    b = pack_sequences(seqs, 0, causal=True, flat=True, groups=units)
    assert b.input_ids[0].tolist() == [7, 8, 9, 1, 2, 3, 4, 5, 6]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 3, 4, 5]  # each response continues the prompt
    assert b.input_ids.reshape(-1)[b.last_index].tolist() == [2, 3, 6]
    assert b.prompt_end_index.tolist() == [2, 2, 2]
    assert b.response_seq[0].tolist() == [-1, -1, -1, 0, 0, 1, 2, 2, 2]
    (_, _, mask), = b.units
    assert mask[5, :3].all() and not mask[5, 3:5].any() and mask[5, 5]  # response 2 sees the prompt and itself
    assert mask[8, :3].all() and not mask[8, 3:6].any() and mask[8, 6:9].all()
    assert not mask[3, 4]  # causal inside a response


def test_prompt_groups_keep_apart_what_differs():
    seqs = [TokenizedSequence([1, 2, 3, 4], 2), TokenizedSequence([1, 9, 3], 2),  # other prompt tokens
            TokenizedSequence([5, 6], 0), TokenizedSequence([5, 6], 0),  # no prompt
            TokenizedSequence([1, 2], 2),  # empty response (its last token is the prompt's)
            TokenizedSequence([1, 2, 8], 2)]
    assert prompt_groups(seqs, causal=True) == [[0, 5], [1], [2], [3], [4]]
    assert prompt_groups(seqs, causal=False) == [[i] for i in range(6)]  # an encoder's prompt sees the response
    # a unit stays under max_unit tokens: the rest of the prompt's responses open another unit
    many = [TokenizedSequence([1, 2] + [3] * 10, 2) for _ in range(5)]
    units = prompt_groups(many, causal=True, max_unit=35)
    assert units == [[0, 1, 2], [3, 4]] and max(unit_tokens(many, u) for u in units) <= 35
    assert prompt_groups([TokenizedSequence([1] * 50, 1)], causal=True, max_unit=35) == [[0]]  # longer alone


def test_length_batches_count_the_responses_a_unit_holds():
    assert length_batches([10, 20, 30], batch_size=4, counts=[3, 1, 2]) == [[0, 1], [2]]
    assert length_batches([10, 20, 30], batch_size=4) == [[0, 1, 2]]
    assert length_batches([10, 20], batch_size=2, counts=[5, 1]) == [[0], [1]]  # a big unit still runs, alone


def test_identical_sequences_are_computed_once_and_tie(tiny_models):
    from rewardkit.scoring.run import distinct

    model, tok = _model(tiny_models["llama"], "last")
    seqs = _seqs(model, tok)
    twice = seqs + seqs[:3] + [TokenizedSequence(seqs[0].input_ids, seqs[0].response_start - 1)]
    uniq, inverse = distinct(twice)
    assert len(uniq) == len(seqs) + 1 and inverse[len(seqs):].tolist() == [0, 1, 2, len(seqs)]
    score = run_model(model, twice, pad_id=tok.pad_token_id, bf16=True).score
    assert score[len(seqs):len(seqs) + 3].tolist() == score[:3].tolist()  # exactly: an identical pair ties
