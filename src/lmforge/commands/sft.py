"""Supervised fine-tuning: chat conversations, loss on the assistant's tokens only.

Starts from sft.train.init_from or the run's latest pretrain checkpoint and writes
RUN_DIR/sft/checkpoints/step_NNNNNN. Data: sft.data, JSONL files of {"messages": [...]} or
Alpaca {"instruction", "input", "output"} lines, rendered with the tokenizer's chat template
(<|bos|> then <|role|> content <|end|> per message). With no data files the demo tasks built
from the plays are used, and the held-out 4-choice "which play" accuracy and preference
accuracy are printed before and after. Short conversations are packed (sft.packing) with no
attention across them.

examples:
  lmforge sft recipes/shakespeare.yaml
  lmforge sft shakespeare --sft.data '[chats.jsonl]' --sft.train.max_steps 500
  lmforge sft shakespeare --sft.train.init_from runs/shakespeare/pretrain --sft.train.lr 1e-4
"""

from __future__ import annotations

from lmforge.commands._posttrain import posttrain_verb

ACCEPTS_OVERRIDES = True

add_arguments, main = posttrain_verb("sft")
