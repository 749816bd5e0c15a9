"""`--help` lists every recipe key with a description, and with the recipe's values after a recipe."""

import dataclasses
import typing

from lmforge.cli import main
from lmforge.commands._common import recipe_rows
from lmforge.config import ALIASES, field_description
from lmforge.recipe import Recipe, load_recipe


def leaf_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], f"{key}.")
        else:
            yield key, cls, f.name


def test_every_key_of_every_section_has_a_description():
    missing = [key for key, cls, name in leaf_fields(Recipe) if not field_description(cls, name)]
    assert not missing, f"recipe keys without a description (add a # comment): {missing}"


def test_descriptions_come_from_help_metadata_trailing_and_leading_comments():
    @dataclasses.dataclass
    class Section:
        # the block above
        # spans two lines
        a: int = 1
        b: int = dataclasses.field(default=2, metadata={"help": "from metadata"})
        c: int = 3  # trailing

        def method(self) -> None:
            d = 4  # not a field  # noqa: F841

    @dataclasses.dataclass
    class Child(Section):
        c: int = 5

    assert field_description(Section, "a") == "the block above spans two lines"
    assert field_description(Section, "b") == "from metadata"
    assert field_description(Child, "c") == "trailing"  # a redefined default keeps the base's text


def test_run_help_after_a_recipe_shows_its_values_for_every_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: helpme\ntrain: {lr: 0.0123}\nmodel: {n_layer: 3}\n")
    assert main(["run", str(recipe), "--train.max_steps", "77", "--help"]) == 0
    out = capsys.readouterr().out
    assert f"values from {recipe}" in out
    assert "--name helpme" in out and "--train.lr 0.0123" in out and "--model.n_layer 3" in out
    assert "--train.max_steps 77" in out  # overrides before --help count too
    for key, _, _ in recipe_rows([f.name for f in dataclasses.fields(Recipe)], load_recipe(None)):
        assert f"--{key} " in out, key
    assert "peak learning rate" in out


def test_verb_help_without_a_recipe_shows_defaults(capsys):
    try:
        main(["sft", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "defaults shown" in out and "--sft.train.lr 0.0003" in out


def test_unknown_verb_gets_a_suggestion(capsys):
    assert main(["pretrian", "x.yaml"]) == 2
    assert "did you mean 'pretrain'" in capsys.readouterr().err


def test_names_from_other_tools_point_at_the_recipe_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {learning_rate: 1.0e-3}\n")
    assert main(["run", str(recipe)]) == 2
    assert "lmforge calls it 'train.lr'" in capsys.readouterr().err
    assert main(["run", str(recipe), "--help"]) == 2
    recipe.write_text("train: {gradient_accumulation_steps: 4}\n")
    assert main(["run", str(recipe)]) == 2
    assert ALIASES["gradient_accumulation_steps"] in capsys.readouterr().err
