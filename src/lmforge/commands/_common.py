"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from lmforge.config import describe_fields
from lmforge.recipe import Recipe


def add_recipe_argument(parser: argparse.ArgumentParser, sections: list[str], required: bool = True) -> None:
    """The RECIPE positional plus an epilog listing the dotted overrides of `sections` with defaults."""
    parser.add_argument(
        "recipe",
        nargs=None if required else "?",
        help="recipe YAML file (or a name under recipes/, e.g. shakespeare)",
    )
    hints = typing.get_type_hints(Recipe)
    rows = []
    for name in sections:
        if name in hints and dataclasses.is_dataclass(hints[name]):
            rows.extend(describe_fields(hints[name], name))
        else:
            field = next(f for f in dataclasses.fields(Recipe) if f.name == name)
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            rows.append((name, default, ""))
    lines = ["recipe overrides (any key of the recipe, as --section.key VALUE; defaults shown):"]
    width = max(len(k) for k, _, _ in rows) + 4
    for key, default, comment in rows:
        text = f"  --{key} {default!r}"
        lines.append(text.ljust(width + 12) + (f"  {comment}" if comment else ""))
    epilog = "\n".join(lines)
    parser.epilog = f"{parser.epilog}\n\n{epilog}" if parser.epilog else epilog
