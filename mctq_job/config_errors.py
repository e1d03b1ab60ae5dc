"""The wording of configuration errors: each pydantic validation error of
:class:`mctq_job.config.Config` as one sentence naming the key, the value given and what the key
accepts (its description in the schema), with a near-miss suggestion for an unknown key."""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import ValidationError

from .config import NESTED_MODELS, Config
from .config_file import json_kind


def problems(exc: ValidationError) -> list[str]:
    """One sentence per key at fault, in pydantic's order."""
    return [describe(err) for err in _dedupe([dict(err) for err in exc.errors()])]


def _dedupe(errors: list[dict]) -> list[dict]:
    """One message per key: unions and nested models can report a key several times."""
    seen, kept = set(), []
    for err in errors:
        key = _key_name(err["loc"])
        if key not in seen:
            seen.add(key)
            kept.append(err)
    return kept


def _key_name(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not isinstance(part, int)) or "(top level)"


def _field_for(loc: tuple) -> Any:
    model: Any = Config
    field = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = NESTED_MODELS.get(str(part)) if model is Config else None
    return field


def _allowed_keys(loc: tuple) -> list[str]:
    model = NESTED_MODELS.get(str(loc[0]), Config) if len(loc) > 1 else Config
    return list(model.model_fields)


def describe(err: dict) -> str:
    """One sentence naming the key, the value given and what would be accepted."""
    loc, kind = err["loc"], err["type"]
    key = _key_name(loc)
    if kind == "missing":
        field = _field_for(loc)
        return f"required key '{key}' is missing: {field.description if field else ''}".rstrip(": ")
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    given = f"got {_render(err.get('input'))} ({json_kind(err.get('input'))})"
    if kind == "value_error" and not loc:  # a check across keys: its message names them
        return err["msg"].removeprefix("Value error, ")
    if kind == "value_error" and _field_for(loc) is None:
        return f"key '{key}': {err['msg'].removeprefix('Value error, ')}"
    field = _field_for(loc)
    accepted = field.description if field is not None and field.description else err["msg"]
    reason = err["msg"].removeprefix("Value error, ")
    return f"key '{key}': {reason[0].lower() + reason[1:]}, {given}. Accepted: {accepted}"


def _unknown_key_message(loc: tuple) -> str:
    name = str(loc[-1])
    allowed = _allowed_keys(loc)
    near = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6) or [
        k for k in allowed if k.lower() == name.lower()
    ]
    hint = f"; did you mean '{near[0]}'?" if near else ""
    where = f"{loc[0]}." if len(loc) > 1 and str(loc[0]) in NESTED_MODELS else ""
    return f"unknown key '{where}{name}'{hint} Accepted keys: {', '.join(allowed)} (names are case sensitive)"


def _render(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
