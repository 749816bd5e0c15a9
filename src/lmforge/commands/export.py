"""Export a checkpoint for other tools: Hugging Face transformers (`--format hf`) or llama.cpp
(`--format gguf`).

`hf` writes a directory that `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load with no custom code (LlamaForCausalLM for arch llama,
GPT2LMHeadModel for arch gpt2; the tokenizer carries the chat template, puts <|eos|> before a text
prompt, pads with <|eos|> and knows the context length), plus a model card (README.md) with the
run's architecture, data, tokens trained and evals. `gguf` writes one file for llama.cpp /
llama-cpp-python / Ollama with the tokenizer in its metadata, in f32, f16, bf16 or a quantised type
(q8_0, q4_0, ...: every type the installed gguf package can write), and an Ollama Modelfile beside it.

A checkpoint of a LoRA stage (adapters on a base checkpoint) exports with its adapters merged into
the weights (`--lora merge`, the default: one plain model). `--lora adapter` (hf only) writes the
adapters as a PEFT adapter directory at --out (adapter_config.json + adapter_model.safetensors
under transformers' module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)
and the base model, unmerged, as an hf export at --base-out (default: <out>-base), so that
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT)` loads them.

Without --force nothing is replaced but an empty directory or an earlier `hf` export (a directory
holding only what its lmforge-manifest.json lists); an existing .gguf file needs --force too.

examples:
  lmforge export --model runs/shakespeare --format hf --out exports/shakespeare-hf
  lmforge export --model runs/shakespeare/sft --format gguf --out exports/shakespeare.gguf --dtype q8_0
  ollama create shakespeare -f exports/shakespeare.Modelfile
  lmforge export --model runs/lora/sft --format hf --lora adapter --out exports/lora-adapter
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint, stage or run directory")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf", help="output format (default: hf)")
    p.add_argument("--out", required=True, help="output directory (hf) or .gguf file (gguf)")
    p.add_argument(
        "--dtype",
        default="",
        help="weights dtype: hf float32|float16|bfloat16 (default: the checkpoint's); "
        "gguf f32|f16|bf16|q8_0|q4_0|... (default: f32; a wrong one lists what the gguf package writes)",
    )
    p.add_argument(
        "--lora",
        choices=["merge", "adapter"],
        default="merge",
        help="a LoRA checkpoint: merge the adapters into the weights (default), or (hf) write them as a PEFT "
        "adapter directory at --out with the base model exported to --base-out",
    )
    p.add_argument(
        "--base-out", default="", help="with --lora adapter: where the base goes (default: <out>-base)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even when it is an existing file or a directory this command did not write",
    )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(args.model)
    if args.lora == "adapter":
        return export_adapter(ckpt, args)
    model, tokenizer = load_model(ckpt)
    out_name = Path(args.out).name
    if args.format == "hf":
        from lmforge.model.convert import export_hf
        from lmforge.report.model_card import model_card

        card = model_card(ckpt, model, tokenizer, out_name)
        out = export_hf(model, tokenizer, args.out, dtype=args.dtype or None, force=args.force, card=card)
    else:
        from lmforge.checkpoint.consolidated import read_checkpoint_config
        from lmforge.model.gguf import export_gguf

        chat = read_checkpoint_config(ckpt).get("stage") not in (None, "pretrain", "import")
        name = Path(out_name).stem
        out = export_gguf(
            model, tokenizer, args.out, dtype=args.dtype or "f32", name=name, force=args.force, chat=chat
        )
    print(f"exported {ckpt} -> {out} ({args.format})")
    return 0


def export_adapter(ckpt: Path, args: argparse.Namespace) -> int:
    """`--lora adapter`: the base as an hf export at --base-out, the adapters as a PEFT directory at --out."""
    from lmforge.checkpoint.adapters import is_adapter_checkpoint, read_adapters, resolve_base
    from lmforge.checkpoint.consolidated import load_model, read_checkpoint_model
    from lmforge.errors import LmforgeError
    from lmforge.model.convert import export_hf, export_lora_adapter
    from lmforge.report.model_card import model_card

    if args.format != "hf":
        raise LmforgeError("--lora adapter writes a PEFT adapter directory: it needs --format hf")
    if not is_adapter_checkpoint(ckpt):
        raise LmforgeError(
            f"{ckpt}: not a LoRA checkpoint (no adapter.safetensors); export it without --lora"
        )
    base = resolve_base(ckpt)
    info, tensors = read_adapters(ckpt)
    base_out = Path(args.base_out or f"{Path(args.out).as_posix().rstrip('/')}-base")
    model, tokenizer = load_model(base)
    card = model_card(base, model, tokenizer, base_out.name)
    export_hf(model, tokenizer, base_out, dtype=args.dtype or None, force=args.force, card=card)
    model_cfg = read_checkpoint_model(ckpt)[1]
    out = export_lora_adapter(
        model_cfg, info, tensors, args.out, base_out, dtype=args.dtype or None, force=args.force
    )
    print(f"exported {ckpt} -> {out} (PEFT adapter) on {base} -> {base_out} (hf)")
    return 0
