"""Several processes without a launch: how batches are dealt to processes (each item once per epoch, as many
batches on every process) and shared evaluation (threads standing in for ranks score every sequence once)."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from rewardkit.data.batching import LengthGroupedBatchSampler, PackedBatchSampler, RankBatches, batch_items
from rewardkit.scoring import EvalShard, run_model, sharded_scoring

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(5, 300) for _ in range(203)]


# --------------------------------------------------------------------------- dealing batches (no launch)

def _epoch(num_processes: int, make, split: bool, epoch: int = 0) -> list[list]:
    """Every process's micro-batches of one epoch: [process][micro-batch] -> MicroBatch."""
    out = []
    for rank in range(num_processes):
        rb = RankBatches(make(), num_processes=num_processes, process_index=rank, split=split,
                         cost=LENGTHS.__getitem__, units=lambda i: i % 3, seed=5)
        rb.set_epoch(epoch)
        out.append(list(rb))
    return out


def _items(mb) -> list[int]:
    return [i for x in mb.indices for i in (x if isinstance(x, tuple) else (x,))]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", ["fixed", "grouped", "budget", "packed"])
def test_every_item_once_per_epoch_and_as_many_batches_on_every_process(kind, n):
    make = {
        "fixed": lambda: LengthGroupedBatchSampler(LENGTHS, batch_size=4 * n, seed=5, group=False),
        "grouped": lambda: LengthGroupedBatchSampler(LENGTHS, batch_size=4 * n, seqs_per_item=2, seed=5),
        "budget": lambda: LengthGroupedBatchSampler(LENGTHS, max_tokens=1500, seqs_per_item=2, seed=5),
        "packed": lambda: PackedBatchSampler(LENGTHS, row_length=600, rows_per_batch=2, seed=5),
    }[kind]
    split = kind in ("fixed", "grouped")
    for epoch in (0, 1):
        per_rank = _epoch(n, make, split, epoch)
        assert len({len(mbs) for mbs in per_rank}) == 1  # every process runs the same number of forwards
        trained = sorted(i for mbs in per_rank for mb in mbs if mb.size for i in _items(mb))
        assert trained == list(range(len(LENGTHS)))  # no item twice, none dropped
        for step in zip(*per_rank):
            assert len({mb.global_size for mb in step}) == 1
            assert sum(mb.size for mb in step) == step[0].global_size
            # loss units (here item i has i % 3): a share's own, the step's total on every process
            assert [mb.units for mb in step] == [sum(i % 3 for i in _items(mb)) if mb.size else 0 for mb in step]
            assert {mb.global_units for mb in step} == {sum(mb.units for mb in step)}
            assert all(mb.indices for mb in step)  # an empty share is a stand-in of size 0
            if split:  # equal counts (within one) per process
                assert max(mb.size for mb in step) - min(mb.size for mb in step) <= 1


def test_split_batches_are_the_one_process_global_batches():
    """N processes x batch B train on exactly the items 1 process x batch N*B does, step by step."""
    one = _epoch(1, lambda: LengthGroupedBatchSampler(LENGTHS, batch_size=8, seed=5, group=False), True)[0]
    two = _epoch(2, lambda: LengthGroupedBatchSampler(LENGTHS, batch_size=8, seed=5, group=False), True)
    assert len(one) == len(two[0]) == 26  # 203 items, 8 per global batch
    for single, (a, b) in zip(one, zip(*two)):
        assert sorted(_items(single)) == sorted(_items(a) * bool(a.size) + _items(b) * bool(b.size))
    assert sorted([two[0][-1].size, two[1][-1].size]) == [1, 2]  # 203 = 25 * 8 + 3


def test_token_budgeted_batches_are_dealt_in_balanced_groups():
    """Budgeted batches are per process; a step's batches are neighbours in token cost, so no process waits
    long for another (far closer than the sampler's own order would pair them)."""
    make = lambda: LengthGroupedBatchSampler(LENGTHS, max_tokens=1500, seqs_per_item=2, seed=5, group=False)
    cost = lambda items: sum(LENGTHS[i] for i in items)

    def spread(pairs):
        gaps = [abs(cost(a) - cost(b)) / max(cost(a), cost(b)) for a, b in pairs]
        return sum(gaps) / len(gaps)

    per_rank = _epoch(2, make, False)
    dealt = [(_items(a), _items(b)) for a, b in zip(*per_rank) if a.size and b.size]
    plain = make().batches()
    assert spread(dealt) < 0.1 < spread(list(zip(plain[0::2], plain[1::2])))


def test_one_process_passes_batches_through():
    s = LengthGroupedBatchSampler(LENGTHS, batch_size=8, seqs_per_item=2, seed=5)
    rb = RankBatches(s, seed=5)
    assert [mb.indices for mb in rb] == s.batches()
    assert all(mb.size == mb.global_size == batch_items(mb.indices) for mb in rb)


# --------------------------------------------------------------------------- shared evaluation (threads as ranks)

class _Ranks:
    """`count` threads standing in for processes: gather concatenates every rank's tensor in rank order."""

    def __init__(self, count: int):
        self.count, self.barrier, self.slots = count, threading.Barrier(count), [None] * count

    def gather(self, index: int, t: torch.Tensor) -> torch.Tensor:
        self.slots[index] = t.clone()
        self.barrier.wait()
        out = torch.cat(self.slots)
        self.barrier.wait()
        return out

    def run(self, fn):
        results, errors = [None] * self.count, []

        def work(k):
            try:
                with sharded_scoring(EvalShard(k, self.count, lambda t: self.gather(k, t))):
                    results[k] = fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=work, args=(k,)) for k in range(self.count)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("n_seqs", [1, 2, 7, 21])
def test_shared_scoring_scores_every_sequence_once_in_input_order(tiny_models, n_seqs):
    from rewardkit.data.tokenize import SequenceEncoder
    from rewardkit.models.reward_model import RewardModel

    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=0)
    enc = SequenceEncoder(tok, 64, model.is_encoder)
    seqs = [enc.encode(f"Question {i}?", "answer " * (1 + (i * 7) % 11)) for i in range(n_seqs)]
    alone = run_model(model, seqs, pad_id=tok.pad_token_id, batch_size=4)
    scored = []
    forward = model.outputs

    def counting(batch):  # sequences per forward (a packed batch reads one reward per sequence)
        scored.append(int(batch.last_index.numel()))
        return forward(batch)

    model.outputs = counting
    for count in (2, 3):
        scored.clear()
        shared = _Ranks(count).run(lambda: run_model(model, seqs, pad_id=tok.pad_token_id, batch_size=4))
        for out in shared:  # every process gets all outputs, in input order
            assert out.score.shape == (n_seqs,)
            torch.testing.assert_close(out.score, alone.score, atol=1e-5, rtol=0)
        assert sum(scored) == n_seqs + max(0, count - n_seqs)  # each once; a process with no share scores a stand-in
