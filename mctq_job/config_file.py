"""Reading configuration.json: which file (the Kubernetes ``{index}`` placeholder), its text as
editors save it, and its JSON, each failure a ConfigError naming the file.

No pydantic here: the schema is :mod:`mctq_job.config`'s, the wording of its validation errors
:mod:`mctq_job.config_errors`'. The command line imports this module for the default file name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_NAME = "configuration.json"
INDEX_PLACEHOLDER = "{index}"
INDEX_ENV = "JOB_COMPLETION_INDEX"


def locate(path: Path, environ: dict[str, str] | None = None) -> Path:
    """The configuration file to read. ``{index}`` in the path is replaced by Kubernetes'
    ``JOB_COMPLETION_INDEX``, so each pod of an Indexed Job reads its own configuration."""
    text = str(path)
    if INDEX_PLACEHOLDER not in text:
        return path
    index = (os.environ if environ is None else environ).get(INDEX_ENV, "")
    if not index.isdigit():
        raise ConfigError(
            f"the configuration path {text} contains {INDEX_PLACEHOLDER} but {INDEX_ENV} is "
            f"{index!r}; accepted: {INDEX_ENV} set to a completion index (0, 1, 2, ...), as an "
            f"Indexed Job sets it",
            file=text,
        )
    return Path(text.replace(INDEX_PLACEHOLDER, str(int(index))))


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the file at ``path``; a ConfigError naming the file, and the line or
    key where there is one, when it is missing, unreadable, not UTF-8, not JSON, repeats a key or
    is not an object."""
    if not path.exists():
        raise ConfigError(
            f"configuration file not found: {path}; pass --config PATH or run where {DEFAULT_CONFIG_NAME} is",
            file=str(path),
        )
    if not path.is_file():
        raise ConfigError(
            f"configuration path is not a file: {path}; pass the path of a JSON file with --config", file=str(path)
        )
    try:
        text = read_text(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", file=str(path)) from None
    except UnicodeError as exc:
        raise ConfigError(str(exc), file=str(path)) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            file=str(path),
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}: key '{exc.args[0]}' appears more than once; keep one", file=str(path), key=exc.args[0]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f'{path}: expected a JSON object {{"key": value, ...}} at the top level, got {json_kind(data)}',
            file=str(path),
        )
    return data


#: Byte-order marks of encodings an editor may have used instead of UTF-8.
_OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def read_text(path: Path) -> str:
    """A JSON file as editors save it: UTF-8 with or without a byte-order mark, LF or CRLF line
    ends. Any other encoding is a UnicodeError whose message names the file and what to do."""
    data = path.read_bytes()
    for bom, name in _OTHER_BOMS:
        if data.startswith(bom):
            raise UnicodeError(
                f"{path} is encoded as {name}; expected UTF-8 (with or without a byte-order mark): save it as UTF-8"
            )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnicodeError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"expected UTF-8 (with or without a byte-order mark): save it as UTF-8"
        ) from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def json_kind(value: Any) -> str:
    """What a JSON value is, in words: "an integer", "null", ..."""
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return kinds.get(type(value), type(value).__name__)
