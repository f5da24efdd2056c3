"""Soak test of `rewardkit serve`: 64 concurrent clients for N minutes; errors, latency and server memory.

The server runs in its own process (as in production). Clients send what PPO trainers send (one full text
per /get_reward request, back to back), with every 10th request a /v1/score of 4 pairs and every 10th a
/v1/rank of 4 candidates. After a warm-up (allocator, first forwards of every shape) the server's RSS is
sampled every second; the run ends with SIGTERM, which must drain and exit 0.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak.py --minutes 2               # MiniLM, fresh value head
    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak.py --minutes 10 --model runs/rm

Targets: 0 errors, RSS growth (end of load vs start of load) under 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import MINILM, free_port, make_texts, pct, prepare_model, wait_healthy  # noqa: E402

MAX_MINUTES = 60.0


def rss(pid: int) -> int:
    """Resident memory of the server process and its children, bytes."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def request_for(i: int, texts: list[str]) -> tuple[str, dict]:
    t = texts[i % len(texts)]
    if i % 10 == 3:
        return "/v1/score", {"items": [{"prompt": "Say something.", "response": texts[(i + k) % len(texts)]}
                                       for k in range(4)]}
    if i % 10 == 7:
        return "/v1/rank", {"prompt": "Say something.", "candidates": [texts[(i + k) % len(texts)] for k in range(4)]}
    return "/get_reward", {"query": [t], "prompts": [""], "labels": [None]}


async def load(url: str, texts: list[str], clients: int, seconds: float, pid: int | None = None,
               samples: list[tuple[float, int]] | None = None) -> dict[str, dict]:
    """Run the clients for `seconds`; per route: latencies (s) and error counts (by status or exception)."""
    stats: dict[str, dict] = {}
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=180)  # OpenRLHF's client timeout
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client(k: int) -> None:
            i = k
            while time.monotonic() < stop_at:
                route, body = request_for(i, texts)
                s = stats.setdefault(route, {"lat": [], "errors": {}})
                t0 = time.perf_counter()
                try:
                    async with session.post(url + route, json=body) as r:
                        await r.read()
                        why = None if r.status == 200 else str(r.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    why = type(e).__name__
                if why is None:
                    s["lat"].append(time.perf_counter() - t0)
                else:
                    s["errors"][why] = s["errors"].get(why, 0) + 1
                i += clients

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                samples.append((time.monotonic(), rss(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(*(client(k) for k in range(clients)), *([sampler()] if samples is not None else []))
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help=f"load duration (at most {MAX_MINUTES:g})")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--model", help=f"reward model folder (default: {MINILM} with a fresh head)")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of load before measuring")
    p.add_argument("--words", type=int, nargs=2, default=(40, 120), metavar=("MIN", "MAX"))
    p.add_argument("--server-args", nargs="*", default=[], metavar="ARG", help="extra `rewardkit serve` flags")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args()
    if not 0 < args.minutes <= MAX_MINUTES:
        p.error(f"--minutes must be in (0, {MAX_MINUTES:g}]")

    texts = make_texts(1024, tuple(args.words), seed=1)
    random.Random(0).shuffle(texts)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prepare_model(args.model, Path(tmp) / "rm")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "rewardkit.cli", "serve", model_dir, "--port", str(port), *args.server_args]
        log = open(Path(tmp) / "server.log", "w+")  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                                  stderr=log, text=True)
        try:
            asyncio.run(wait_healthy(url, server))
            rss_idle = rss(server.pid)
            asyncio.run(load(url, texts, args.clients, args.warmup))
            samples: list[tuple[float, int]] = []
            started = time.monotonic()
            stats = asyncio.run(load(url, texts, args.clients, args.minutes * 60, server.pid, samples))
            seconds = time.monotonic() - started
            samples.append((time.monotonic(), rss(server.pid)))
            t0 = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
            stop_s = time.monotonic() - t0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            log.seek(0)
            err = log.read()
            log.close()

    # Start/end: the median of the first/last 10 samples, so one GC moment does not decide the verdict.
    first = sorted(r for _, r in samples[:10])[len(samples[:10]) // 2]
    last = sorted(r for _, r in samples[-10:])[len(samples[-10:]) // 2]
    peak = max(r for _, r in samples)
    growth = 100 * (last - first) / first
    total = sum(len(s["lat"]) for s in stats.values())
    errors = sum(sum(s["errors"].values()) for s in stats.values())
    mb = 2 ** 20
    print(f"{args.clients} clients, {args.minutes:g} min after {args.warmup:g} s warm-up, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; model {args.model or MINILM}")
    print(f"{'route':<12} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for route, s in sorted(stats.items()):
        print(f"{route:<12} {len(s['lat']):9d} {len(s['lat']) / seconds:7.1f} {pct(s['lat'], 0.5):8.1f} "
              f"{pct(s['lat'], 0.99):8.1f} {sum(s['errors'].values()):7d}  {s['errors'] or ''}")
    every = [x for s in stats.values() for x in s["lat"]]
    print(f"{'all':<12} {total:9d} {total / seconds:7.1f} {pct(every, 0.5):8.1f} {pct(every, 0.99):8.1f} {errors:7d}")
    print(f"server RSS: idle {rss_idle / mb:.0f} MB, start of load {first / mb:.0f} MB, end {last / mb:.0f} MB "
          f"({growth:+.1f}%), peak {peak / mb:.0f} MB")
    print(f"SIGTERM: exit code {server.returncode} after {stop_s:.1f} s"
          + ("" if "Traceback" not in err else " (with a traceback)"))
    verdict = errors == 0 and growth < 5 and server.returncode == 0
    print("PASS" if verdict else "FAIL", "(targets: 0 errors, RSS growth < 5%, exit 0 on SIGTERM)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "clients": args.clients, "minutes": args.minutes, "requests": total, "errors": errors,
            "p50_ms": pct(every, 0.5), "p99_ms": pct(every, 0.99), "rss_start_mb": first / mb,
            "rss_end_mb": last / mb, "rss_peak_mb": peak / mb, "rss_growth_pct": growth,
            "sigterm_exit": server.returncode, "sigterm_seconds": stop_s,
            "rss_samples": [(round(t - samples[0][0], 1), r) for t, r in samples]}, indent=1))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
