"""Chat with a model in the terminal: the conversation is kept, replies stream as they are made.

Type a message and press Enter; a message of several lines goes between two lines that are
three double quotes (\"\"\"), as in Ollama. Commands: /reset starts over (the --system prompt
stays), /exit (or Ctrl-D) quits; Ctrl-C during a reply stops that reply. Messages are rendered with
the chat template (<|bos|> <|system|>...<|end|> <|user|>...<|end|> <|assistant|>) and a reply
ends at <|end|>. When the conversation outgrows the model's context, the oldest turns are
dropped (the system prompt is kept). Works best with a model after `lmforge sft`.

examples:
  lmforge chat --model runs/shakespeare
  lmforge chat --model runs/shakespeare/sft --system "Answer as Hamlet." --temperature 0.6
  printf 'Who is Hamlet?\\n/exit\\n' | lmforge chat --model runs/shakespeare --seed 0
  printf '\"\"\"\\nWhich play?\\n\\nROMEO:\\nBut soft!\\n\"\"\"\\n' | lmforge chat --model M --temperature 0
"""

from __future__ import annotations

import argparse
import sys

from lmforge.commands.generate import add_sampling_arguments, load_engine


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p, temperature=0.6, max_new_tokens=256)
    p.add_argument("--system", default="", help="system prompt (default: none)")


def fit_history(engine, messages: list[dict], reserve: int) -> list[dict]:
    """Drop the oldest user/assistant turns until the prompt leaves `reserve` tokens of context."""
    limit = engine.max_seq_len - reserve
    head = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(head) :]
    while (
        len(turns) > 1
        and len(engine.tokenizer.render_chat(head + turns, add_generation_prompt=True)[0]) > limit
    ):
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return head + turns


BLOCK = '"""'  # a line of its own opens and closes a message of several lines


def read_message(read) -> str:
    """The next message from `read()` (input): one line, or the lines between two BLOCK lines.
    EOFError inside a block ends the block."""
    line = read()
    if line.strip() != BLOCK:
        return line
    lines: list[str] = []
    while True:
        try:
            more = read()
        except EOFError:
            break
        if more.strip() == BLOCK:
            break
        lines.append(more)
    return "\n".join(lines)


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.inference import SamplingParams

    engine, params = load_engine(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print("lmforge chat: /reset to start over, /exit or Ctrl-D to quit", file=sys.stderr)
    if args.compile:
        print("(--compile: a reply of a new length class first compiles its decode step)", file=sys.stderr)
    turn = 0
    while True:
        try:
            line = read_message(lambda: input("you> " if interactive else ""))
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(system)
            print("(conversation reset)", flush=True)
            continue
        history.append({"role": "user", "content": line})
        kept = fit_history(engine, history, reserve=min(params.max_new_tokens, engine.max_seq_len // 2))
        if len(kept) < len(history):
            print(f"(dropped {len(history) - len(kept)} old messages to fit the context)", file=sys.stderr)
            history = kept
        seed = None if params.seed is None else params.seed + turn
        turn_params = SamplingParams(**{**vars(params), "seed": seed})
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        stream = engine.stream_chat(history, turn_params)
        try:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stream.close()
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": stream.completion.text})
        turn += 1
    return 0
