"""The server's dependencies are optional: the package, --help and the non-serving commands work without them."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'fastapi', 'uvicorn', 'starlette', 'pydantic', 'httpx', 'aiohttp'}:
            raise ImportError(f'blocked: {name}', name=name.split('.')[0])
sys.meta_path.insert(0, Block())
"""


def test_without_serve_extra():
    code = BLOCK + """
import rewardkit, rewardkit.apps, rewardkit.rlhf, rewardkit.serve
from rewardkit.cli import main
for cmd in (['--help'], ['serve', '--help'], ['rank', '--help']):
    try:
        main(cmd)
    except SystemExit as e:
        assert e.code == 0, cmd
assert main(['serve', 'some_dir']) == 2
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'rewardkit[serve]'" in out.stderr
