"""Padding-free packing: several sequences per row, each with its own positions and attention block.

Two layouts:
  plain          row = [seq a][seq b][seq c]...  every sequence attends only to itself (causal for decoders,
                 bidirectional for encoders); positions restart at 0 per sequence.
  shared prompt  row = [prompt][chosen][rejected]...  (causal backbones only) the prompt is computed ONCE;
                 rejected tokens attend to the prompt and to themselves but never to chosen, and their
                 positions continue from the prompt's end, so both responses see exactly what they would
                 see in two separate sequences.
  prompt group   row = [prompt][response 1]...[response k]...  (scoring, causal only) the same, for k responses
                 to one prompt (Best-of-N files, a pair's two sides, PPO's samples per prompt): each response
                 attends to the prompt and to itself only.
Each token carries (group, part): part 0 is the prompt (or a lone sequence), part j the j-th response. Attention
is allowed iff same group, key not after query (causal), and not (key in an earlier response than the query's).
Encoders drop the causal condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardkit.batches import PackedBatch, PairBatch
from rewardkit.data.tokenize import TokenizedPair, TokenizedSequence

PROMPT, CHOSEN, REJECTED = 0, 1, 2
# Largest prompt-group unit `prompt_groups` builds: a unit's attention grows with its square, so a prompt shared
# by many long responses is split into several units rather than one huge one.
SHARED_UNIT_MAX = 1024
PAD_UNIT = 64  # longest padding unit of a rounded flat row (`rounded_width`)
# Widths per power of two a flat row is rounded up to on CPU (`rounded_width`): at most 1/16 more tokens. MiniLM,
# 400 HH pairs on an AMX CPU: loop 23.7-24.0 s at 16 or 32 steps, 25.8 at 8, 26.3 at 4, 27.2-27.7 unrounded.
CPU_ROUND_STEPS = 16


@dataclass
class _Segment:
    """One packed unit: a lone sequence, or a prompt + chosen + rejected triple."""

    ids: list[int]
    positions: list[int]
    parts: list[int]
    types: list[int] | None
    # (sequence number, first offset, last offset, response start offset, last prompt token offset)
    reads: list[tuple[int, int, int, int, int]]


def _lone(seq: TokenizedSequence, number: int) -> _Segment:
    n = len(seq.input_ids)
    return _Segment(list(seq.input_ids), list(range(n)), [PROMPT] * n, seq.token_type_ids,
                    [(number, 0, n - 1, seq.response_start, max(seq.response_start - 1, 0))])


def shared_prompt_length(pair: TokenizedPair) -> int:
    """Tokens of prompt the pair's two sequences share and a shared-prompt unit computes once; 0 where there is
    none (no prompt, or truncation cut the two prompts differently: the pair is then laid out plain)."""
    c, r = pair.chosen, pair.rejected
    p = min(c.response_start, r.response_start)
    return p if p > 0 and c.input_ids[:p] == r.input_ids[:p] else 0


def _shared(pair: TokenizedPair, chosen_no: int, rejected_no: int) -> _Segment | None:
    """[prompt][chosen][rejected] (training's shared prompt), or None where the two share no prompt."""
    p = shared_prompt_length(pair)
    return _prompt_unit([pair.chosen, pair.rejected], [chosen_no, rejected_no], p) if p else None


def _prompt_unit(seqs: list[TokenizedSequence], numbers: list[int], p: int) -> _Segment:
    """[prompt][response 1]...[response k] of sequences whose first `p` tokens are the same (computed once);
    a sequence's tokens after those are its part, its prompt's tail included when its prompt is longer."""
    ids, positions, parts, reads = list(seqs[0].input_ids[:p]), list(range(p)), [PROMPT] * p, []
    for j, (s, number) in enumerate(zip(seqs, numbers), start=1):
        start, n = len(ids), len(s.input_ids) - p
        at = lambda x: x if x < p else start + x - p  # noqa: E731  (position in s -> offset in the unit)
        ids += s.input_ids[p:]
        positions += range(p, p + n)
        parts += [j] * n
        reads.append((number, 0, start + n - 1, at(s.response_start), at(max(s.response_start - 1, 0))))
    return _Segment(ids, positions, parts, None, reads)


def prompt_groups(seqs: list[TokenizedSequence], causal: bool, max_unit: int = SHARED_UNIT_MAX) -> list[list[int]]:
    """Indices of `seqs` in units for `pack_sequences(groups=...)`: on a causal model, sequences with the same
    prompt tokens and a non-empty response go together (input order kept), a unit holding at most `max_unit`
    tokens (the prompt once) unless one sequence alone is longer; every other sequence is a unit of its own.
    Each response then sees exactly the tokens and positions it would see alone."""
    if not causal:
        return [[i] for i in range(len(seqs))]
    units: list[list[int]] = []
    open_unit: dict[tuple[int, ...], tuple[int, int]] = {}  # prompt tokens -> (unit index, its tokens)
    for i, s in enumerate(seqs):
        p = s.response_start
        if p <= 0 or p >= len(s.input_ids):
            units.append([i])
            continue
        key = tuple(s.input_ids[:p])
        u, size = open_unit.get(key, (-1, 0))
        if u >= 0 and size + len(s.input_ids) - p <= max_unit:
            units[u].append(i)
            open_unit[key] = (u, size + len(s.input_ids) - p)
        else:
            units.append([i])
            open_unit[key] = (len(units) - 1, len(s.input_ids))
    return units


def unit_tokens(seqs: list[TokenizedSequence], unit: list[int]) -> int:
    """Row tokens of one `prompt_groups` unit: the prompt once, then each response."""
    p = seqs[unit[0]].response_start if len(unit) > 1 else 0
    return p + sum(len(seqs[i].input_ids) - p for i in unit)


def _first_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `sizes` grouped into bins of `capacity`."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        j = next((k for k, f in enumerate(free) if f >= sizes[i]), None)
        if j is None:
            rows.append([])
            free.append(capacity)
            j = len(rows) - 1
        rows[j].append(i)
        free[j] -= sizes[i]
    return rows


def _unit_mask(s: _Segment, causal: bool) -> torch.Tensor | None:
    """(n, n) attention pattern of a shared-prompt unit; None for a lone sequence (plain causal/full)."""
    if max(s.parts) < REJECTED:
        return None
    part = torch.tensor(s.parts)
    allowed = ~((part.unsqueeze(1) > part.unsqueeze(0)) & (part.unsqueeze(0) > PROMPT))  # no earlier response
    return allowed & torch.ones(len(part), len(part), dtype=torch.bool).tril() if causal else allowed


def rounded_width(tokens: int, steps: int = CPU_ROUND_STEPS) -> int:
    """`tokens` rounded up to one of `steps` widths per power of two (a multiple of at least 8): at most
    1/steps more tokens, or 7. `steps` a power of two; 0 leaves `tokens` as it is.

    Why: oneDNN (PyTorch's CPU matmuls) compiles a kernel for every new matrix shape, 3-4 ms for a linear layer
    on an AMX CPU, and a flat row's token count is new at nearly every step; rounded, a few dozen widths recur."""
    if steps <= 0 or tokens <= 0:
        return tokens
    multiple = max(8, 1 << max(tokens.bit_length() - steps.bit_length(), 0))
    return -(-tokens // multiple) * multiple


def flat_round_steps(device: torch.device | str) -> int:
    """`round_steps` for flat rows computed on `device`: CPU_ROUND_STEPS on CPUs; 0 elsewhere (CUDA's GEMMs
    compile nothing per shape, so padding would only cost)."""
    return CPU_ROUND_STEPS if torch.device(device).type == "cpu" else 0


def _pack(segments: list[_Segment], n_seqs: int, pad_id: int, causal: bool, row_length: int | None,
          rows: list[list[int]] | None = None, flat: bool = False, round_steps: int = 0) -> PackedBatch:
    """Lay segments into rows: one row without padding between units (`flat`; with `round_steps`, padding
    after them up to `rounded_width`, as one more unit that nothing reads), the given `rows` (segment
    indices), or first-fit decreasing."""
    if flat:
        rows = [list(range(len(segments)))]
        row_length = rounded_width(sum(len(s.ids) for s in segments), round_steps)
    if rows is None:
        width = max(row_length or 0, max(len(s.ids) for s in segments))
        rows = _first_fit([len(s.ids) for s in segments], width)
    else:
        width = max(row_length or 0, max(sum(len(segments[i].ids) for i in row) for row in rows))
    R, L = len(rows), width
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    group = torch.full((R, L), -1, dtype=torch.long)
    part = torch.zeros((R, L), dtype=torch.long)
    with_types = segments[0].types is not None
    types = torch.zeros((R, L), dtype=torch.long) if with_types else None
    resp = torch.full((R, L), -1, dtype=torch.long)
    last = torch.empty(n_seqs, dtype=torch.long)
    first = torch.empty(n_seqs, dtype=torch.long)
    prompt_end = torch.empty(n_seqs, dtype=torch.long)
    real = 0
    for r, members in enumerate(rows):
        off = 0
        for i in members:
            s = segments[i]
            n = len(s.ids)
            ids[r, off:off + n] = torch.tensor(s.ids)
            pos[r, off:off + n] = torch.tensor(s.positions)
            group[r, off:off + n] = i
            part[r, off:off + n] = torch.tensor(s.parts)
            if types is not None:
                types[r, off:off + n] = torch.tensor(s.types)
            for number, f, l, rs, pe in s.reads:
                first[number] = r * L + off + f
                prompt_end[number] = r * L + off + pe
                last[number] = r * L + off + l
                resp[r, off + rs:off + l + 1] = number
            real += n
            off += n
    if flat:  # attention stays inside each unit through `units`; no (L, L) mask is ever built
        starts = [0]
        for seg in segments:
            starts.append(starts[-1] + len(seg.ids))
        units = [(a, b, _unit_mask(seg, causal)) for a, b, seg in zip(starts[:-1], starts[1:], segments)]
        # The padding: units of at most PAD_UNIT tokens (one attention shape, little wasted attention), at
        # position 0, attending only to themselves.
        units += [(a, min(a + PAD_UNIT, L), None) for a in range(starts[-1], L, PAD_UNIT)]
        varlen = causal and all(u[2] is None for u in units)
        return PackedBatch(ids, pos, None, last, first, resp, prompt_end, types, real, varlen, units)
    same = group.unsqueeze(2) == group.unsqueeze(1)  # (R, Lq, Lk)
    allowed = same & (group.unsqueeze(2) >= 0)
    if causal:
        allowed &= torch.ones(L, L, dtype=torch.bool).tril()
    allowed &= ~((part.unsqueeze(2) > part.unsqueeze(1)) & (part.unsqueeze(1) > PROMPT))  # no earlier response
    # Pad queries attend to themselves only: an all-masked row would make SDPA return NaN.
    allowed |= torch.eye(L, dtype=torch.bool) & (group < 0).unsqueeze(2)
    varlen = causal and not (part > CHOSEN).any()
    return PackedBatch(ids, pos, allowed.unsqueeze(1), last, first, resp, prompt_end, types, real, bool(varlen))


def pack_sequences(seqs: list[TokenizedSequence], pad_id: int, *, causal: bool,
                   row_length: int | None = None, flat: bool = False, round_steps: int = 0,
                   groups: list[list[int]] | None = None) -> PackedBatch:
    """Pack sequences into as few rows as first-fit decreasing finds, or into one padding-free row
    (`flat`); rewards keep input order. `groups` (`prompt_groups`): units of sequences sharing a prompt,
    computed once; None = every sequence alone."""
    units = groups if groups is not None else [[i] for i in range(len(seqs))]
    segments = [_prompt_unit([seqs[i] for i in g], g, seqs[g[0]].response_start) if len(g) > 1
                else _lone(seqs[g[0]], g[0]) for g in units]
    return _pack(segments, len(seqs), pad_id, causal, row_length, flat=flat, round_steps=round_steps)


@dataclass
class PackedPairCollator:
    """`list[TokenizedPair]` -> `PairBatch` whose `sequences` is a `PackedBatch`.

    Sequence numbers follow `PairCollator`: chosen of pair i is i, rejected is B + i.
    shared_prompt (causal backbones only): `[prompt][chosen][rejected]` per pair, prompt computed once.
    flat: every unit in one padding-free row, attention kept inside units per unit (segment attention).
    """

    pad_id: int
    causal: bool
    shared_prompt: bool = False
    row_length: int | None = None
    flat: bool = False
    round_steps: int = 0  # flat rows: padded up to `rounded_width(tokens, round_steps)`; 0 = not at all

    def __post_init__(self):
        if self.shared_prompt and not self.causal:
            raise ValueError("shared-prompt packing needs a causal backbone: an encoder's prompt attends to the response")

    def __call__(self, items: list[TokenizedPair] | list[tuple[TokenizedPair, ...]]) -> PairBatch:
        """Pairs (packed first-fit here), or rows of pairs already laid out by `PackedBatchSampler`."""
        given_rows = bool(items) and isinstance(items[0], tuple)
        pairs = [p for row in items for p in row] if given_rows else list(items)  # type: ignore[union-attr]
        b = len(pairs)
        segments: list[_Segment] = []
        owner: list[int] = []  # pair index of each segment
        for i, p in enumerate(pairs):
            seg = _shared(p, i, b + i) if self.shared_prompt else None
            new = [seg] if seg else [_lone(p.chosen, i), _lone(p.rejected, b + i)]
            segments.extend(new)
            owner.extend([i] * len(new))
        rows = None
        if given_rows:
            starts = [0]
            for row in items:
                starts.append(starts[-1] + len(row))
            rows = [[k for k, o in enumerate(owner) if starts[r] <= o < starts[r + 1]] for r in range(len(items))]
        packed = _pack(segments, 2 * b, self.pad_id, self.causal, self.row_length, rows,
                       flat=self.flat and not given_rows, round_steps=self.round_steps)
        return PairBatch(packed, torch.tensor([p.margin for p in pairs], dtype=torch.float32))  # type: ignore[arg-type]


def unit_length(pair: TokenizedPair, shared_prompt: bool) -> int:
    """Row tokens one pair occupies: prompt + both responses when the prompt is shared, else both sequences."""
    seg = _shared(pair, 0, 1) if shared_prompt else None
    return len(seg.ids) if seg else len(pair.chosen.input_ids) + len(pair.rejected.input_ids)


class RowDataset:
    """Pairs indexed by an int (one pair) or by a tuple of ints (one packed row of pairs)."""

    def __init__(self, pairs: list[TokenizedPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int | tuple[int, ...]) -> TokenizedPair | tuple[TokenizedPair, ...]:
        return tuple(self.pairs[i] for i in idx) if isinstance(idx, tuple) else self.pairs[idx]
