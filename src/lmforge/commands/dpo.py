"""Direct preference optimization (DPO) from preference pairs.

Starts from dpo.train.init_from or the run's latest sft (else pretrain) checkpoint and writes
RUN_DIR/dpo/checkpoints/step_NNNNNN. Data: dpo.data, JSONL of {"prompt" | "messages",
"chosen", "rejected"}; with none, the demo pairs from the plays (true next line chosen, a line
of another play rejected). Loss: sigmoid with dpo.beta (0.1), robust DPO with
dpo.label_smoothing, or dpo.loss ipo. The reference is a frozen copy of the starting model, or
its log-probs computed once (dpo.precompute_ref true). Logged: rewards/chosen, rewards/rejected,
rewards/margins, rewards/accuracies.

examples:
  lmforge dpo recipes/shakespeare.yaml
  lmforge dpo shakespeare --dpo.data '[prefs.jsonl]' --dpo.beta 0.2
  lmforge dpo shakespeare --dpo.loss ipo --dpo.train.max_steps 100
"""

from __future__ import annotations

from lmforge.commands._posttrain import posttrain_verb

ACCEPTS_OVERRIDES = True

add_arguments, main = posttrain_verb("dpo")
