"""The `sft.demo` recipe section: the demo tasks built from the plays."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    """The demo tasks derived from the plays (lmforge.tasks.demo), held out by scene."""

    eval_scene_fraction: float = 0.25  # scenes of each play kept for evaluation only
    # training scenes of each play kept for GRPO's prompts only (0: GRPO asks SFT's own 4-choice
    # questions, whose answers the model has already been taught)
    rl_scene_fraction: float = 0.0
    rl_prompts: int = 1500  # GRPO prompts (4-choice which-play questions) from those scenes
    which_play: int = 3000  # SFT conversations: "which play is this passage from" (4 choices)
    who_speaks: int = 200  # SFT conversations: "who speaks these lines"
    continue_speech: int = 200  # SFT conversations: "continue this speech"
    small_talk: int = 200  # SFT conversations: an everyday question answered in verse (in character)
    preference_pairs: int = 1500  # DPO / reward training pairs
    # fraction of the pairs (training and held-out alike) of each kind (lmforge.tasks.demo.PAIR_KINDS)
    preference_mix: dict[str, float] = field(
        default_factory=lambda: {"which_play": 0.25, "echo": 0.25, "loop": 0.5}
    )
    eval_items: int = 200  # held-out 4-choice questions and held-out preference pairs, each
    passage_lines: int = 3  # verse lines shown in a "which play" passage
    # titles listed by each SFT which-play question, drawn per question from this list (held-out
    # questions and RL prompts list 4): with 1 listed the answer is a pure copy of the list
    sft_choices: list[int] = field(default_factory=lambda: [4])
    # verse lines of each SFT which-play passage, drawn per question from this list (empty:
    # passage_lines; held-out questions, DPO pairs and the prompts of rl_scene_fraction's scenes
    # show passage_lines): a short passage tells less of its play, so the answer leans on the list
    sft_passage_lines: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if not 0.0 < self.eval_scene_fraction < 1.0:
            raise ValueError("eval_scene_fraction must be in (0, 1)")
        if not 0.0 <= self.rl_scene_fraction < 1.0:
            raise ValueError("rl_scene_fraction must be in [0, 1)")
        if self.rl_prompts < 1:
            raise ValueError("rl_prompts must be at least 1")
        kinds = (
            "which_play",
            "next_line",
            "echo",
            "loop",
            "unlisted",
            "who_speaks",
        )  # lmforge.tasks.demo.PAIR_KINDS (not imported: it pulls the plays in)
        unknown = sorted(set(self.preference_mix) - set(kinds))
        if unknown:
            raise ValueError(f"preference_mix: unknown pair kind(s) {unknown} (known: {', '.join(kinds)})")
        total = sum(self.preference_mix.values())
        if min(self.preference_mix.values(), default=-1.0) < 0 or abs(total - 1.0) > 1e-6:
            raise ValueError(f"preference_mix: fractions must be >= 0 and sum to 1 (they sum to {total:g})")
        if not self.sft_choices or not all(1 <= k <= 4 for k in self.sft_choices):
            raise ValueError("sft_choices must list numbers of choices from 1 to 4")
        if self.passage_lines < 1:
            raise ValueError("passage_lines must be at least 1")
        if not all(k >= 1 for k in self.sft_passage_lines):
            raise ValueError("sft_passage_lines must list numbers of lines of at least 1")
