import pytest

from lmforge.config import config_hash, dump_yaml, parse_overrides
from lmforge.errors import LmforgeError
from lmforge.recipe import Recipe, load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml_roundtrip(tmp_path):
    r = load_recipe(None)
    assert isinstance(r, Recipe)
    again = load_recipe(write(tmp_path, dump_yaml(r)))
    assert config_hash(again) == config_hash(r)


def test_dotted_overrides_apply_and_parse_types(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-3\n")
    r = load_recipe(p, ["--train.lr", "3e-4", "--model.n_layer=4", "--train.compile", "true"])
    assert r.train.lr == pytest.approx(3e-4)
    assert r.model.n_layer == 4
    assert r.train.compile is True


def test_unknown_key_names_file_and_suggests(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 1.0\n")
    with pytest.raises(LmforgeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "train.lrr" in msg and "train.lr" in msg


def test_unknown_override_is_error():
    with pytest.raises(LmforgeError, match="did you mean 'model.n_layer'"):
        load_recipe(None, ["--model.n_layers", "3"])


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "model:\n  n_layer: lots\n")
    with pytest.raises(LmforgeError, match="model.n_layer must be an integer"):
        load_recipe(p)


def test_literal_choice_checked(tmp_path):
    with pytest.raises(LmforgeError, match="train.schedule must be one of"):
        load_recipe(None, ["--train.schedule", "cosin"])


def test_invalid_yaml_reports_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: [1,\n")
    with pytest.raises(LmforgeError, match="not valid YAML"):
        load_recipe(p)


def test_override_syntax_errors():
    with pytest.raises(LmforgeError):
        parse_overrides(["train.lr", "1"])
    with pytest.raises(LmforgeError, match="needs a value"):
        parse_overrides(["--train.lr"])


def test_model_validation_surfaces_as_error():
    with pytest.raises(LmforgeError, match="not divisible"):
        load_recipe(None, ["--model.d_model", "100", "--model.n_head", "3"])


def test_presets_and_depth():
    r = load_recipe(None, ["--model.preset", "124m"])
    assert (r.model.n_layer, r.model.d_model, r.model.n_head) == (12, 768, 12)
    r = load_recipe(None, ["--model.depth", "4"])
    assert (r.model.n_layer, r.model.d_model, r.model.n_head) == (4, 256, 4)
    with pytest.raises(LmforgeError, match="unknown preset"):
        load_recipe(None, ["--model.preset", "124"])


def test_recipe_file_loads():
    r = load_recipe("recipes/shakespeare.yaml")
    assert r.name == "shakespeare"


def test_preset_lr_and_batch_are_used_unless_set(tmp_path, capsys):
    recipe = load_recipe(None, ["--model.preset", "8b"])
    assert (recipe.train.lr, recipe.train.batch_tokens) == (3e-4, 4_194_304)
    assert "model.preset 8b: train.lr 0.0003 and train.batch_tokens 4,194,304" in capsys.readouterr().err
    own = load_recipe(None, ["--model.preset", "8b", "--train.lr", "1e-3"])
    assert (own.train.lr, own.train.batch_tokens) == (1e-3, 4_194_304)
    path = tmp_path / "r.yaml"
    path.write_text("model: {preset: 124m}\ntrain: {batch_tokens: 4096}\n")
    from_file = load_recipe(path)
    assert (from_file.train.lr, from_file.train.batch_tokens) == (6e-4, 4096)
    assert load_recipe(None).train.lr == Recipe().train.lr  # no preset: the generic default


def test_gpt2_preset_has_gpt2_shape():
    from lmforge.model.config import ModelConfig, num_params

    gpt2 = ModelConfig(arch="gpt2", preset="124m", vocab_size=50257, max_seq_len=1024)
    assert (gpt2.n_layer, gpt2.d_model, gpt2.n_head, gpt2.d_ff) == (12, 768, 12, 3072)
    assert num_params(gpt2) == 124_439_808  # GPT-2 small, tied embeddings
    assert ModelConfig(preset="124m").d_ff == 2048  # llama: the SwiGLU width of the table
