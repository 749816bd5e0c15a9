"""Tasks shared by post-training and evaluation: chat data, and the demo tasks built from the plays
(as nanochat keeps its tasks apart from the trainer)."""
