"""The model: configuration and the transformer (loading a checkpoint is `lmforge.checkpoint`)."""

from lmforge.model.config import PRESETS, ModelConfig, flops_per_token, num_params

__all__ = ["PRESETS", "ModelConfig", "Transformer", "flops_per_token", "num_params"]


def __getattr__(name: str):
    # torch-heavy names load lazily so `import lmforge.model` stays cheap for the CLI.
    if name == "Transformer":
        from lmforge.model import transformer

        return getattr(transformer, name)
    raise AttributeError(name)
