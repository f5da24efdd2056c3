"""The scoring device, checked by `validate()` before any model loads: a typo or a GPU this machine lacks fails
in one line naming the key, not in a traceback after the weights have loaded."""

from __future__ import annotations

from rewardkit.config.schema import ConfigError


def check_device(device: str, key: str) -> None:
    """`device` parses as a torch device and exists here (CUDA built and visible, the index in range)."""
    import torch  # here, not at import: `rewardkit --help` stays fast

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{key}: {device!r} is not a torch device ({e})") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        available = (torch.backends.mps.is_available if dev.type == "mps"
                     else getattr(getattr(torch, dev.type, None), "is_available", None))
        if available is None or not available():
            raise ConfigError(f"{key}: {device!r}: no {dev.type} device here")
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: {device!r}: no CUDA device here (torch {torch.__version__}, "
                          f"{'built without CUDA' if torch.version.cuda is None else 'none visible'}); use cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
