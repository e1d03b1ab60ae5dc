"""Documentation tables generated from the code, so that a page cannot drift from it:
docs/configuration.md's table of configuration keys, from the schema of
:mod:`mctq_job.config` (``scripts/readme_tables.py`` writes it, ``tests/test_docs.py`` checks it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .config import NESTED_MODELS, Config


def keys_table_markdown() -> str:
    """The table of configuration keys in docs/configuration.md, generated from the schema."""
    rows = ["| key | required | type | accepted |", "| --- | --- | --- | --- |"]
    models: list[tuple[type[BaseModel], str]] = [(Config, ""), *((m, f"{k}.") for k, m in NESTED_MODELS.items())]
    for model, prefix in models:
        schema = model.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            rows.append(
                f"| `{prefix}{name}` | {'yes' if name in required else 'no'} | {_kind(prop)} | "
                f"{prop.get('description', '')} |"
            )
    return "\n".join(rows)


def _kind(prop: dict[str, Any]) -> str:
    """A schema property's accepted type in words, for the docs."""
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        kinds = [_kind(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " \\| ".join(kinds) + (" or null" if len(kinds) < len(prop["anyOf"]) else "")
    if prop.get("type") == "array":
        return f"array of {prop.get('minItems', '')} {_kind(prop.get('items', {}))}s".replace("  ", " ")
    return prop.get("type") or "object"
