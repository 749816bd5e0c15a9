"""Inference: the generation engine (KV cache, batching, sampling, stop strings, streaming, chat).

    from lmforge.inference import Engine, SamplingParams, generate
    engine = Engine(model, tokenizer)
    engine.generate([ids_a, ids_b], SamplingParams(max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0))
    for delta in engine.stream(ids, SamplingParams(stop=["\\n\\n"])): print(delta, end="")
"""

from lmforge.inference.engine import Completion, Engine, TextStream, generate
from lmforge.inference.sampling import SamplingParams, filter_logits, sample_next

__all__ = ["Completion", "Engine", "SamplingParams", "TextStream", "filter_logits", "generate", "sample_next"]
