"""Argument helpers shared by the command modules: the RECIPE positional and the `--help` epilog
that lists every key of the verb's recipe sections with its value and a one-line description."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
import typing
from typing import Any

from lmforge.config import describe_fields, field_default, field_description
from lmforge.recipe import Recipe

KEY_COLUMN = 46  # where the descriptions start
HELP_WIDTH = 110


def add_recipe_argument(parser: argparse.ArgumentParser, sections: list[str], required: bool = True) -> None:
    """The RECIPE positional plus an epilog listing the dotted overrides of `sections` with defaults;
    `lmforge VERB RECIPE --help` shows the recipe's values instead (lmforge.cli)."""
    parser.add_argument(
        "recipe",
        nargs=None if required else "?",
        help="recipe YAML file (or a name under recipes/, e.g. shakespeare)",
    )
    parser.set_defaults(_recipe_sections=sections)
    parser.epilog = recipe_epilog(sections)


def recipe_rows(sections: list[str], recipe: Recipe | None = None) -> list[tuple[str, Any, str]]:
    """(dotted key, value, description) for every key of `sections`: the recipe's values, or the defaults."""
    hints = typing.get_type_hints(Recipe)
    rows = []
    for name in sections:
        value = getattr(recipe, name) if recipe is not None else None
        if dataclasses.is_dataclass(hints[name]):
            rows.extend(describe_fields(hints[name], name, value))
        else:
            field = next(f for f in dataclasses.fields(Recipe) if f.name == name)
            rows.append((name, value if recipe is not None else field_default(field),
                         field_description(Recipe, name)))
    return rows


def value_text(value: Any) -> str:
    """A value as it is written on the command line / in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_epilog(sections: list[str], recipe: Recipe | None = None, source: str = "") -> str:
    where = f"values from {source}" if recipe is not None else "defaults shown"
    lines = [f"recipe keys (override any as --section.key VALUE; {where}):"]
    for key, value, description in recipe_rows(sections, recipe):
        left = f"  --{key} {value_text(value)}"
        if len(left) > KEY_COLUMN - 2:
            lines.append(left)
            left = ""
        wrapped = textwrap.wrap(description, HELP_WIDTH - KEY_COLUMN) or [""]
        lines.append(left.ljust(KEY_COLUMN) + wrapped[0])
        lines.extend(" " * KEY_COLUMN + more for more in wrapped[1:])
    return "\n".join(line.rstrip() for line in lines)


def all_sections() -> list[str]:
    """Every top-level key of the recipe, in order (what `lmforge run --help` lists)."""
    return [f.name for f in dataclasses.fields(Recipe)]
