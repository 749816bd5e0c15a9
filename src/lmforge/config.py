"""Generic dataclass configuration: YAML reading, dotted overrides, validation, hashing.

Every subsystem owns the dataclass of its recipe section (``lmforge.model.config.ModelConfig``
and so on); `lmforge.recipe` composes them. This module knows no section: it loads YAML, applies
``--section.key value`` overrides and validates, so an unknown key or a wrong type is an
`LmforgeError` naming the key and the file and suggesting the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lmforge.errors import LmforgeError


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LmforgeError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmforgeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """`['--train.lr', '3e-4', '--model.n_layer=4']` -> [('train.lr', 3e-4), ('model.n_layer', 4)]."""
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise LmforgeError(f"unexpected argument {arg!r}: overrides look like --section.key VALUE")
        key = arg[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise LmforgeError(f"override --{key} needs a value")
            text = args[i + 1]
            i += 2
        out.append((key.replace("-", "_"), parse_scalar(text)))
    return out


def parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise LmforgeError(f"{source}: cannot set {key}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value


# ---------------------------------------------------------------------------- validation

# Names other training tools (Hugging Face Trainer, TRL, Axolotl) give recipe keys: an unknown key
# with one of these names is answered with the lmforge key, or how lmforge derives the value.
ALIASES: dict[str, str] = {
    "learning_rate": "lmforge calls it 'train.lr'",
    "lr_scheduler_type": "lmforge calls it 'train.schedule' (cosine, wsd or constant)",
    "per_device_train_batch_size": "lmforge calls it 'train.micro_batch' (sequences per device)",
    "max_seq_length": "lmforge calls it 'train.seq_len' (and model.max_seq_len for the context)",
    "max_length": "lmforge calls it 'train.seq_len'",
    "num_train_epochs": (
        "lmforge counts optimizer steps: set 'train.max_steps' "
        "(epochs x dataset tokens / train.batch_tokens) or a time budget 'train.max_minutes'"
    ),
    "max_steps": "it is 'train.max_steps'",
    "warmup_steps": "it is 'train.warmup_steps'",
    "weight_decay": "it is 'train.weight_decay'",
    "gradient_accumulation_steps": (
        "lmforge derives it: train.batch_tokens / (train.micro_batch x train.seq_len x data-parallel "
        "ranks); set 'train.batch_tokens' (or force it with 'train.grad_accum')"
    ),
    "max_grad_norm": "lmforge calls it 'train.grad_clip'",
    "adam_beta1": "lmforge calls it 'train.beta1'",
    "adam_beta2": "lmforge calls it 'train.beta2'",
    "bf16": "lmforge calls it 'train.dtype' (auto, float32, bfloat16, float16)",
    "gradient_checkpointing": "lmforge calls it 'train.activation_checkpointing'",
    "logging_steps": "lmforge calls it 'train.log_every'",
    "eval_steps": "lmforge calls it 'train.eval_every'",
    "save_steps": "lmforge calls it 'train.checkpoint_every'",
    "save_total_limit": "lmforge calls it 'train.keep_last'",
    "report_to": "lmforge has 'train.tensorboard' and 'train.wandb.mode'",
    "output_dir": "lmforge calls it 'run_dir' (default runs/<name>)",
    "num_hidden_layers": "lmforge calls it 'model.n_layer'",
    "hidden_size": "lmforge calls it 'model.d_model'",
    "num_attention_heads": "lmforge calls it 'model.n_head'",
    "num_key_value_heads": "lmforge calls it 'model.n_kv_head'",
    "intermediate_size": "lmforge calls it 'model.d_ff'",
}


def from_dict(cls: type, data: Any, where: str, source: str) -> Any:
    """Build dataclass `cls` from plain data, checking keys and types recursively."""
    label = where or "the recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LmforgeError(f"{source}: {label} must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            if str(key) in ALIASES:
                hint = f"; {ALIASES[str(key)]}"
            valid = ", ".join(names)
            raise LmforgeError(f"{source}: unknown key {dotted!r}{hint} (valid keys under {label}: {valid})")
        kwargs[key] = coerce(hints[key], value, dotted, source)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"{source}: {label}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, AssertionError) as e:
            raise LmforgeError(f"{source}: {label}: {e}") from None
    return obj


def coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> LmforgeError:
        return LmforgeError(f"{source}: {key} must be {expected}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key, source)
            except LmforgeError as e:
                errors.append(str(e))
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise LmforgeError(f"{source}: {key} must be one of {list(args)}, got {value!r}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, source)
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        item_t = args[0] if args else Any
        items = [coerce(item_t, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise fail("an integer")
    if tp is float:
        if isinstance(value, bool):
            raise fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail("a string")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------------- output


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def config_hash(obj: Any) -> str:
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def logging_only(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field that only changes what is logged, never what is computed (TensorBoard, W&B,
    the logging cadence): `settings_dict` leaves it out, so switching it never re-runs a stage or
    refuses a resume. Takes `dataclasses.field`'s arguments."""
    metadata = {**kwargs.pop("metadata", {}), "logging_only": True}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def is_logging_only(cls: type, name: str) -> bool:
    return bool(_field_metadata(cls, name).get("logging_only"))


def settings_dict(obj: Any) -> Any:
    """`to_dict` without the logging-only fields, at any depth: what a stage's or a run's hash covers."""
    if dataclasses.is_dataclass(obj):
        cls = type(obj)
        return {
            f.name: settings_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not is_logging_only(cls, f.name)
        }
    if isinstance(obj, (list, tuple)):
        return [settings_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: settings_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------- field descriptions


def field_description(cls: type, name: str) -> str:
    """One line about field `name` of dataclass `cls`: its `metadata["help"]`, else its trailing
    `# comment`, else the comment lines right above it. Looked up along the class's bases, so a
    subclass that only changes a default keeps the base's description."""
    help_text = _field_metadata(cls, name).get("help")
    if help_text:
        return str(help_text)
    for klass in cls.__mro__:
        text = _source_comments(klass).get(name)
        if text:
            return text
    return ""


def _field_metadata(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return f.metadata
    return {}


@functools.cache
def _source_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class body's source (trailing, else the block above it)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []  # full-line comments since the last blank line or statement
    depth = 0  # indentation blocks: 1 is the class body
    line_start, name, trailing = True, "", ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT and depth <= 1 and tok.start[1] > 0:  # before INDENT: depth 0
            if line_start:
                above.append(tok.string.lstrip("#").strip())
            elif name and not trailing:
                trailing = tok.string.lstrip("#").strip()
        elif tok.type == tokenize.NL and line_start:
            if not tok.line.strip():
                above = []
        elif tok.type == tokenize.NEWLINE:
            if name and depth == 1:
                comments[name] = trailing or " ".join(above)
            above, name, trailing = [], "", ""
            line_start = True
            continue
        elif tok.type == tokenize.NAME and line_start and depth == 1:
            name = tok.string
        if tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.COMMENT):
            line_start = False
    return comments


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def describe_fields(cls: type, prefix: str, values: Any = None) -> list[tuple[str, Any, str]]:
    """Flatten a section dataclass into (dotted key, value, description) rows for `--help`: the
    values of `values` (an instance of `cls`, e.g. a loaded recipe's section), else the defaults."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(values, f.name) if values is not None else field_default(f)
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe_fields(hints[f.name], key, value))
            continue
        rows.append((key, value, field_description(cls, f.name)))
    return rows
