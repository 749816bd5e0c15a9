"""Tracking: logging-only keys never re-run a stage; TensorBoard tags, hparams and samples; W&B by
recipe (offline here: no network); `lmforge report --tensorboard` converts metrics.jsonl."""

import json

import pytest

import lmforge.run as run_mod
from lmforge.cli import main
from lmforge.config import settings_dict
from lmforge.recipe import load_recipe
from lmforge.train.config import TrainConfig, WandbConfig
from lmforge.train.metrics import MetricsLogger


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_logging_only_keys_do_not_re_run_a_finished_stage(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        run_mod, "run_stage_function", lambda stage, recipe, run_dir, key: calls.append(stage.name)
    )
    base = {"run_dir": str(tmp_path / "run"), "stages": ["pretrain"], "sft": {}}
    run_mod.run_recipe(load_recipe(None, base))
    assert calls == ["pretrain"]
    logging = {
        **base,
        "train.tensorboard": True,
        "train.log_every": 1,
        "train.wandb.mode": "offline",
        "sft.train.tensorboard": True,
    }
    run_mod.run_recipe(load_recipe(None, logging))
    assert calls == ["pretrain"], "switching TensorBoard / W&B / log_every on re-ran the stage"
    run_mod.run_recipe(load_recipe(None, {**logging, "train.lr": 0.5}))
    assert calls == ["pretrain", "pretrain"], "a real setting must still re-run it"


def test_settings_dict_drops_logging_keys_at_any_depth():
    recipe = load_recipe(None)
    for train in (settings_dict(recipe)["train"], settings_dict(recipe)["dpo"]["train"]):
        assert "lr" in train and not {"tensorboard", "wandb", "log_every"} & train.keys()


def test_tensorboard_tags_hparams_and_samples(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=True, config={"lr": 0.01, "sample_prompts": ["a"]})
    logger.log({"step": 1, "loss": 2.5, "lr": 0.01})
    logger.log({"step": 1, "val_loss": 2.0, "val_bpb": 1.5})
    logger.log_samples(1, [("ROMEO:", " O, she doth teach")])
    logger.close()
    acc = events(tmp_path / "tensorboard")
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "val/loss", "val/bpb"}
    assert acc.Scalars("val/loss")[0].value == pytest.approx(2.0)
    plugins = acc.PluginTagToContent("hparams")
    assert plugins, "no hparams summary"
    text = acc.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "ROMEO:" in text and "she doth teach" in text


def test_wandb_offline_by_recipe_writes_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_recipe(None, {"train.wandb": {"mode": "offline", "project": "p1"}}).train.wandb
    assert cfg == WandbConfig(mode="offline", project="p1")
    logger = MetricsLogger(tmp_path / "out", wandb=cfg, run_name="r", config={"lr": 0.1})
    assert logger.wandb is not None and logger.wandb.project == "p1"
    logger.log({"step": 1, "loss": 2.0, "val_loss": 1.0})
    logger.close()
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs and runs[0].stat().st_size > 0


def test_wandb_disabled_is_the_default():
    assert TrainConfig().wandb.mode == "disabled"
    with pytest.raises(Exception, match="train.wandb.mode must be one of"):
        load_recipe(None, ["--train.wandb.mode", "onlin"])


def test_report_tensorboard_converts_metrics_jsonl(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "pretrain").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train: {lr: 0.02}\n")
    rows = [{"step": s, "loss": 3.0 - s / 10, "tokens_per_s": 100.0} for s in range(1, 6)]
    rows.append({"step": 5, "val_loss": 2.2, "val_bpb": 1.1})
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "loss'  # a torn last line
    (run_dir / "pretrain" / "metrics.jsonl").write_text(text)
    assert main(["report", str(run_dir), "--tensorboard"]) == 0
    acc = events(run_dir / "tensorboard" / "pretrain")
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert acc.Scalars("val/bpb")[0].value == pytest.approx(1.1)
    assert main(["report", str(run_dir), "--tensorboard"]) == 0  # again: replaced, not doubled
    assert len(events(run_dir / "tensorboard" / "pretrain").Scalars("train/loss")) == 5
