"""Rows shared by the reader and format tests: three explicit pairs, the examples they make, chat messages."""

from __future__ import annotations

from rewardkit.data.pairs import PreferenceExample

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 1.5},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "margin": 0.5},
    {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "margin": 2.0},
]
EXPECTED = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in ROWS]


def strip_source(examples):
    """The examples without their source (file, line), to compare with EXPECTED."""
    return [PreferenceExample(e.prompt, e.chosen, e.rejected, e.margin) for e in examples]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}
