"""`edge-app config --defaults`: the configuration reference, written from the settings' own defaults and
descriptions, so that it cannot drift from the code (docs/configuration.md holds its output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from edge_app.config import Settings

COMMENT_COLUMN = 25


def defaults_toml() -> str:
    """Every section and key with its default and description; a key whose default is none, or a path of this
    machine, is shown commented out with its example value."""
    lines = [
        "# edge-app's configuration: every key, its default and what it does (`edge-app config --defaults`).",
        "# Keys shown commented out have no default value, or one that depends on the machine.",
    ]
    _section(lines, "", Settings())
    return "\n".join(lines) + "\n"


def _section(lines: list[str], name: str, section: BaseModel) -> None:
    fields = type(section).model_fields
    keys = [key for key in fields if not isinstance(getattr(section, key), BaseModel)]
    if keys:
        doc = (type(section).__dict__.get("__doc__") or "").strip().splitlines()
        lines.extend(["", _commented(f"[{name}]", doc[0] if doc else "")])
    for key in keys:
        info, value = fields[key], getattr(section, key)
        description = info.description or ""
        if value is None or isinstance(value, Path):
            assert info.examples, f"{name}.{key} needs an example value"
            lines.append(_commented(f"# {key} = {_toml(info.examples[0])}", description))
            continue
        lines.append(_commented(f"{key} = {_toml(value)}", description))
        for example in info.examples or ():
            lines.append(f"# {key} = {_toml(example)}")
    for key in fields:
        sub = getattr(section, key)
        if isinstance(sub, BaseModel):
            _section(lines, f"{name}.{key}" if name else key, sub)


def _commented(text: str, comment: str) -> str:
    return f"{text.ljust(COMMENT_COLUMN - 1)} # {comment}" if comment else text


def _toml(value: Any) -> str:
    """A default or example as TOML: strings, paths, numbers, booleans, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    return "[" + ", ".join(_toml(item) for item in value) + "]"
