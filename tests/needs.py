"""What some tests need from the machine (a Docker engine, a browser, kubectl, the IMX500
converter), and the one rule for when it is missing: skip, saying how to get it; but under CI
(``CI`` set) or ``MCTQ_REQUIRE_<NAME>=1``, fail instead, so CI never passes by skipping."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

FALSE = ("", "0", "false", "no")


def required(name: str) -> bool:
    """True under CI or MCTQ_REQUIRE_<NAME>=1: ``name``'s tests must run."""
    return (
        os.environ.get("CI", "").lower() not in FALSE
        or os.environ.get(f"MCTQ_REQUIRE_{name.upper()}", "").lower() not in FALSE
    )


def unavailable(name: str, reason: str, remedy: str) -> NoReturn:
    """Skip (or, where ``name`` is required, fail) because ``reason``; ``remedy`` says what provides it."""
    if required(name):
        pytest.fail(
            f"CI or MCTQ_REQUIRE_{name.upper()}=1 is set, yet the {name} tests cannot run: {reason}; {remedy}",
            pytrace=False,
        )
    pytest.skip(f"{reason}; {remedy} (under CI or MCTQ_REQUIRE_{name.upper()}=1 this is a failure)")


def imx500_converter() -> str:
    """The IMX500 converter's path: MCTQ_IMXCONV, else the one `make imx500-venv` builds."""
    from pathlib import Path

    named = os.environ.get("MCTQ_IMXCONV") or str(
        Path(__file__).resolve().parent.parent / ".venv-imx500" / "bin" / "imxconv-tf"
    )
    if not os.access(named, os.X_OK):
        unavailable("imx500", f"no IMX500 converter at {named}", "make imx500-venv builds it (or set MCTQ_IMXCONV)")
    return named
