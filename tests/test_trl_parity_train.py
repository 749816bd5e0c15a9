"""lmforge's DPO, SFT and reward-model training beside TRL's trainers, run for real on CPU.

One tiny random llama-style lmforge model is exported to Hugging Face (`export_hf`, which also writes
the tokenizer and its chat template). lmforge's side runs its stage's objective and loader
(`DPOStage.build`, `SFTStage.build`, `RewardStage.build`) in the one Trainer; TRL's side runs
`DPOTrainer`, `SFTTrainer` and `RewardTrainer` on the exported model. Both take the same examples in
the same order (TRL's dataset is laid out in the order lmforge's loader serves, and read
sequentially), for four optimizer steps with the same hyperparameters: lr, constant schedule
without warm-up, AdamW betas / eps / weight decay, gradient clipping at 1.0, fp32. Per step the
loss and the logged metrics must agree to 1e-4, and the token ids both sides train on are asserted
identical first.

What TRL computes and how the test lines it up with lmforge's documented semantics:

* DPO (`dpo_trainer.py`): log-probs summed over the completion tokens, the loss a mean over the
  pairs of the batch, as lmforge. TRL tokenizes the conversational pairs itself through the chat
  template of the exported tokenizer (prompt with the generation prompt, completion = the rest,
  `<|end|>` included): the same ids as `tokenize_pair`. The reference is the starting model both
  ways, on both sides: its log-probs precomputed before the first step (`dpo.precompute_ref: true`,
  lmforge's default; TRL's `precompute_ref_log_probs=True`), or a frozen copy scoring every batch
  (`dpo.precompute_ref: false`, built from the starting checkpoint; TRL's default).
* SFT (`sft_trainer.py`): TRL takes pre-tokenised `input_ids` + `assistant_masks` (lmforge's chat
  mask, 1 on assistant content and its `<|end|>`), shifts the labels inside the model, and divides
  the summed token losses by the tokens of the whole accumulated batch (`num_items_in_batch`), as
  lmforge's Trainer does: two micro-batches per step check that.
* Reward (`reward_trainer.py`): the score is read at the last non-pad token of the whole
  conversation (its closing `<|end|>`), lmforge's too; −log σ(r_c − r_r) averaged over the pairs plus
  `center_rewards_coefficient` · mean((r_c + r_r)²). The sequence-classification head gets lmforge's
  value head (with its bias) on both sides.
* The optimizer: lmforge decays the 2-D matrices only, never embeddings, norm gains or biases
  (`lmforge.train.optim`); the HF Trainer's default grouping also decays the embedding. TRL is
  therefore handed an AdamW with lmforge's parameter groups (`param_groups`) over the HF model,
  and the HF Trainer's constant scheduler.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lmforge.checkpoint.consolidated import save_model_checkpoint  # noqa: E402
from lmforge.distributed import setup_distributed  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.convert import export_hf  # noqa: E402
from lmforge.model.loss import IGNORE_INDEX  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from lmforge.posttrain.config import PreferenceTrainConfig  # noqa: E402
from lmforge.posttrain.preference import tokenize_pair  # noqa: E402
from lmforge.posttrain.reward import REWARD_ROOM, attach_value_head  # noqa: E402
from lmforge.posttrain.sft_data import sft_examples  # noqa: E402
from lmforge.recipe import load_recipe  # noqa: E402
from lmforge.stages.posttrain import DPOStage, RewardStage, SFTStage, StageData  # noqa: E402
from lmforge.tasks.chat_data import Preference  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402
from lmforge.train.optim import param_groups  # noqa: E402
from lmforge.train.trainer import Trainer  # noqa: E402

TEXT = "to be or not to be, that is the question: whether tis nobler in the mind to suffer "
STEPS, PAIRS_PER_STEP, SEQ = 4, 2, 64
HP = {"lr": 2e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1, "grad_clip": 1.0}
WORDS = TEXT.replace(",", "").replace(":", "").split()


def phrase(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(n))


PAIRS = [
    Preference(
        [{"role": "user", "content": phrase(i, 2 + i % 3)}],
        phrase(i + 1, 3 + i % 4),
        phrase(i + 5, 2 + i % 3),
    )
    for i in range(STEPS * PAIRS_PER_STEP)
]
CONVERSATIONS = [
    [
        {"role": "system", "content": phrase(i, 2)},
        {"role": "user", "content": phrase(i + 2, 2 + i % 3)},
        {"role": "assistant", "content": phrase(i + 4, 3 + i % 4)},
        {"role": "user", "content": phrase(i + 6, 2)},
        {"role": "assistant", "content": phrase(i + 7, 2 + i % 2)},
    ]
    for i in range(STEPS * 4)
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(lmforge tokenizer, the model's initial state dict, its config, the HF export directory)."""
    tok = Tokenizer.train([TEXT * 30], vocab_size=300, progress=False, workers=1)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, d_model=32, n_head=4, n_kv_head=2, vocab_size=tok.vocab_size, max_seq_len=SEQ
    )
    model = Transformer(cfg)
    out = export_hf(model, tok, tmp_path_factory.mktemp("hf") / "model")
    return tok, {k: v.clone() for k, v in model.state_dict().items()}, cfg, out


