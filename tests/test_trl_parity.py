"""lmforge beside TRL itself, run for real on CPU with a tiny random model exported to Hugging Face.

GRPO: one fixed batch of prompts, completions, advantages, sampling-policy and reference log-probs
(ratios away from 1, so the clip acts, and a k3 KL term without TRL's ratio correction,
`use_bias_correction_kl`, on by default in TRL): lmforge's GRPOObjective and TRL's GRPOTrainer loss
computation (`_compute_loss`, loss_type "dapo": summed over the completion tokens, divided by their
number, as lmforge's Trainer divides) give the same loss.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.convert import export_hf  # noqa: E402
from lmforge.model.loss import IGNORE_INDEX  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from lmforge.posttrain.grpo import GRPOObjective  # noqa: E402
from lmforge.posttrain.preference import completion_row, pad_rows  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = Tokenizer.train(["to be or not to be, that is the question " * 40], vocab_size=300, progress=False,
                          workers=1)
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=tok.vocab_size, max_seq_len=64)
    ours = Transformer(cfg)
    out = export_hf(ours, tok, tmp_path_factory.mktemp("hf") / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    return ours.eval(), tok, hf, transformers.AutoTokenizer.from_pretrained(out), out


def test_grpo_loss_equals_trl_grpo_trainer(exported, tmp_path):
    ours, tok, hf, hf_tok, _ = exported
    prompts = [tok.render_chat([{"role": "user", "content": q}], add_generation_prompt=True)[0]
               for q in ("to be", "or not to be, that")]
    g = torch.Generator().manual_seed(1)
    completions = [torch.randint(256, tok.vocab_size - 8, (n,), generator=g).tolist() for n in (5, 3, 6, 2)]
    prompt_of = [0, 0, 1, 1]  # two groups of two
    advantages = torch.tensor([0.7, -0.7, 1.0, -1.0])

    rows = [completion_row(prompts[p], c, 64) for p, c in zip(prompt_of, completions)]
    batch = pad_rows(rows, 0)
    active = batch["labels"] != IGNORE_INDEX
    with torch.no_grad():
        logps = torch.log_softmax(ours(batch["input_ids"]).float(), -1).gather(
            -1, batch["labels"].clamp(min=0)[..., None])[..., 0]
    shift = 0.3 * torch.randn(logps.shape, generator=g)  # a sampling policy and a reference elsewhere
    batch.update(advantages=advantages, old_logps=(logps + shift) * active,
                 ref_logps=(logps - shift) * active)
    epsilon, beta = 0.2, 0.05
    out = GRPOObjective(epsilon, beta).loss(ours, batch)
    ours_loss = out.loss_sum / out.count

    # TRL's layout: left-padded prompts, right-padded completions, per-token tensors over completions
    P = max(len(prompts[p]) for p in prompt_of)
    C = max(len(c) for c in completions)
    prompt_ids = torch.zeros(4, P, dtype=torch.long)
    prompt_mask = torch.zeros(4, P, dtype=torch.long)
    completion_ids = torch.zeros(4, C, dtype=torch.long)
    completion_mask = torch.zeros(4, C, dtype=torch.long)
    old = torch.zeros(4, C)
    ref = torch.zeros(4, C)
    for i, (p, c) in enumerate(zip(prompt_of, completions)):
        ids = prompts[p]
        prompt_ids[i, P - len(ids):] = torch.tensor(ids)
        prompt_mask[i, P - len(ids):] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
        where = active[i].nonzero()[:, 0]
        old[i, : len(c)] = batch["old_logps"][i, where]
        ref[i, : len(c)] = batch["ref_logps"][i, where]
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "trl"), loss_type="dapo", beta=beta, epsilon=epsilon, num_generations=2,
        per_device_train_batch_size=4, max_completion_length=C, report_to=[], use_cpu=True,
        temperature=1.0, bf16=False, use_bias_correction_kl=False,  # the classic k3 term, as lmforge
    )
    train = datasets.Dataset.from_list([{"prompt": "to be"}] * 4)
    trainer = trl.GRPOTrainer(model=hf, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                              args=args, train_dataset=train, processing_class=hf_tok)
    trainer.model.eval()  # eval mode: TRL divides by the batch's completion tokens alone
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
        "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum(),
    }
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    assert float(out.metrics["clip_ratio"]) > 0  # the clip acts in this batch
    torch.testing.assert_close(ours_loss, trl_loss.float(), rtol=1e-5, atol=1e-5)
