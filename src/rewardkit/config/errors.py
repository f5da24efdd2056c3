"""The errors a config raises (its own module: the YAML reader and the schema both raise them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; `key` is the dotted key at fault, where one is."""

    key: str | None = None


class FieldError(ConfigError):
    """A value that fails a check; `key` is relative to the group that raised it and gains the group's
    prefix on the way up (`batch_size` -> `scoring.batch_size`)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem
