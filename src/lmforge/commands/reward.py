"""Train a reward model: the transformer plus a scalar head, Bradley-Terry loss on preference pairs.

Starts from reward.train.init_from or the run's latest sft (else pretrain) checkpoint and writes
RUN_DIR/reward/checkpoints/step_NNNNNN (a model checkpoint plus value_head.safetensors). The
reward of a sequence is read at its last token. Data: reward.data (the same JSONL as dpo);
with none, the demo pairs, and the accuracy on held-out pairs is printed (chance 50%).

examples:
  lmforge reward recipes/shakespeare.yaml
  lmforge reward shakespeare --reward.data '[prefs.jsonl]' --reward.train.max_steps 300
"""

from __future__ import annotations

from lmforge.commands._posttrain import posttrain_verb

ACCEPTS_OVERRIDES = True

add_arguments, main = posttrain_verb("reward")
