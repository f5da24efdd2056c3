"""Which float precision a forward runs in: bf16 autocast where the device computes bf16 in hardware, fp32
elsewhere (CPU autocast without AVX512-BF16/AMX emulates bf16 and is several times slower than fp32).

Training (`train.bf16`: null = bf16 where native) saves what it ran in; commands that score (eval, calibrate,
score, rank, filter, make-pairs, serve) take `scoring.bf16`: true, false, or null = `resolve_bf16`'s choice, the
training precision where the device has it natively. `bench/precision_agreement.py` measures what bf16 changes
against fp32 on held-out pairs (pairs flipped, largest score difference), the numbers the README quotes.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")  # the CPU flags (Linux); elsewhere unreadable: fp32


def bf16_native(device: torch.device | str | None = None) -> bool:
    """True where bf16 matmuls run in hardware on `device`: a bf16-capable GPU, or a CPU with AVX512-BF16 /
    AMX. `device=None`: the GPU if there is one (what training picks), else the CPU."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_bf16(bf16: bool | None, device: torch.device | str | None = None, trained: str | None = None) -> bool:
    """An explicit true/false as given; None (the default) = bf16 where it is native on `device` and the model
    was trained in bf16 (`trained`: the saved `rewardkit.precision`; None for a model that does not say).
    Scoring a model trained in fp32 under bf16 flipped 3% of held-out pairs (README), so such models, and
    models that do not say how they were trained, are scored in fp32."""
    if bf16 is not None:
        return bool(bf16)
    return trained == "bf16" and bf16_native(device)


def precision_name(bf16: bool) -> str:
    """"bf16" (bf16 autocast, fp32 weights) or "fp32": what commands report they used."""
    return "bf16" if bf16 else "fp32"
