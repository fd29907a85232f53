"""Value checks of what a user hands the CLI, before anything is loaded: one ``hfcoop:`` line naming the field.

Command-line flags are typed by argparse, but a YAML recipe's values become the parser's *defaults* and reach
the dataclasses as YAML typed them: ``max_steps: 2.5`` trained 2 steps, ``learning_rate: [1]`` and
``seed: null`` failed deep inside torch. :func:`check_recipe_values` compares each YAML value with its field's
type annotation (with argparse's own conversion of strings), :func:`check_ranges` the parsed values with the
ranges below, :func:`length_budget_problem` is the one rule for prompt + completion lengths against a
model's positions (training and sampling alike), and :func:`check_mcts_simulations` the one rule for an MCTS search's
simulations (``GCNConfig`` and ``mcts_decode`` alike).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import types
import typing
from typing import Any, Callable, Iterable


class InputError(ValueError):
    """Bad user input; the CLI prints its message as its one ``hfcoop:`` line."""


# ------------------------------------------------------------------------------------------------ field types
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value!r:.60} ({type(value).__name__})"


def _string_to_bool(value: str) -> bool | None:
    """transformers' ``string_to_bool``: the spellings a boolean flag accepts (None: not a boolean)."""
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    return None


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is acceptable for a field annotated ``annotation`` once argparse has converted it (a
    YAML string default goes through the field's argparse ``type``, so ``max_steps: "3"`` is 3)."""
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str`: the string must still name a member
            return any(_fits(value, e) for e in enums)
        return any(_fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, set):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        if item is str and isinstance(value, str):  # one name, as TRL's recipes write `lora_target_modules: all-linear`
            return True
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is list:
        return isinstance(value, list)
    if annotation is bool:
        return isinstance(value, bool) or (isinstance(value, str) and _string_to_bool(value) is not None)
    if annotation is int:
        if isinstance(value, str):
            try:
                int(value)
            except ValueError:
                return False
            return True
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return False
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or any(value == m.value and type(value) is type(m.value) for m in annotation)
    return True  # a class hfcoop does not know how to check (e.g. ParallelismConfig): the dataclass decides


def _expected(annotation: Any) -> str:
    """``int``, ``a float``, ``one of linear, cosine, ...``: what a field takes, in words."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:  # `SchedulerType | str`: the string must still be a member's value
            return _expected(enums[0])
        words = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin in (list, tuple, set):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return f"a list of {_expected(item)}" if item is not Any else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in annotation)
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _annotation(cls: type, name: str) -> Any:
    try:
        return typing.get_type_hints(cls)[name]
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked
        return Any


def field_problem(cls: type, field: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field`` of ``cls`` (its type, its ``choices``), or None."""
    annotation = _annotation(cls, field.name)
    choices = field.metadata.get("choices")
    if choices and value not in choices and not (value is None and field.default is None):
        return f"`{field.name}` must be one of {', '.join(map(str, choices))}, got {_describe(value)}."
    if not _fits(value, annotation):
        return f"`{field.name}` must be {_expected(annotation)}, got {_describe(value)}."
    return None


def check_recipe_values(dataclass_types: Iterable[type], recipe: dict[str, Any], source: str = "the recipe") -> None:
    """Every recipe value has its field's type; the first that has not is refused, naming the field.

    Keys no dataclass has are left to the parser, which lists them."""
    fields = {f.name: (cls, f) for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}
    for key, value in recipe.items():
        if key in fields:
            problem = field_problem(*fields[key], value)
            if problem:
                raise InputError(f"{source}: {problem}")


def check_config_file(dataclass_types: Iterable[type], config: str | None) -> None:
    """:func:`check_recipe_values` on a ``--config`` YAML file (a file that does not parse is left to the parser,
    whose error names the YAML problem)."""
    if config is None or not os.path.isfile(config):
        return
    import yaml

    try:
        with open(config) as f:
            recipe = yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return
    if isinstance(recipe, dict):
        check_recipe_values(dataclass_types, recipe, f"the --config file {config}")


# ------------------------------------------------------------------------------------------------ ranges
def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low:g}"


_POSITIVE: tuple[Callable[[Any], bool], str] = ((lambda v: v > 0), "greater than 0")
_SEED: tuple[Callable[[Any], bool], str] = ((lambda v: 0 <= v < 2**32), "between 0 and 2**32 - 1")

# Ranges the dataclasses do not check themselves, whose bad values otherwise fail deep inside torch, numpy or the
# training loop, or silently do something else (``--num_samples 0`` drew 10 samples): field -> (test on a
# non-None number, requirement in words). Fields of the same name mean the same in every verb.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": _at_least(0),
    "weight_decay": _at_least(0),
    "max_grad_norm": _at_least(0),
    "warmup_steps": _at_least(0),
    "num_train_epochs": _at_least(0),
    "per_device_train_batch_size": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "seed": _SEED,
    "data_seed": _SEED,
    "max_train_samples": _at_least(1),
    "max_eval_samples": _at_least(1),
    "max_prompt_length": _at_least(1),
    "max_completion_length": _at_least(1),
    "tiny_model_layers": _at_least(1),
    "tiny_model_hidden": _at_least(1),
    "tiny_model_vocab_size": _at_least(1),
    "tiny_model_positions": _at_least(2),
    "quality_samples": _at_least(0),
    # a value below 1 is a fraction of the run's steps, rounded up: 0 or less made "integer modulo by zero"
    "logging_steps": _POSITIVE,
    "save_steps": _POSITIVE,
    "eval_steps": _POSITIVE,
    # generate / evaluate / sweep
    "num_samples": _at_least(1),
    "batch_size": _at_least(1),
    "max_new_tokens": _at_least(1),
    "temperature": _POSITIVE,
    "temperatures": _POSITIVE,
    "top_k": _at_least(0),
    "top_p": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "num_candidates": _at_least(1),
    "num_simulations": _at_least(1),
}


def check_ranges(*parsed: Any) -> None:
    """The parsed dataclasses' numbers (flags and YAML alike; each item of a list) are finite and in
    :data:`RANGES`; the first bad one is refused, naming its field."""
    for instance in parsed:
        for field in dataclasses.fields(instance):
            value = getattr(instance, field.name)
            for number in value if isinstance(value, list) else [value]:
                if not isinstance(number, (int, float)) or isinstance(number, bool):
                    continue
                test, words = RANGES.get(field.name, (lambda v: True, ""))
                if not math.isfinite(number) or not test(number):
                    raise InputError(f"`{field.name}` must be {words or 'a finite number'}, got {number!r}.")
            if field.name == "temperatures" and isinstance(value, list) and not value:
                raise InputError("`temperatures` needs at least one temperature.")


def exits_on_input_error(verb: Callable[..., Any]) -> Callable[..., Any]:
    """A CLI verb whose :class:`InputError` ends the command with its one ``hfcoop:`` line (exit 1), also when the
    verb is called directly rather than through ``hfcoop.cli.main``."""
    import functools

    @functools.wraps(verb)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return verb(*args, **kwargs)
        except InputError as err:
            raise SystemExit("hfcoop: " + " ".join(str(err).split())) from None

    return wrapped


def require(ok: bool, message: str) -> None:
    """An :class:`InputError` with ``message`` unless ``ok``."""
    if not ok:
        raise InputError(message)


# ------------------------------------------------------------------------------------------------ lengths
def length_budget_problem(
    positions: int | None,
    prompt_length: int | None,
    completion_length: int,
    prompt_name: str = "max_prompt_length",
    completion_name: str = "max_completion_length",
) -> str | None:
    """Why ``prompt_length`` prompt tokens + ``completion_length`` new tokens do not fit ``positions`` (None: they
    do). A completion needs at least one prompt token beside it (BOS for unconditional rows), so the completion
    budget is at most ``positions - 1``, and the prompt budget then ``positions - completion_length``."""
    if not positions:
        return None
    if completion_length < 1:
        return f"{completion_name} must be at least 1, got {completion_length}."
    if completion_length > positions - 1:
        return (f"{completion_name} ({completion_length}) leaves no room for a prompt token in the model's {positions} "
                f"positions: set {completion_name} to at most {positions - 1}.")  # fmt: skip
    if prompt_length is not None and prompt_length < 1:
        return f"{prompt_name} must be at least 1, got {prompt_length}."
    if prompt_length is not None and prompt_length + completion_length > positions:
        return (f"{prompt_name} ({prompt_length}) + {completion_name} ({completion_length}) must fit the model's "
                f"{positions} positions: set {prompt_name} to at most {positions - completion_length} (or lower "
                f"{completion_name}).")  # fmt: skip
    return None


def check_output_path(path: str | None, flag: str) -> None:
    """An output file's folder exists and the path is no folder: checked before any sample is drawn."""
    if not path:
        return
    require(not os.path.isdir(path), f"{flag} '{path}' is a folder: give a file path, e.g. {os.path.join(path, 'out.jsonl')}.")
    folder = os.path.dirname(os.path.abspath(path))
    require(os.path.isdir(folder), f"{flag} '{path}': the folder {folder} does not exist. Create it first.")
    require(os.access(folder, os.W_OK), f"{flag} '{path}': the folder {folder} cannot be written.")


def check_mcts_simulations(num_simulations: int, top_k: int, names: tuple[str, str] = ("num_simulations", "top_k")
                           ) -> None:  # fmt: skip
    """MCTS searches only when every child of the root gets a value from D: the first simulation expands the root
    and each of its ``top_k`` children needs one visit, so ``num_simulations`` must exceed ``top_k``. With fewer,
    the pick ignores D: uniform among the top-k with 1 simulation (no child visited), greedy on the prior with 2."""
    if num_simulations <= top_k:
        sims, k = names
        raise ValueError(
            f"MCTS with {sims}={num_simulations} and {k}={top_k} is not a search: the first simulation expands the "
            f"root and each of its {top_k} children needs a visit before D's value can change the pick (with 1 "
            f"simulation it is uniform among the top-k, with 2 greedy on the prior). Use {sims} >= {top_k + 1} "
            f"(a few times more lets D steer the visits) or a smaller {k}."
        )
