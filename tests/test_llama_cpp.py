"""llama.cpp itself runs our GGUF export (f32, f16, q8_0) and picks lmforge's greedy tokens.

f32 and f16 must give exactly lmforge's tokens; q8_0 those of lmforge on the same (dequantised)
weights wherever lmforge's choice is not a near tie (see the q8_0 test). The binary is llama.cpp's
`llama-simple` (greedy decoding, stops at end-of-generation tokens), built from the
llama-cpp-python sdist by `make llama-cpp` (scripts/build_llama_cpp.sh) into
~/.cache/lmforge/llama.cpp-<version>/bin; `LLAMA_CPP_BIN=DIR` points elsewhere. Without it the
test is skipped. llama-simple prints the prompt's pieces and then the new tokens' bytes, and on
stderr how many tokens it decoded: both must equal what `lmforge generate --temperature 0` made.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from interop_common import model, tokenizer

pytestmark = pytest.mark.slow
gguf = pytest.importorskip("gguf")

from lmforge.cli import main as cli  # noqa: E402
from lmforge.model.gguf import export_gguf  # noqa: E402

PROMPTS = ["ROMEO:", "To be, or not to be", "Now is the winter of", "JULIET.", "Enter Hamlet"]
NEW_TOKENS = 24


def llama_cpp_tool(name: str) -> Path | None:
    """`name` from $LLAMA_CPP_BIN, else the newest build in the cache folder of scripts/build_llama_cpp.sh."""
    if os.environ.get("LLAMA_CPP_BIN"):
        path = Path(os.environ["LLAMA_CPP_BIN"]) / name
        return path if path.is_file() else None
    cache = os.environ.get("LMFORGE_CACHE", str(Path.home() / ".cache" / "lmforge"))
    found = sorted(glob.glob(f"{cache}/llama.cpp-*/bin/{name}"))
    return Path(found[-1]) if found else None


@pytest.fixture(scope="module")
def llama_simple() -> Path:
    tool = llama_cpp_tool("llama-simple")
    if tool is None:
        pytest.skip("llama.cpp's llama-simple is not built: run `make llama-cpp` "
                    "(scripts/build_llama_cpp.sh)")
    return tool


def run_llama_simple(tool: Path, gguf_path: Path, prompt: str, n: int) -> tuple[bytes, int]:
    """(bytes of the new tokens, how many) from llama-simple's greedy decode of `prompt`."""
    res = subprocess.run([str(tool), "-m", str(gguf_path), "-n", str(n), prompt],
                         capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    decoded = re.search(rb"decoded (\d+) tokens", res.stderr)
    assert decoded, res.stderr.decode(errors="replace")[-2000:]
    assert res.stdout.startswith(prompt.encode()) and res.stdout.endswith(b"\n")
    return res.stdout[len(prompt.encode()) : -1], int(decoded.group(1))


def lmforge_generate(ckpt: Path, tmp: Path) -> list[list[int]]:
    """`lmforge generate --temperature 0`'s new tokens for PROMPTS, through its command line, without
    the stop token (llama.cpp neither prints nor counts it)."""
    from lmforge.checkpoint.consolidated import load_model

    _, tok = load_model(ckpt)
    prompts, out = tmp / "prompts.jsonl", tmp / f"{ckpt.name}.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert cli(["generate", "--model", str(ckpt), "--prompts-file", str(prompts), "--out", str(out),
                "--temperature", "0", "--max-new-tokens", str(NEW_TOKENS)]) == 0
    stops = {tok.eos_id, tok.special_ids["<|end|>"]}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [[i for i in row["token_ids"] if i not in stops] for row in rows]


