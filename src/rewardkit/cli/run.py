"""The commands' bodies: a checked config in, a library call, a summary line out. Heavy imports happen inside
each command, so `rewardkit --help` stays fast."""

from __future__ import annotations

import dataclasses
import logging
import os

from rewardkit.config import ConfigError
from rewardkit.io import json_line

log = logging.getLogger("rewardkit")


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


def _precision(judge) -> str:
    from rewardkit.precision import precision_name

    return precision_name(getattr(judge, "bf16", False))


def _score(cfg) -> int:
    from rewardkit.apps import score_file

    scorer = _scorer(cfg)
    _summary(cfg, score_file(cfg.data.path, cfg.output, scorer, columns=cfg.data.columns, normalize=cfg.normalize),
             scorer)
    return 0


def _summary(cfg, report, scorer) -> None:
    """The one-line JSON summary of score, rank, filter and make-pairs."""
    print(json_line({"output": cfg.output, **report.to_dict(), **({"precision": _precision(scorer)} if scorer else {})}))


def _rows_app(cfg) -> int:
    """rank, filter, make-pairs: stream the rows through the app, print a one-line JSON summary."""
    from rewardkit import apps

    kw = dict(columns=cfg.data.columns, normalize=cfg.normalize, chunk_rows=cfg.chunk_rows)
    if cfg.COMMAND == "filter":
        kw.update(threshold=cfg.threshold, top_percent=cfg.top_percent)
    elif cfg.COMMAND == "make-pairs":
        kw.update(strategy=cfg.strategy, min_margin=cfg.min_margin, seed=cfg.seed)
    run = {"rank": apps.rank_file, "filter": apps.filter_file, "make-pairs": apps.make_pairs_file}[cfg.COMMAND]
    scorer = _scorer(cfg)
    _summary(cfg, run(cfg.data.path, cfg.output, scorer, **kw), scorer)
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
        body_timeout=cfg.body_timeout, header_timeout=cfg.header_timeout, drain_timeout=cfg.drain_timeout,
        max_connections=cfg.max_connections,
        batch=BatchSettings(s.batch_size, s.max_tokens, cfg.max_wait_ms, cfg.max_queue))
    run_server(models, settings, host=cfg.host, port=cfg.port, device=s.device, max_length=cfg.data.max_length,
               access_log=cfg.access_log, bf16=s.bf16)
    return 0