def lmforge_model(tiny) -> Transformer:
    _, state, cfg, _ = tiny
    model = Transformer(cfg)
    model.load_state_dict(state)
    return model


def train_cfg(**over) -> PreferenceTrainConfig:
    fixed = {
        "max_steps": STEPS,
        "micro_batch": PAIRS_PER_STEP,
        "seq_len": SEQ,
        "grad_accum": 1,
        "warmup_steps": 0,
        "schedule": "constant",
        "dtype": "float32",
        "device": "cpu",
        "checkpoint_every": 0,
        "eval_every": 0,
        "samples": 0,
    }
    return PreferenceTrainConfig(**{**fixed, **HP, **over})


def run_lmforge(
    stage_cls, model, tok, cfg, data: StageData, out, overrides=None, start=None
) -> tuple[list[dict], object]:
    """The stage's objective and loader in the one Trainer: (per-step metrics records, loader).
    `start`: the starting checkpoint (what a frozen DPO reference is built from)."""
    recipe = load_recipe(None, {"seed": 0, **(overrides or {})})
    ctx = setup_distributed(recipe.parallel, "cpu")
    stage = stage_cls(recipe, out)
    stage.start, stage.ctx = start, ctx
    objective, loader = stage.build(model, tok, cfg, data, ctx)
    served = copy.deepcopy(loader)  # what the loader serves, read before training
    torch.manual_seed(0)
    Trainer(model, objective, loader, cfg, out, tokenizer=tok, seed=0, ctx=ctx, stage=stage_cls.name).fit()
    records = map(json.loads, (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    return [r for r in records if "loss" in r], served


def trl_args(config_cls, out, **over):
    fixed = dict(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=PAIRS_PER_STEP,
        gradient_accumulation_steps=1,
        learning_rate=HP["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=HP["beta1"],
        adam_beta2=HP["beta2"],
        adam_epsilon=1e-8,
        weight_decay=HP["weight_decay"],
        max_grad_norm=HP["grad_clip"],
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        train_sampling_strategy="sequential",
        seed=0,
        dataloader_num_workers=0,
    )
    return config_cls(**{**fixed, **over})


def lmforge_adamw(hf_model):
    """AdamW with lmforge's parameter groups (decay on the 2-D matrices only) over the HF model."""
    return torch.optim.AdamW(
        param_groups(hf_model, HP["weight_decay"]),
        lr=HP["lr"],
        betas=(HP["beta1"], HP["beta2"]),
        eps=1e-8,
        foreach=True,
    )


def trl_steps(trainer) -> list[dict]:
    return [r for r in trainer.state.log_history if "loss" in r and "train_runtime" not in r]


def assert_steps_agree(ours: list[dict], theirs: list[dict], keys: dict[str, str]) -> None:
    assert len(ours) == len(theirs) == STEPS
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        for mine, trls in keys.items():
            assert a[mine] == pytest.approx(b[trls], abs=1e-4), (
                f"step {step}: {mine} {a[mine]} vs {trls} {b[trls]}"
            )


@pytest.mark.parametrize("precompute_ref", [True, False], ids=["precomputed-ref", "frozen-ref"])
def test_dpo_steps_equal_trl_dpo_trainer(tiny, tmp_path, capsys, precompute_ref):
    tok, _, _, hf_dir = tiny
    cfg = train_cfg()
    pairs = [tokenize_pair(p, tok, SEQ) for p in PAIRS]
    start = tmp_path / "start"
    save_model_checkpoint(lmforge_model(tiny), tok, start, stage="pretrain", step=0)
    ours, loader = run_lmforge(
        DPOStage,
        lmforge_model(tiny),
        tok,
        cfg,
        StageData(None, pairs),
        tmp_path / "ours",
        {"dpo.precompute_ref": precompute_ref},
        start,
    )
    assert ("frozen reference" in capsys.readouterr().out) != precompute_ref
    order = loader.order.take(STEPS * PAIRS_PER_STEP)

    rows = [
        {
            "prompt": PAIRS[i].messages,
            "chosen": [{"role": "assistant", "content": PAIRS[i].chosen}],
            "rejected": [{"role": "assistant", "content": PAIRS[i].rejected}],
        }
        for i in order
    ]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    args = trl_args(
        trl.DPOConfig,
        tmp_path / "trl",
        beta=0.1,
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=precompute_ref,
    )
    trainer = trl.DPOTrainer(
        model=hf,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=hf_tok,
        optimizers=(lmforge_adamw(hf), None),
    )
    assert (trainer.ref_model is None) == precompute_ref  # TRL's side takes the same path
    for row, i in zip(trainer.train_dataset, order):  # TRL's tokenisation = lmforge's
        (c_ids, c_labels), (r_ids, r_labels) = pairs[i].chosen, pairs[i].rejected
        assert row["prompt_ids"] + row["chosen_ids"] == c_ids + [c_labels[-1]]
        assert row["prompt_ids"] + row["rejected_ids"] == r_ids + [r_labels[-1]]
        assert sum(t != IGNORE_INDEX for t in c_labels) == len(row["chosen_ids"])
    trainer.train()
    theirs = trl_steps(trainer)
    assert theirs[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy = reference at step 0
    assert abs(theirs[-1]["rewards/margins"]) > 1e-3  # it moved
    keys = {
        "loss": "loss",
        "rewards/chosen": "rewards/chosen",
        "rewards/rejected": "rewards/rejected",
        "rewards/margins": "rewards/margins",
        "rewards/accuracies": "rewards/accuracies",
        "logps/chosen": "logps/chosen",
        "logps/rejected": "logps/rejected",
        "grad_norm": "grad_norm",
    }
    assert_steps_agree(ours, theirs, keys)


def test_sft_assistant_only_steps_equal_trl_sft_trainer(tiny, tmp_path):
    tok, _, _, hf_dir = tiny
    cfg = train_cfg(micro_batch=2, grad_accum=2)  # two micro-batches per step: the token mean spans both
    examples = sft_examples(CONVERSATIONS, tok, SEQ)
    assert len(examples) == len(CONVERSATIONS)
    ours, loader = run_lmforge(
        SFTStage,
        lmforge_model(tiny),
        tok,
        cfg,
        StageData(None, examples),
        tmp_path / "ours",
        {"sft.packing": False},
    )
    served = [row[0] for row in loader.rows.take(STEPS * 4)]

    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    rows = []
    for ex in served:
        ids = ex.input_ids + [ex.labels[-1]]
        conv = next(c for c in CONVERSATIONS if tok.render_chat(c)[0] == ids)
        assert hf_tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"] == ids
        mask = [0] + [int(t != IGNORE_INDEX) for t in ex.labels]  # TRL's mask is on the tokens, unshifted
        rows.append({"input_ids": ids, "assistant_masks": mask})
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    args = trl_args(
        trl.SFTConfig,
        tmp_path / "trl",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_length=None,
        packing=False,
        shuffle_dataset=False,
    )
    trainer = trl.SFTTrainer(
        model=hf,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=hf_tok,
        optimizers=(lmforge_adamw(hf), None),
    )
    for row, ex in zip(trainer.train_dataset, served):  # TRL's labels: the supervised tokens, as lmforge's
        assert row["labels"][1:] == ex.labels
    trainer.train()
    assert_steps_agree(ours, trl_steps(trainer), {"loss": "loss", "grad_norm": "grad_norm"})


def test_reward_model_steps_equal_trl_reward_trainer(tiny, tmp_path):
    tok, _, cfg_model, hf_dir = tiny
    cfg = train_cfg()
    center = 0.05
    pairs = [tokenize_pair(p, tok, SEQ - REWARD_ROOM) for p in PAIRS]
    model = lmforge_model(tiny)
    head = attach_value_head(model)
    with torch.no_grad():  # a head that already separates the pairs a little, and a bias that centring moves
        head.weight.copy_(0.2 * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(3)))
        head.bias.fill_(0.3)
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    ours, loader = run_lmforge(
        RewardStage,
        model,
        tok,
        cfg,
        StageData(None, pairs),
        tmp_path / "ours",
        {"reward.center_rewards": center},
    )
    order = loader.order.take(STEPS * PAIRS_PER_STEP)

    def conversation(i: int, answer: str) -> list[dict]:
        return PAIRS[i].messages + [{"role": "assistant", "content": answer}]

    rows = [
        {"chosen": conversation(i, PAIRS[i].chosen), "rejected": conversation(i, PAIRS[i].rejected)}
        for i in order
    ]
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        hf_dir, num_labels=1, dtype=torch.float32
    )
    hf.score = torch.nn.Linear(cfg_model.d_model, 1, bias=True)
    with torch.no_grad():
        hf.score.weight.copy_(weight)
        hf.score.bias.copy_(bias)
    hf.config.pad_token_id = hf_tok.pad_token_id
    args = trl_args(trl.RewardConfig, tmp_path / "trl", center_rewards_coefficient=center, max_length=None)
    trainer = trl.RewardTrainer(
        model=hf,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=hf_tok,
        optimizers=(lmforge_adamw(hf), None),
    )
    # TRL's whole conversations = lmforge's rows with their final token
    for row, i in zip(trainer.train_dataset, order):
        (c_ids, c_labels), (r_ids, r_labels) = pairs[i].chosen, pairs[i].rejected
        assert row["chosen_ids"] == c_ids + [c_labels[-1]] and row["rejected_ids"] == r_ids + [r_labels[-1]]
    trainer.train()
    theirs = trl_steps(trainer)
    assert_steps_agree(
        ours,
        theirs,
        {
            "loss": "loss",
            "accuracy": "accuracy",
            "margin": "margin",
            "reward/mean": "mean_reward",
            "grad_norm": "grad_norm",
        },
    )
    assert abs(theirs[-1]["margin"] - theirs[0]["margin"]) > 1e-3  # it moved
