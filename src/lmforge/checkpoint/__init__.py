"""Checkpoints: resolve, read and write them (consolidated safetensors and sharded DCP), and load a
model from one. Every layer above the model reads checkpoints through here."""
