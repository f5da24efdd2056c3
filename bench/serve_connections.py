"""What a new client gets from `rewardkit serve` while other clients hold many idle connections.

The server runs as `rewardkit serve` in its own process under a low open-file limit (`--fd-limit`, default 128);
a client process opens `--held` connections and keeps them idle for 3 s, then sends one /get_reward request on
a new connection and reports the answer's status line (or the error) and how long it took. Each held count runs
with the server's default `max_connections` (the open-file limit less 64) and with the bound lifted
(`max_connections=1000000`), so the table shows what the bound changes once the connections outnumber the
descriptors.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_connections.py                 # held 100 and 200, limit 128

This is a benchmark of behaviour, not a test: about 15 s per setting (MiniLM with a fresh value head).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_initial_model  # noqa: E402

CLIENT = r"""
import json, resource, socket, sys, time
port, held_n = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
for _ in range(held_n):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        break
time.sleep(3)
body = json.dumps({"query": ["a new client"]}).encode()
t0 = time.perf_counter()
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    answer = data.split(b"\r\n", 1)[0].decode() or "closed without an answer"
except OSError as e:
    answer = f"{type(e).__name__}: {e}"
print(json.dumps({"held": len(held), "answer": answer, "seconds": round(time.perf_counter() - t0, 2)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: Path, held: int, fd_limit: int, bound: list[str]) -> dict:
    port = free_port()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "rewardkit", "serve", str(model), "--port", str(port), *bound],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard)))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.2)
        out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(held)], capture_output=True, text=True,
                             timeout=60)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.communicate(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--fd-limit", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_initial_model("minilm", Path(tmp) / "rm")
        print(f"open-file limit of the server: {args.fd_limit}; default max_connections = {args.fd_limit - 64}")
        print("held | max_connections | new client's answer | seconds")
        for held in args.held:
            for name, bound in (("default", []), ("lifted", ["max_connections=1000000"])):
                r = run(model, held, args.fd_limit, bound)
                print(f"{r['held']} | {name} | {r['answer']} | {r['seconds']}")


if __name__ == "__main__":
    main()
