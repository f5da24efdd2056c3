"""Typed configuration: one dataclass per command, filled from YAML plus dotted `key=value` overrides.

Every command's config is built from small groups that several commands share, so one setting has one
spelling everywhere: `model` (`model=DIR` sets model.path), `data` (`data=FILE` sets data.path; columns
are `data.columns.*`), `scoring` (batch size, token budget, device, bf16 of the scoring forwards) and
`loss` (`loss=NAME` sets loss.name). `train` keeps its own `train.batch_size` / `train.bf16`: training
micro-batches and mixed precision for forward and backward, not the scoring forwards of `scoring.*`.

Every field carries its help text in `metadata["help"]`; that text is the only source for `--help`.
Value checks that need no files live in `__post_init__` (they run on the default instance too, so they
accept it); `validate()` adds what a run needs on top (e.g. a model). Unknown keys are errors that name
the closest valid key, because a typo that silently trains with a default is the most expensive bug a
config system can have.
"""


from rewardkit.config.commands import (COMMANDS, CalibrateRunConfig, EvalRunConfig, FilterRunConfig, LossConfig,
                                       MakePairsRunConfig, RankRunConfig, ReportRunConfig, ScoreRunConfig,
                                       ServeRunConfig, TrainConfig, TrainRunConfig)
from rewardkit.config.groups import (FORMATS, LOSS_NAMES, MODEL_KINDS, SCORE_MAX_TOKENS, Columns, DataConfig, MaxLength, ModelConfig,
                                     PairsInput, RowsInput, SavedModel, ScoringConfig, Source)
from rewardkit.config.help import describe
from rewardkit.config.schema import (ConfigError, FieldError, all_keys, check_values, closest_key, flat_config,
                                     load_config, parse_override, parse_overrides, to_dict)

__all__ = ["COMMANDS", "FORMATS", "LOSS_NAMES", "MODEL_KINDS", "SCORE_MAX_TOKENS", "CalibrateRunConfig", "Columns", "ConfigError",
           "DataConfig", "EvalRunConfig", "FieldError", "FilterRunConfig", "LossConfig", "MakePairsRunConfig",
           "MaxLength", "ModelConfig", "PairsInput", "RankRunConfig", "ReportRunConfig", "RowsInput", "SavedModel",
           "ScoreRunConfig", "ScoringConfig", "Source", "ServeRunConfig", "TrainConfig", "TrainRunConfig", "all_keys",
           "check_values", "closest_key", "describe", "flat_config", "load_config", "parse_override",
           "parse_overrides", "to_dict"]