def margins(ours, tok, prompt: str, ids: list[int]) -> list[float]:
    """At each step of a greedy completion: (top-1 - top-2 logit) / std of the logits."""
    import torch

    x = torch.tensor([[tok.eos_id, *tok.encode_ordinary(prompt), *ids]])
    with torch.no_grad():
        logits = ours(x)[0, -len(ids) - 1 : -1]
    top = logits.topk(2, dim=-1).values
    return ((top[:, 0] - top[:, 1]) / logits.std(dim=-1)).tolist()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    tmp = tmp_path_factory.mktemp("llama_cpp")
    ours = model(n_kv_head=2, tie=False, max_seq_len=256)
    return tmp, ours, save_model_checkpoint(ours, tokenizer(), tmp / "ckpt")


def export(ckpt: Path, path: Path, dtype: str) -> Path:
    assert cli(["export", "--model", str(ckpt), "--format", "gguf", "--out", str(path), "--dtype", dtype,
                "--force"]) == 0
    return path


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_gives_lmforge_greedy_tokens(llama_simple, checkpoint, dtype):
    tmp, _, ckpt = checkpoint
    tok = tokenizer()
    path = export(ckpt, tmp / f"m-{dtype}.gguf", dtype)
    for prompt, ids in zip(PROMPTS, lmforge_generate(ckpt, tmp)):
        # lmforge puts <|eos|> before a text prompt; llama-simple parses special tokens in its prompt
        text, n = run_llama_simple(llama_simple, path, "<|eos|>" + prompt, NEW_TOKENS)
        assert n == len(ids), (dtype, prompt)
        assert text == b"".join(tok.id_to_bytes(i) for i in ids), (dtype, prompt)


DECISIVE = 0.05  # top-1 over top-2 logit margin, in logit standard deviations, beyond q8_0's noise


def test_llama_cpp_q8_0_gives_lmforge_greedy_tokens_on_the_same_weights(llama_simple, checkpoint):
    """lmforge runs the q8_0 file's weights (each matrix through gguf's quantise + dequantise); llama.cpp
    also rounds the activations to 8 bits in its q8_0 dot products, so its choice can differ only where
    lmforge's was a near tie. Tokens must match up to the first step whose margin is below DECISIVE,
    and at least a third of all tokens must be compared that way."""
    import torch

    from lmforge.checkpoint.consolidated import save_model_checkpoint

    tmp, ours, ckpt = checkpoint
    tok = tokenizer()
    path = export(ckpt, tmp / "m-q8_0.gguf", "q8_0")
    q8 = model(n_kv_head=2, tie=False, max_seq_len=256)
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for p in q8.parameters():
            if p.ndim == 2:
                w = p.numpy()
                back = gguf.quants.dequantize(gguf.quants.quantize(w, q8_0), q8_0)
                p.copy_(torch.from_numpy(back.reshape(w.shape)))
    q8_ckpt = save_model_checkpoint(q8, tok, tmp / "ckpt-q8_0")
    compared = 0
    for prompt, ids in zip(PROMPTS, lmforge_generate(q8_ckpt, tmp)):
        text, _ = run_llama_simple(llama_simple, path, "<|eos|>" + prompt, NEW_TOKENS)
        steps = margins(q8, tok, prompt, ids)
        sure = next((i for i, m in enumerate(steps) if m < DECISIVE), len(ids))
        assert text.startswith(b"".join(tok.id_to_bytes(i) for i in ids[:sure])), (prompt, sure)
        compared += sure
    print(f"\nq8_0: {compared} of {len(PROMPTS) * NEW_TOKENS} tokens compared, all equal")  # docs/interop.md
    assert compared >= len(PROMPTS) * NEW_TOKENS / 3, compared


def test_every_accepted_type_loads_and_decodes_in_llama_cpp(llama_simple, checkpoint):
    """A file in each type the gguf package writes loads and decodes in llama.cpp (exit 0)."""
    from lmforge.model.gguf import gguf_types

    tmp, ours, _ = checkpoint
    tok = tokenizer()
    for dtype in gguf_types():
        path = export_gguf(ours, tok, tmp / f"any-{dtype}.gguf", dtype=dtype, force=True)
        run_llama_simple(llama_simple, path, "<|eos|>ROMEO:", 4)
