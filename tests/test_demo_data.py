"""The demo's committed preference file: parses, is big enough, has no degenerate pairs, and is exactly
what examples/make_demo_data.py writes (so the generator and the data never drift apart)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rewardkit.data.pairs import load_preferences

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "demo_data" / "prefs.jsonl"
GENERATOR = ROOT / "examples" / "make_demo_data.py"


def test_demo_data_parses_and_is_well_formed():
    examples, report = load_preferences(str(DATA), fmt="explicit")
    assert report.skipped == 0
    assert len(examples) >= 1000
    assert all(ex.prompt.strip() for ex in examples)
    assert not [ex.source for ex in examples if ex.chosen == ex.rejected]


def test_generator_reproduces_committed_file(tmp_path):
    out = tmp_path / "prefs.jsonl"
    subprocess.run([sys.executable, str(GENERATOR), "--output", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == DATA.read_bytes()
