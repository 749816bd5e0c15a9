"""Reinforcement learning with GRPO: sample a group of completions per prompt, reward them,
and push the policy towards the better-than-the-group ones (clipped ratio, optional KL).

Starts from rl.train.init_from or the run's latest dpo / sft / pretrain checkpoint and writes
RUN_DIR/rl/checkpoints/step_NNNNNN. The reward is rl.reward: a Python function
"package.module:function" called as f(prompts, completions, **columns) -> list of floats, or
"model" for the reward model of `lmforge reward` (rl.reward_model, default RUN_DIR/reward).
Prompts: rl.data JSONL of {"prompt" | "messages", ...extra columns passed to the function};
with none, the demo "which play" questions rewarded 1 for the right title.

examples:
  lmforge rl recipes/shakespeare.yaml --rl.train.max_steps 20
  lmforge rl shakespeare --rl.reward mypkg.rewards:length_penalty --rl.data '[prompts.jsonl]'
  lmforge rl shakespeare --rl.reward model --rl.beta 0.04 --rl.num_generations 4
"""

from __future__ import annotations

from lmforge.commands._posttrain import posttrain_verb

ACCEPTS_OVERRIDES = True

add_arguments, main = posttrain_verb("rl")
