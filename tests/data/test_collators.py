"""Padding literal token lists into batches."""

from __future__ import annotations

import pytest
import torch

from conftest import bert_tokenizer
from rewardkit.batches import PairBatch, SequenceBatch
from rewardkit.data.collators import PairCollator, pad_sequences
from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.tokenize import SequenceEncoder, TokenizedPair, TokenizedSequence, tokenize_pairs

PAD = 0
T = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731

A = TokenizedSequence([5, 6, 7], response_start=1)
B = TokenizedSequence([8, 9, 10, 11, 12], response_start=3)
C = TokenizedSequence([13], response_start=0)


def test_right_padding():
    b = pad_sequences([A, B, C], PAD, "right")
    assert isinstance(b, SequenceBatch)
    assert torch.equal(b.input_ids, T([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 0, 0, 0, 0]]))
    assert torch.equal(b.attention_mask, T([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]))
    assert torch.equal(b.response_mask, T([[0, 1, 1, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0]]))
    assert b.token_type_ids is None
    assert all(t.dtype == torch.long for t in (b.input_ids, b.attention_mask, b.response_mask))
    assert b.num_tokens == 9


def test_left_padding():
    b = pad_sequences([A, B, C], 99, "left")
    assert torch.equal(b.input_ids, T([[99, 99, 5, 6, 7], [8, 9, 10, 11, 12], [99, 99, 99, 99, 13]]))
    assert torch.equal(b.attention_mask, T([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]))
    assert torch.equal(b.response_mask, T([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1]]))


def test_pad_to_multiple_of():
    b = pad_sequences([A, B], PAD, "right", pad_to_multiple_of=4)
    assert b.input_ids.shape == (2, 8)
    assert torch.equal(b.input_ids[1], T([8, 9, 10, 11, 12, 0, 0, 0]))
    b = pad_sequences([A, B], PAD, "left", pad_to_multiple_of=4)
    assert torch.equal(b.input_ids[0], T([0, 0, 0, 0, 0, 5, 6, 7]))
    assert torch.equal(b.response_mask[0], T([0, 0, 0, 0, 0, 0, 1, 1]))
    # already a multiple: unchanged width
    assert pad_sequences([A, B], PAD, pad_to_multiple_of=5).input_ids.shape == (2, 5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_type_ids(side):
    x = TokenizedSequence([101, 7, 102, 8, 102], response_start=3, token_type_ids=[0, 0, 0, 1, 1])
    y = TokenizedSequence([101, 9, 102], response_start=1, token_type_ids=[0, 0, 0])
    b = pad_sequences([x, y], PAD, side)
    expect = [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert torch.equal(b.token_type_ids, T(expect))
    ids = [[101, 7, 102, 8, 102], [101, 9, 102, 0, 0] if side == "right" else [0, 0, 101, 9, 102]]
    assert torch.equal(b.input_ids, T(ids))


def test_pair_collator_chosen_first_then_rejected():
    pairs = [TokenizedPair(A, C, margin=1.5), TokenizedPair(B, A)]
    batch = PairCollator(pad_id=PAD)(pairs)
    assert isinstance(batch, PairBatch) and batch.num_pairs == 2
    assert torch.equal(batch.sequences.input_ids,
                       T([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 0, 0, 0, 0], [5, 6, 7, 0, 0]]))
    assert torch.equal(batch.sequences.response_mask,
                       T([[0, 1, 1, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0], [0, 1, 1, 0, 0]]))
    assert batch.margin.dtype == torch.float32 and torch.equal(batch.margin, torch.tensor([1.5, 0.0]))


def test_pair_collator_left_padding_and_multiple():
    batch = PairCollator(pad_id=7, padding_side="left", pad_to_multiple_of=8)([TokenizedPair(A, C)])
    assert torch.equal(batch.sequences.input_ids, T([[7, 7, 7, 7, 7, 5, 6, 7], [7, 7, 7, 7, 7, 7, 7, 13]]))
    assert torch.equal(batch.sequences.attention_mask, T([[0] * 5 + [1] * 3, [0] * 7 + [1]]))
    moved = batch.to("cpu")
    assert isinstance(moved, PairBatch) and torch.equal(moved.sequences.input_ids, batch.sequences.input_ids)
    assert moved.sequences.token_type_ids is None


def test_errors():
    with pytest.raises(ValueError, match="padding_side"):
        pad_sequences([A], PAD, "middle")
    with pytest.raises(ValueError, match="at least one"):
        pad_sequences([], PAD)
    with pytest.raises(ValueError, match="at least one"):
        PairCollator(PAD)([])
    with pytest.raises(ValueError, match="pad"):
        pad_sequences([A], None)
    with pytest.raises(ValueError, match="token_type_ids"):
        pad_sequences([A, TokenizedSequence([1, 2], 1, [0, 1])], PAD)


def test_encoder_output_through_collator():
    tok = bert_tokenizer()
    enc = SequenceEncoder(tok, 32, is_encoder=True)
    pairs = tokenize_pairs(enc, [PreferenceExample("a question", "a good answer", "bad", 2.0),
                                 PreferenceExample("", "only a response here", "x")])
    batch = PairCollator(tok.pad_token_id)(pairs)
    seqs = [pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected]
    assert batch.sequences.attention_mask.sum(1).tolist() == [len(s.input_ids) for s in seqs]
    assert batch.sequences.response_mask.sum(1).tolist() == [len(s.input_ids) - s.response_start for s in seqs]
    for row, s in enumerate(seqs):
        assert batch.sequences.input_ids[row, :len(s.input_ids)].tolist() == s.input_ids
        assert batch.sequences.token_type_ids[row, :len(s.input_ids)].tolist() == s.token_type_ids
    assert batch.margin.tolist() == [2.0, 0.0]
