"""HF export: transformers loads the directory with no custom code and computes the same thing."""

from __future__ import annotations

import json

import pytest
import torch

from interop_common import SAMPLES, model, tokenizer

transformers = pytest.importorskip("transformers")

from lmforge.cli import main as cli  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.model.convert import export_hf, to_hf_state_dict  # noqa: E402

CASES = {
    "llama-gqa-tied": dict(arch="llama", n_kv_head=2, tie=True),
    "llama-mha-untied": dict(arch="llama", n_kv_head=4, tie=False, rope_theta=500.0),
    "gpt2-untied": dict(arch="gpt2", tie=False),
}
CHATS = [
    [{"role": "user", "content": "Who speaks first?"}],
    [
        {"role": "system", "content": "You know Shakespeare."},
        {"role": "user", "content": "Name a play."},
        {"role": "assistant", "content": "Hamlet"},
        {"role": "user", "content": "Another ✓"},
    ],
]


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    ours = model(**CASES[request.param])
    out = export_hf(ours, tokenizer(), tmp_path_factory.mktemp(request.param) / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    return request.param, ours, hf, hf_tok, out


def test_no_custom_code_and_right_class(exported):
    name, ours, hf, _, out = exported
    config = json.loads((out / "config.json").read_text())
    want = "LlamaForCausalLM" if ours.cfg.arch == "llama" else "GPT2LMHeadModel"
    assert type(hf).__name__ == want and config["architectures"] == [want]
    assert "auto_map" not in config
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "lmforge-manifest.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_logits_match(exported):
    name, ours, hf, _, _ = exported
    torch.manual_seed(1)
    x = torch.randint(0, ours.cfg.vocab_size, (3, 40))
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    print(f"\n{name}: max |logit diff| lmforge vs {type(hf).__name__} = {diff:.2e}")  # docs/BENCHMARKS.md
    assert diff <= 1e-4


def test_greedy_generation_identical(exported):
    name, ours, hf, _, _ = exported
    if name == "llama-mha-untied":
        pytest.skip("one llama and one gpt2 case are enough for generation (time)")
    tok = tokenizer()
    prompts = [tok.encode_ordinary(s) for s in ("To be, or not", "ROMEO. But soft")]
    ref = Engine(ours, tok).generate(
        prompts, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    )
    assert len({tuple(c.token_ids) for c in ref}) == 2
    for p, completion in zip(prompts, ref):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert out[0, len(p) :].tolist() == completion.token_ids


def test_tokenizer_ids_identical(exported):
    _, _, _, hf_tok, _ = exported
    tok = tokenizer()
    for text in SAMPLES + [open(__file__, encoding="utf-8").read()[:3000]]:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode_ordinary(text)
        assert hf_tok.decode(tok.encode_ordinary(text)) == text
    assert hf_tok.convert_tokens_to_ids("<|end|>") == tok.special_ids["<|end|>"]


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_identical(exported, generation_prompt):
    _, _, _, hf_tok, _ = exported
    tok = tokenizer()
    for messages in CHATS:
        hf_ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        if isinstance(hf_ids, dict) or hasattr(hf_ids, "input_ids"):
            hf_ids = hf_ids["input_ids"]
        ids, _ = tok.render_chat(messages, add_generation_prompt=generation_prompt)
        assert list(hf_ids) == ids


def test_state_dict_layouts():
    ours = model(arch="gpt2", tie=False)
    sd = to_hf_state_dict(ours)
    d = ours.cfg.d_model
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (d, 3 * d)  # Conv1D: [in, out]
    assert torch.equal(
        sd["transformer.h.0.attn.c_attn.weight"][:, d : 2 * d], ours.layers["0"].attn.wk.weight.t()
    )
    assert torch.equal(sd["transformer.h.1.mlp.c_fc.weight"], ours.layers["1"].mlp.fc.weight.t())
    assert "lm_head.weight" not in to_hf_state_dict(model(tie=True))


def test_gpt2_with_grouped_query_attention_is_refused(tmp_path):
    from lmforge.model.transformer import Transformer

    cfg = model(arch="gpt2").cfg
    cfg.n_kv_head = 2
    with pytest.raises(LmforgeError, match="n_kv_head"):
        export_hf(Transformer(cfg), tokenizer(), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_export_bfloat16(tmp_path, capsys):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ours = model()
    ckpt = save_model_checkpoint(ours, tokenizer(), tmp_path / "ckpt")
    assert (
        cli(
            [
                "export",
                "--model",
                str(ckpt),
                "--format",
                "hf",
                "--out",
                str(tmp_path / "hf"),
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(hf.model.embed_tokens.weight, ours.tok_emb.weight.to(torch.bfloat16))
    assert cli(["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "nowhere" in capsys.readouterr().err
    # re-exporting over an export is fine; over any other non-empty directory it is refused
    assert cli(["export", "--model", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    for not_an_export in (tmp_path / "ckpt" / "tokenizer", tmp_path / "ckpt"):
        assert cli(["export", "--model", str(ckpt), "--out", str(not_an_export)]) == 2
        assert "was not written by lmforge export" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "tokenizer" / "lmforge_tokenizer.json").exists()


def test_export_never_replaces_files_it_did_not_write_without_force(tmp_path, capsys):
    """An HF config beside unrelated files (someone's model folder) is not an earlier export."""
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(model(), tokenizer(), tmp_path / "ckpt")
    out = tmp_path / "folder"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (out / "train.py").write_text("print('mine')")
    export = ["export", "--model", str(ckpt), "--format", "hf", "--out", str(out)]
    assert cli(export) == 2
    assert "no lmforge-manifest.json" in capsys.readouterr().err and (out / "train.py").exists()
    assert cli([*export, "--force"]) == 0 and not (out / "train.py").exists()
    assert cli(export) == 0  # an earlier export holding only its own files is replaced
    (out / "notes.md").write_text("added by hand")
    assert cli(export) == 2
    assert "did not write: notes.md" in capsys.readouterr().err and (out / "notes.md").exists()


# ---------------------------------------------------------------------------- behaves like lmforge


PROMPTS = ["ROMEO:\n", "To be, or not", "Now is the winter"]


def lmforge_generate(ckpt, prompts, tmp_path, max_new_tokens):
    """`lmforge generate` through its command line, greedy: one completion per prompt (JSONL)."""
    path, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    args = ["--prompts-file", str(path), "--out", str(out), "--temperature", "0"]
    assert cli(["generate", "--model", str(ckpt), *args, "--max-new-tokens", str(max_new_tokens)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def export_checkpoint(ours, tmp_path, name="hf"):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(ours, tokenizer(), tmp_path / "ckpt")
    assert cli(["export", "--model", str(ckpt), "--format", "hf", "--out", str(tmp_path / name)]) == 0
    return ckpt, tmp_path / name


@pytest.mark.parametrize("case", ["llama-gqa-tied", "gpt2-untied"])
def test_plain_pipeline_gives_lmforge_generate_greedy_tokens(tmp_path, case, capsys):
    """No argument but the length: transformers' pipeline and `lmforge generate --temperature 0` pick
    the same tokens and print the same text (the tokenizer puts <|eos|> before the prompt as lmforge does)."""
    ckpt, out = export_checkpoint(model(**CASES[case]), tmp_path)
    ours = lmforge_generate(ckpt, PROMPTS, tmp_path, 24)
    pipe = transformers.pipeline("text-generation", model=str(out))
    tok = tokenizer()
    for prompt, mine in zip(PROMPTS, ours):
        got = pipe(prompt, max_new_tokens=24, return_tensors=True)[0]["generated_token_ids"]
        head = [tok.eos_id] + tok.encode_ordinary(prompt)
        assert got[: len(head)] == head
        assert got[len(head) :] == mine["token_ids"], prompt
        text = pipe(prompt, max_new_tokens=24)[0]["generated_text"]
        assert text == prompt + mine["completion"]
    capsys.readouterr()
    assert (
        cli(
            [
                "generate",
                "--model",
                str(ckpt),
                "--prompt",
                PROMPTS[0],
                "--temperature",
                "0",
                "--max-new-tokens",
                "24",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == pipe(PROMPTS[0], max_new_tokens=24)[0]["generated_text"] + "\n"


def test_generation_stops_at_end_of_turn_on_both_sides(tmp_path, capsys):
    """A model whose third greedy token is <|end|>: `lmforge generate` stops there without printing it,
    as the exported model's generation_config does in transformers."""
    from lmforge.tokenizer.tokenizer import END

    tok = tokenizer()
    ours = model(tie=False)
    engine = Engine(ours, tok)
    first = engine.generate(
        [engine.encode_prompt(PROMPTS[0])], SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
    )[0].token_ids
    end = tok.special_ids[END]
    assert end not in first and first[2] not in first[:2]
    with torch.no_grad():  # swap the head rows of the third token and <|end|>: <|end|> now wins there
        rows = ours.lm_head.weight
        rows[[first[2], end]] = rows[[end, first[2]]]
    ckpt, out = export_checkpoint(ours, tmp_path)
    (mine,) = lmforge_generate(ckpt, PROMPTS[:1], tmp_path, 24)
    assert mine["token_ids"] == first[:2] + [end] and mine["finish_reason"] == "stop"
    assert "<|end|>" not in mine["completion"]
    capsys.readouterr()
    assert cli(["generate", "--model", str(ckpt), "--prompt", PROMPTS[0], "--temperature", "0"]) == 0
    printed = capsys.readouterr()
    assert printed.out == PROMPTS[0] + tok.decode(first[:2]) + "\n" and "finish: stop" in printed.err
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf_tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        got = hf.generate(**ids, max_new_tokens=24)[0, ids["input_ids"].shape[1] :].tolist()
    assert got == first[:2] + [end]


@pytest.mark.parametrize("case", ["llama-gqa-tied", "gpt2-untied"])
def test_padding_and_context_length(tmp_path, case):
    """tok([...], padding=True) works (pad <|eos|>, left side) and a padded batch generates what each
    prompt does alone; model_max_length is the model's context and truncation keeps to it."""
    ours = model(**CASES[case])
    _, out = export_checkpoint(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.model_max_length == ours.cfg.max_seq_len
    assert hf_tok.pad_token == "<|eos|>" and hf_tok.padding_side == "left"
    batch = hf_tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        together = hf.generate(**batch, max_new_tokens=12, do_sample=False)[:, batch["input_ids"].shape[1] :]
        for i, prompt in enumerate(PROMPTS):
            alone = hf_tok(prompt, return_tensors="pt")
            solo = hf.generate(**alone, max_new_tokens=12, do_sample=False)[0, alone["input_ids"].shape[1] :]
            n = len(solo)
            assert together[i, :n].tolist() == solo.tolist(), prompt
    long = hf_tok("to be or not " * 200, truncation=True)["input_ids"]
    assert len(long) == ours.cfg.max_seq_len


# ---------------------------------------------------------------------------- model card


def make_run(run, ours, step=40):
    """A run directory as the stages leave it: checkpoint, metrics, data stats, shards, eval results."""
    from lmforge.checkpoint.consolidated import write_checkpoint

    ckpt = write_checkpoint(run / "pretrain" / "checkpoints", step, ours, tokenizer(), stage="pretrain")
    rows = [{"step": s, "loss": 5.0 - s / 100, "tokens_per_s": 1000.0, "step_s": 0.5} for s in range(1, 61)]
    rows.insert(20, {"step": 20, "val_loss": 4.5, "val_bpb": 2.25})
    rows.insert(41, {"step": 40, "val_loss": 4.25, "val_bpb": 2.125})
    (run / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "data").mkdir()
    stats = {
        "input": {"documents": 37, "characters": 90_000},
        "output": {"documents": 31, "characters": 81_234},
        "steps_order": ["normalize", "exact_dedup"],
    }
    (run / "data" / "stats.json").write_text(json.dumps(stats))
    (run / "tokens").mkdir()
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 23_456, "val_tokens": 1_234}))
    (run / "eval").mkdir()
    entry = {
        "checkpoint": str(ckpt),
        "stage": "pretrain",
        "step": step,
        "tasks": {
            "plays": {"n": 100, "chance": 0.25, "metrics": {"acc": 0.37, "acc_stderr": 0.0485}},
            "val_bpb": {"n": 3, "metrics": {"bits_per_byte": 2.0625}},
        },
    }
    other = {**entry, "step": step - 20, "tasks": {"plays": {"n": 100, "metrics": {"acc": 0.99}}}}
    (run / "eval" / "results.json").write_text(json.dumps({"checkpoints": [other, entry]}))
    return ckpt


def test_model_card_states_the_run_facts(tmp_path):
    ours = model()
    ckpt = make_run(tmp_path / "run", ours)
    out = tmp_path / "shakespeare-hf"
    assert cli(["export", "--model", str(tmp_path / "run"), "--format", "hf", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "# shakespeare-hf" in card and "`pretrain` checkpoint at step 40" in card
    cfg = ours.cfg
    for fact in (
        "`LlamaForCausalLM`",
        f"| layers | {cfg.n_layer} |",
        f"| context length | {cfg.max_seq_len} |",
        f"| attention heads / KV heads | {cfg.n_head} / {cfg.n_kv_head} |",
        f"{ours.num_params():,}",
    ):
        assert fact in card, fact
    # tokens: 40 logged steps up to the checkpoint x 1000 tokens/s x 0.5 s; the val figures at step 40
    assert "| `pretrain` | 40 | 20,000 | 4.6000 | 4.2500 | 2.1250 |" in card
    assert "37 read, 31 kept (81,234 characters)" in card and "`normalize`, `exact_dedup`" in card
    assert "training tokens in the shards: 23,456" in card
    assert "| plays | acc | 100 | 0.3700 | 0.0485 | 0.25 |" in card
    assert "| val_bpb | bits_per_byte | 3 | 2.0625" in card
    assert "0.99" not in card  # another checkpoint's results
    assert f"{tokenizer().vocab_size:,} ids" in card
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "lmforge-manifest.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert cli(["export", "--model", str(ckpt), "--format", "hf", "--out", str(out)]) == 0  # re-export


def test_model_card_leaves_out_what_the_run_does_not_have(tmp_path):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ours = model(arch="gpt2", tie=False)
    ckpt = save_model_checkpoint(ours, tokenizer(), tmp_path / "imported")
    assert cli(["export", "--model", str(ckpt), "--format", "hf", "--out", str(tmp_path / "a")]) == 0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "`GPT2LMHeadModel`" in card and "## Architecture" in card and "## Tokenizer" in card
    for absent in ("## Training", "## Data", "## Evaluation", "RoPE"):
        assert absent not in card
    run = tmp_path / "run"
    make_run(run, model())
    for gone in ("data/stats.json", "tokens/meta.json", "eval/results.json"):
        (run / gone).unlink()
    assert cli(["export", "--model", str(run), "--format", "hf", "--out", str(tmp_path / "b")]) == 0
    card = (tmp_path / "b" / "README.md").read_text()
    assert "## Training" in card and "## Data" not in card and "## Evaluation" not in card


def test_model_card_survives_hostile_run_files(tmp_path):
    """Torn, non-JSON or wrongly typed run files never fail an export: the card leaves them out."""
    run = tmp_path / "run"
    make_run(run, model())
    (run / "pretrain" / "metrics.jsonl").write_text(
        '{"step": "x", "loss": 1}\n[1, 2]\n{"step": 3, "loss": "nan", "tokens_per_s": "fast"}\n'
        '{"step": 4, "loss": 2.5, "tokens_per_s": 10, "step_s": "slow"}\n{"step": 5, "loss'
    )
    stats = {"input": [], "output": {"documents": "many"}, "steps_order": 7}
    (run / "data" / "stats.json").write_text(json.dumps(stats))
    (run / "tokens" / "meta.json").write_bytes(b"\xff\xfe not json")
    entry = {"stage": "pretrain", "step": 40, "tasks": {"a": [1], "b": {"metrics": 3}}}
    (run / "eval" / "results.json").write_text(json.dumps({"checkpoints": [entry]}))
    out = tmp_path / "hf"
    assert cli(["export", "--model", str(run), "--format", "hf", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "| `pretrain` | 4 | - | 2.5000 | - | - |" in card
    assert "## Data" not in card and "## Evaluation" not in card and "## Architecture" in card
    (run / "eval" / "results.json").write_text('{"checkpoints": 5}')
    assert cli(["export", "--model", str(run), "--format", "hf", "--out", str(out)]) == 0
