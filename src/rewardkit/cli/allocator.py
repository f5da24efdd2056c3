"""tcmalloc or jemalloc under the `rewardkit` command when one is installed (Linux): CPU training 1.1-1.3x faster.

PyTorch asks for every CPU tensor with posix_memalign. glibc (2.36 measured) gives large ones fresh mmaps,
faulted in page by page each time, and reuses its freed aligned blocks poorly, so a training step faults its
activations in again and the heap fragments. Measured on this project's 2-core AMX VM (README, "Memory
allocator"): SmolLM2 48 pairs, loop 23.8-25.1 s with glibc against 18.6-18.8 s with tcmalloc, peak RSS 5.1 against
3.9 GB; glibc's own tunables (no mmap, no trim, one arena, huge pages) did not come near it.

An allocator has to be in place before the process allocates anything, so the `rewardkit` script re-executes
itself once, at its very start and before torch is imported, with the library in LD_PRELOAD (as Intel's PyTorch
launcher does): a fresh interpreter, the same arguments, the same pid. Which library: REWARDKIT_MALLOC (a
library file, or `system` for the C library's own), else the first found of tcmalloc_minimal, tcmalloc and
jemalloc, each looked for in the Python environment's lib/ (where `make install` unpacks tcmalloc, and where
conda installs gperftools or jemalloc) and then in the system's library path. Every command, `serve` included
(bench/soak.py, MiniLM, 64 clients for 2 minutes: 54.3 against 38.3 requests/s, RSS flat at 636-639 MB against
485-546 MB with glibc). Library users calling `train()` from Python start the process themselves:
TCMALLOC_RELEASE_RATE=0 LD_PRELOAD=<library> python ... gives them the same.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

from rewardkit.config import ConfigError

ENV = "REWARDKIT_MALLOC"  # a library file to preload, or one of SYSTEM
ACTIVE = "REWARDKIT_MALLOC_ACTIVE"  # set for the re-executed process: the library it was given (no second exec)
SYSTEM = ("system", "glibc", "libc", "none", "off")
NAMES = ("tcmalloc_minimal", "tcmalloc", "jemalloc")  # tcmalloc first: the faster of the two measured here
MALLOCS = ("tcmalloc", "jemalloc", "mimalloc")  # a library already in LD_PRELOAD with one of these names is kept
# tcmalloc prints a line for every allocation above 1 GiB by default; a 7B model's embedding is one.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
# A batch command keeps what tcmalloc has freed instead of returning it to the kernel, which then faults it in
# again (SmolLM2 96 pairs: 1.1 M against 2.2-2.5 M minor faults, 7.8-9.0 s against 9.7-12.7 s of kernel time,
# peak RSS +1%). The server keeps tcmalloc's default, so that a burst's memory goes back between bursts.
KEEP_FREED = {"TCMALLOC_RELEASE_RATE": "0"}
RELEASING = ("serve",)


def find_library(env: dict[str, str] | None = None) -> str | None:
    """The allocator library to preload (a path or a soname ld.so finds), or None for the C library's own."""
    env = os.environ if env is None else env
    choice = env.get(ENV, "").strip()
    if choice.lower() in SYSTEM:
        return None
    if choice:
        if not Path(choice).is_file():
            raise ConfigError(f"{ENV}={choice}: no such file (a malloc library such as libtcmalloc_minimal.so.4 "
                              f"to preload, or {ENV}=system for the C library's allocator)")
        return choice
    prefixes = dict.fromkeys(Path(p) / "lib" for p in (sys.prefix, sys.base_prefix))
    for name in NAMES:
        for lib in prefixes:
            hits = sorted(lib.glob(f"lib{name}.so*"))
            if hits:
                return str(hits[0])
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def preload_env(lib: str, env: dict[str, str], command: str | None = None) -> dict[str, str]:
    """`env` with `lib` first in LD_PRELOAD (what was there stays after it) and ACTIVE set; tcmalloc's settings
    default to QUIET, and for commands other than RELEASING to KEEP_FREED (a variable already in `env` wins)."""
    rest = env.get("LD_PRELOAD", "")
    defaults = {**QUIET, **({} if command in RELEASING else KEEP_FREED)}
    return {**defaults, **env, "LD_PRELOAD": f"{lib}:{rest}" if rest else lib, ACTIVE: lib}


def maybe_reexec(command: str | None) -> None:
    """Re-execute this process with a faster allocator preloaded, when there is one to preload; else return.
    Call before anything heavy is imported. Returns without a change on other systems than Linux, without a
    command (--help), when already re-executed, and when LD_PRELOAD already names an allocator."""
    if not sys.platform.startswith("linux") or command is None or ACTIVE in os.environ:
        return
    if any(n in os.environ.get("LD_PRELOAD", "") for n in MALLOCS):
        return
    lib = find_library()
    if lib is None:
        return
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], preload_env(lib, dict(os.environ), command))
    except OSError:  # could not start the interpreter again: go on with the allocator this process has
        return


def describe() -> str:
    """Which allocator this process runs on, for the log: the preloaded library when it is mapped, else the
    C library's (with why, when one was asked for and did not load)."""
    asked = os.environ.get(ACTIVE)
    if asked:
        mapped = _mapped(lambda p: Path(p).name.startswith(Path(asked).name)
                         or os.path.realpath(p) == os.path.realpath(asked))
    else:
        mapped = mapped_allocator()
    if mapped:
        return f"{Path(mapped).name.split('.so')[0].removeprefix('lib')} ({mapped})"
    if asked:
        return f"the C library's: {asked} was preloaded but is not mapped (ld.so could not load it)"
    return ("the C library's malloc; tcmalloc or jemalloc, when installed, trains 1.1-1.3x faster on CPU (README, "
            "'Memory allocator')")


def mapped_allocator() -> str | None:
    """The path of a tcmalloc/jemalloc/mimalloc library mapped into this process, or None."""
    return _mapped(lambda p: any(f"lib{n}" in Path(p).name for n in MALLOCS))


def _mapped(match) -> str | None:
    """The first file mapped into this process whose path `match`es, or None (Linux /proc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/") and match(fields[5]):
            return fields[5]
    return None
