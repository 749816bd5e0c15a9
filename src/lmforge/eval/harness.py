"""lmforge models inside EleutherAI's lm-evaluation-harness (lm-eval 0.4.x): the "lmforge" model.

    lm_eval --model lmforge --model_args path=runs/shakespeare --tasks hellaswag --limit 100

lm-eval 0.4.x finds models only in its own registry (no entry-point discovery), so something
must register "lmforge" before its CLI resolves the name. Three ways, pick one:

* `lmforge eval --register-lm-eval` once per environment: writes `lmforge-lm-eval.pth` into
  site-packages; Python then runs `lmforge.eval.lm_eval_hook` at startup, which registers
  "lmforge" (lazily, only if lm_eval is imported). Afterwards plain `lm_eval --model lmforge` works.
* `python -m lmforge.eval.harness ARGS...`: lm-eval's own CLI with "lmforge" registered.
* Python: `import lmforge.eval.harness` (registers on import), or pass an instance:
  `lm_eval.simple_evaluate(model=LmforgeLM(path=CKPT), tasks=[...])`.

Scoring is lmforge.inference.scoring (the same code as `lmforge eval`): loglikelihood through lm-eval's
own `_encode_pair`, loglikelihood_rolling with lm-eval's disjoint windows, generate_until greedy
through lmforge.inference.Engine. model_args: path (checkpoint, stage or run dir), device,
dtype (float32|bfloat16|float16), batch_size, max_gen_toks.
"""

from __future__ import annotations

import sys

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry

from lmforge.inference import scoring


class LmforgeLM(TemplateLM):
    """An lmforge checkpoint as an lm-eval `LM`."""

    def __init__(
        self,
        path: str | None = None,
        model=None,
        tokenizer=None,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 16,
        max_gen_toks: int = 256,
        **kwargs,
    ) -> None:
        super().__init__()
        if model is None:
            if not path:
                raise ValueError("lmforge model needs path=CHECKPOINT (a checkpoint, stage or run directory)")
            import torch

            from lmforge.checkpoint.consolidated import load_model

            if str(device).startswith("cuda") and not torch.cuda.is_available():
                device = "cpu"  # lm-eval's command line asks for cuda by default

            model, tokenizer = load_model(path, device=device, dtype=getattr(torch, dtype) if dtype else None)
        self.model, self.lmforge_tokenizer = model.eval(), tokenizer
        # lm-eval passes batch_size through as given on its command line ("auto" has no meaning here)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        tok = self.lmforge_tokenizer
        return tok.eos_id if tok.eos_id is not None else scoring.prefix_token_id(tok)

    @property
    def prefix_token_id(self) -> int:
        return scoring.prefix_token_id(self.lmforge_tokenizer)

    @property
    def max_length(self) -> int:
        return int(self.model.cfg.max_seq_len)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.lmforge_tokenizer.encode_ordinary(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.lmforge_tokenizer.decode(tokens)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = scoring.token_loglikelihoods(self.model, pairs, self.batch_size)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        results = scoring.rolling_loglikelihoods(self.model, self.lmforge_tokenizer, texts, self.batch_size)
        for text, res in zip(texts, results):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), res)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lmforge.eval.runner import generate_until

        # requests sharing generation settings run as one batch, results back in request order
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            eot = self.tok_decode([self.eot_token_id])
            if eot not in until:
                until.append(eot)
            key = (tuple(until), int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)))
            groups.setdefault(key, []).append(i)
            settings.append(context)
        out = [""] * len(requests)
        for (until, max_gen), idxs in groups.items():
            texts = generate_until(
                self.model, self.lmforge_tokenizer, [settings[i] for i in idxs], until, max_gen
            )
            for i, text in zip(idxs, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def register() -> None:
    """Put "lmforge" in lm-eval's model registry (idempotent)."""
    import lm_eval.models  # noqa: F401  (lm-eval fills its built-in names only into an empty registry)

    if "lmforge" not in model_registry:
        model_registry.register("lmforge", target=LmforgeLM)


register()


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with "lmforge" registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
