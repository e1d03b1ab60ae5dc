"""The hostile model of issue 18 for the recovery tests, from the example that builds it
(examples/hostile.py): a digits classifier whose concatenation joins a 1-channel branch scaled
x1024 with a normal 16-channel one, compensated in the BatchNormalization after it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_example():
    spec = importlib.util.spec_from_file_location("hostile_example", ROOT / "examples" / "hostile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hostile = _load_example()
hostile_model = hostile.hostile_model
