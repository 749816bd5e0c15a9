"""The stages of `lmforge run`: each is a function `(recipe, run_dir)` that composes the layers below."""
