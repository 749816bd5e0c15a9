"""GPU correctness of the model's fast paths: bf16 autocast, torch.compile, flash attention.

Each check compares against an fp32 eager reference on fresh random inputs by relative error
‖out − ref‖ / ‖ref‖ (bf16 operands are expected between 1e-3 and 1e-2; NaN never passes).
Run on a CUDA machine: `python benchmarks/gpu_checks.py` (part of benchmarks/gpu.sh).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


def check_sdpa_backends(results: dict) -> None:
    """Flash and memory-efficient kernels against the math kernel, causal, with and without GQA."""
    torch.manual_seed(0)
    for n_kv in (12, 4):
        q = torch.randn(4, 12, 1024, 64, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(4, n_kv, 1024, 64, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(4, n_kv, 1024, 64, device="cuda", dtype=torch.bfloat16)
        gqa = n_kv != 12
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=gqa)
        for name, backend in (
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ):
            key = f"sdpa_{name}{'_gqa' if gqa else ''}_rel_err"
            try:
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
                results[key] = rel_err(out, ref)
            except RuntimeError as e:
                results[key] = f"unavailable: {str(e).splitlines()[0][:120]}"


def check_model(results: dict, arch: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, preset="124m", vocab_size=50304, max_seq_len=1024)
    model = Transformer(cfg).cuda().eval()
    x = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager = model(x)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                flash = model(x)
        compiled_model = torch.compile(model)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            compiled = compiled_model(x)
    results[f"{arch}_bf16_eager_rel_err"] = rel_err(eager, ref)
    results[f"{arch}_bf16_flash_rel_err"] = rel_err(flash, ref)
    results[f"{arch}_bf16_compiled_rel_err"] = rel_err(compiled, ref)
    # The loss is what training sees: compare it too.
    y = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    loss_ref = F.cross_entropy(ref.flatten(0, 1), y.flatten()).item()
    loss_cmp = F.cross_entropy(compiled.float().flatten(0, 1), y.flatten()).item()
    results[f"{arch}_loss_fp32"] = loss_ref
    results[f"{arch}_loss_bf16_compiled"] = loss_cmp


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    check_sdpa_backends(results)
    for arch in ("llama", "gpt2"):
        check_model(results, arch)
    print(json.dumps(results, indent=2))
    bad = [k for k, v in results.items() if k.endswith("rel_err") and isinstance(v, float) and not v < 2e-2]
    if bad:
        print(f"FAILED: relative error above 2e-2 for {bad}")
        return 1
    print("gpu checks passed: bf16, flash attention and torch.compile agree with fp32 within 2e-2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
