"""`rewardkit` command line: parse -> config -> library call. Heavy imports happen inside commands.

Every command reads `[CONFIG.yaml] [key=value ...]` into its config class (`rewardkit.config.COMMANDS`).
The positionals and options of earlier versions (`rewardkit eval MODEL_DIR DATA --batch-size 16`) stay as
shorthands, each standing for one key (model, data, scoring.batch_size). Order: the file, then options
and positionals, then key=value overrides; later ones win.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from typing import Any

from rewardkit.cli import allocator
from rewardkit.cli.parser import COMMANDS, KIND_HELP, _parsers, build_parser
from rewardkit.cli.run import json_line
from rewardkit.config import COMMANDS as CONFIGS
from rewardkit.config import ConfigError, load_config

__all__ = ["COMMANDS", "KIND_HELP", "_parsers", "build_parser", "command_config", "entry", "json_line", "main",
           "parse_command"]

# Exit codes (README "Reliability"): 0 done, 2 bad input or options (one line on stderr naming file, row and
# field), 3 training stopped because the loss or gradients kept going non-finite. An exception may carry its
# own `exit_code`; anything else is a bug and keeps its traceback.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT / SIGTERM, what a shell reports for a killed command
OWN_SIGNALS = ("train", "serve")  # they handle SIGTERM themselves: a checkpoint, a drain


def command_config(name: str, args: argparse.Namespace) -> Any:
    """The checked config of command `name` from its parsed arguments: CONFIG.yaml (the first positional, when
    it ends in .yaml/.yml or the command has no other positionals), then the options and positionals of
    earlier versions, then key=value overrides."""
    cmd = COMMANDS[name]
    items = ([args.config] if args.config else []) + args.overrides
    path, overrides, old = None, [], []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0 and (item.endswith((".yaml", ".yml")) or not cmd.positionals):
            path = item
        else:
            old.append(item)
    given = getattr(args, "key_values", None) or []
    positionals = [(m, k) for m, k in cmd.positionals if k not in {g for g, _ in given}]  # --dpo-policy: no MODEL_DIR
    if len(old) > len(positionals):
        raise ConfigError(f"unexpected argument {old[len(positionals)]!r} (settings are key=value)")
    values = [*given, *((k, v) for (_, k), v in zip(positionals, old))]
    cfg = load_config(CONFIGS[name], path, overrides, values=values)
    cfg.validate()
    return cfg


def parse_command(argv: list[str]) -> tuple[str, argparse.Namespace, bool]:
    """(command, its parsed arguments, --debug) from a command line without the program name. `--help` and
    usage errors exit through argparse, as usual."""
    parser, commands = _parsers()
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if i is None or argv[i] not in commands or set(argv[:i]) - {"--debug"}:
        parser.parse_args(argv)  # --help, or argparse's usage error; both exit
        parser.error("a command is required")
    # Each command's own parser, so that options may come before, after or between positionals (argparse
    # cannot intermix through subparsers).
    return argv[i], commands[argv[i]].parse_intermixed_args(argv[i + 1:]), "--debug" in argv[:i]


def main(argv: list[str] | None = None) -> int:
    name, args, debug = parse_command(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rewardkit.cli").info("memory allocator: %s", allocator.describe())
    from rewardkit.data import DataError
    from rewardkit.models.positions import PositionLimit

    previous = _stop_on_sigterm() if name not in OWN_SIGNALS else _UNSET
    try:
        return COMMANDS[name].run(command_config(name, args))
    except (KeyboardInterrupt, Terminated) as e:  # outputs were written to temp files; those are gone now
        if debug:
            raise
        stopped = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"rewardkit {name}: {stopped}; no output written", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - only known kinds are turned into one line; the rest re-raise
        code = getattr(e, "exit_code", None)
        if code is None and isinstance(e, (ConfigError, DataError, FileNotFoundError, ValueError, OSError)):
            code = EXIT_BAD_INPUT
        if debug or code is None:
            raise
        if isinstance(e, PositionLimit):  # the loaders name their parameter; the user typed this key
            e = e.for_key("data.max_length")
        message = " ".join(x.strip() for x in str(e).splitlines() if x.strip())  # one line, always
        print(f"rewardkit {name}: error: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not _UNSET:  # None: a handler installed outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def entry() -> None:
    """The `rewardkit` console script and `python -m rewardkit`: `main()`, then exit.

    Before exiting, every live object is frozen out of the garbage collector (`gc.freeze`): at exit CPython
    collects every generation several times over the ~400k objects torch and transformers leave (0.7-0.8 s of
    each command's exit measured, 0.2 s after the freeze). By then the command has closed and renamed its outputs
    and finished its trackers; objects are still freed by their reference counts.

    First of all, the process may re-execute itself once with tcmalloc or jemalloc preloaded (`allocator`)."""
    try:
        first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        allocator.maybe_reexec(first if first in COMMANDS else None)
    except ConfigError as e:  # REWARDKIT_MALLOC names no file
        print(f"rewardkit: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    code = main()
    gc.freeze()
    sys.exit(code)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that temp files are removed on the way out
    (Python's default SIGTERM ends the process at once and leaves them)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


_UNSET = object()  # main() left SIGTERM alone


def _stop_on_sigterm() -> Any:
    """Make SIGTERM raise `Terminated`; returns the handler to restore (`_UNSET` where signals can't be set)."""
    if threading.current_thread() is not threading.main_thread():
        return _UNSET
    return signal.signal(signal.SIGTERM, _raise_terminated)

