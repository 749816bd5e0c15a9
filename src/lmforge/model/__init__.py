"""The model: configuration, the transformer, and loading a trained one from disk."""

from lmforge.model.config import PRESETS, ModelConfig, flops_per_token, num_params

__all__ = ["PRESETS", "ModelConfig", "Transformer", "KVCache", "flops_per_token", "load_model", "num_params"]


def __getattr__(name: str):
    # torch-heavy names load lazily so `import lmforge.model` stays cheap for the CLI.
    if name in ("Transformer", "KVCache"):
        from lmforge.model import transformer

        return getattr(transformer, name)
    if name == "load_model":
        from lmforge.train.checkpoint import load_model

        return load_model
    raise AttributeError(name)
