"""Stage ``config``: find configuration.json (an Indexed Job's ``{index}`` filled in), read
it and validate it against the schema. No TensorFlow, no file other than the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as config_mod
from .config import Config
from .context import RunContext


@dataclass(frozen=True)
class Configured:
    """The stage's value: the configuration in effect and the file it came from."""

    file: Path
    config: Config

    def summary(self) -> dict[str, Any]:
        return {"config_file": str(self.file), "config_sha256": self.config.digest()}


def run(ctx: RunContext, path: Path, overrides: dict[str, Any] | None = None) -> Configured:
    """``overrides`` (the command line's, e.g. ``max_top1_drop``) replace the file's values."""
    path = config_mod.locate(path).absolute()  # not resolve(): a ConfigMap's file is a link
    config = config_mod.load(path)
    if overrides:
        config = config.model_copy(update=overrides)
    return Configured(path, config)
