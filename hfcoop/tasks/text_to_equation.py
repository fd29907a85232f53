"""The synthetic text-to-equation task of GENERE (Sec. 3.2) and its black-box base generators.

Real data comes from one generator family: "compute one plus three minus two" -> "X = 1 + 3 - 2" (numbers
-20..20, 2-3 numbers, plus/minus). :data:`EQUATION_GENERATORS` holds K = 5 base generators, of which exactly one
(:func:`compute_words`, index :data:`MATCHING_GENERATOR`) matches the real data; the others are plausible
distractors that a domain expert could have written (K = 5):

=====  ==========================  =========================================================================
index  generator                   differs from the real data in
=====  ==========================  =========================================================================
0      ``compute_words``           nothing (the matching generator)
1      ``compute_times_divided``   the operators: "times" / "divided by" -> ``*`` / ``/``
2      ``compute_large_numbers``   the number range: 21 <= abs(n) <= 99
3      ``compute_answer_last``     the output format: same prompts, but "1 + 3 - 2 = X"
4      ``add_to_subtract_from``    the word order: "add three to one then subtract two from it" -> "X = 1 + 3 - 2"
=====  ==========================  =========================================================================

Every generator is a black box ``generator(rng: random.Random) -> {"prompt": str, "completion": str}``, the
contract of :class:`hfcoop.GenereTrainer`. This module also builds the recipe of ``recipes/genere`` end to end
(:func:`run_text_to_equation`), which the tests and ``benchmarks/genere_fig1.py`` share.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_to_words(n: int) -> str:
    """-99..99 in words: ``-5 -> "negative five"``, ``42 -> "forty two"``."""
    if not -99 <= n <= 99:
        raise ValueError(f"number_to_words covers -99..99, got {n}.")
    if n < 0:
        return "negative " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def _numbers(rng: random.Random, low: int = -20, high: int = 20, min_abs: int = 0) -> list[int]:
    count = rng.choice((2, 3))
    values = []
    while len(values) < count:
        n = rng.randint(low, high)
        if abs(n) >= min_abs:
            values.append(n)
    return values


def _equation(numbers: list[int], symbols: list[str]) -> str:
    parts = [str(numbers[0])]
    for symbol, n in zip(symbols, numbers[1:]):
        parts += [symbol, str(n)]
    return " ".join(parts)


_PLUS_MINUS = (("plus", "+"), ("minus", "-"))


def _compute(rng: random.Random, operators: tuple[tuple[str, str], ...], **number_range: int) -> tuple[str, str, list]:
    """(words, equation, numbers) of one random expression."""
    numbers = _numbers(rng, **number_range)
    ops = [rng.choice(operators) for _ in numbers[1:]]
    words = [number_to_words(numbers[0])]
    for (word, _), n in zip(ops, numbers[1:]):
        words += [word, number_to_words(n)]
    return " ".join(words), _equation(numbers, [s for _, s in ops]), numbers


def compute_words(rng: random.Random) -> dict[str, str]:
    """The real data's family: "compute one plus three minus two" -> "X = 1 + 3 - 2" (Sec. 3.2)."""
    text, equation, _ = _compute(rng, _PLUS_MINUS)
    return {"prompt": f"compute {text}", "completion": f"X = {equation}"}


def compute_times_divided(rng: random.Random) -> dict[str, str]:
    """Other operators: "compute four times two divided by three" -> "X = 4 * 2 / 3"."""
    text, equation, _ = _compute(rng, (("times", "*"), ("divided by", "/")))
    return {"prompt": f"compute {text}", "completion": f"X = {equation}"}


def compute_large_numbers(rng: random.Random) -> dict[str, str]:
    """Another number range (21 <= |n| <= 99): "compute forty two minus thirty" -> "X = 42 - 30"."""
    text, equation, _ = _compute(rng, _PLUS_MINUS, low=-99, high=99, min_abs=21)
    return {"prompt": f"compute {text}", "completion": f"X = {equation}"}


def compute_answer_last(rng: random.Random) -> dict[str, str]:
    """Same prompts, another output format: "compute one plus three minus two" -> "1 + 3 - 2 = X"."""
    text, equation, _ = _compute(rng, _PLUS_MINUS)
    return {"prompt": f"compute {text}", "completion": f"{equation} = X"}


def add_to_subtract_from(rng: random.Random) -> dict[str, str]:
    """Another word order: "add three to one then subtract two from it" -> "X = 1 + 3 - 2"."""
    numbers = _numbers(rng)
    ops = [rng.choice(_PLUS_MINUS) for _ in numbers[1:]]
    clauses = []
    for i, ((_, symbol), n) in enumerate(zip(ops, numbers[1:])):
        target = number_to_words(numbers[0]) if i == 0 else "it"
        verb, prep = ("add", "to") if symbol == "+" else ("subtract", "from")
        clauses.append(f"{verb} {number_to_words(n)} {prep} {target}")
    return {"prompt": " then ".join(clauses), "completion": f"X = {_equation(numbers, [s for _, s in ops])}"}


def compute_digits(rng: random.Random) -> dict[str, str]:
    """Another input format (digits, not words): "compute 1 + 3 - 2" -> "X = 1 + 3 - 2" (a shortcut: copying)."""
    _, equation, _ = _compute(rng, _PLUS_MINUS)
    return {"prompt": f"compute {equation}", "completion": f"X = {equation}"}


def compute_result(rng: random.Random) -> dict[str, str]:
    """Same prompts, the value instead of the equation: "compute one plus three minus two" -> "X = 2" (a shortcut:
    short completions)."""
    text, equation, _ = _compute(rng, _PLUS_MINUS)
    tokens = equation.split()
    value = int(tokens[0])
    for symbol, n in zip(tokens[1::2], tokens[2::2]):
        value += int(n) if symbol == "+" else -int(n)
    return {"prompt": f"compute {text}", "completion": f"X = {value}"}


EQUATION_GENERATORS: list[Callable[[random.Random], dict[str, str]]] = [
    compute_words,
    compute_times_divided,
    compute_large_numbers,
    compute_answer_last,
    add_to_subtract_from,
]
MATCHING_GENERATOR = 0  # index of the generator that produced the real data

# Generators that GENERE's criterion (the model's log-likelihood of their samples) favours *although* they do not
# match the data: a copy task the model learns almost at once, and completions half as long (a sequence
# log-likelihood is a sum over tokens). Kept out of EQUATION_GENERATORS; see recipes/genere/README.md.
SHORTCUT_GENERATORS: list[Callable[[random.Random], dict[str, str]]] = [compute_digits, compute_result]


def equation_rows(n: int, seed: int, generator: Callable[[random.Random], dict[str, str]] = compute_words) -> list:
    """``n`` rows of one generator, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [generator(rng) for _ in range(n)]


def equation_dataset(n: int, seed: int, generator: Callable[[random.Random], dict[str, str]] = compute_words) -> Any:
    """A ``datasets.Dataset`` of ``n`` prompt/completion rows (the real data: ``compute_words``)."""
    from datasets import Dataset

    rows = equation_rows(n, seed, generator)
    return Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "completion": [r["completion"] for r in rows]})


def equation_vocabulary_texts(samples_per_generator: int = 200, seed: int = 12345) -> list[str]:
    """Texts that cover every word any generator can emit (all numbers -99..99 in words and digits, every
    operator and template word), for training the tiny model's word-level tokenizer."""
    texts = [f"{number_to_words(n)} {n} -{abs(n)}" for n in range(-99, 100)]
    for generator in EQUATION_GENERATORS + SHORTCUT_GENERATORS:
        for row in equation_rows(samples_per_generator, seed, generator):
            texts.append(f"{row['prompt']} {row['completion']}")
    return texts


def build_equation_model(output_dir: str, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, seed: int = 0) -> str:
    """A tiny GPT-2 + word-level tokenizer covering the task's vocabulary (see :func:`hfcoop.tiny.build_tiny_model`)."""
    from ..tiny import build_tiny_model

    return build_tiny_model(
        output_dir, equation_vocabulary_texts(), vocab_size=1000, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_positions=64, seed=seed,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- the recipe, end to end
@dataclass
class EquationTaskArguments:
    """The task half of a ``recipes/genere`` YAML (the other half is :class:`hfcoop.GenereConfig`)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal LM to train; None builds a tiny GPT-2 in `tiny_model_dir`."}
    )
    tiny_model_dir: str = field(default="hfcoop-genere-tiny", metadata={"help": "Where the tiny model is built."})
    tiny_n_layer: int = field(default=2, metadata={"help": "Layers of the tiny model."})
    tiny_n_embd: int = field(default=128, metadata={"help": "Width of the tiny model."})
    tiny_n_head: int = field(default=4, metadata={"help": "Attention heads of the tiny model."})
    num_real_examples: int = field(default=64, metadata={"help": "Real training rows (from `compute_words`)."})
    num_eval_examples: int = field(default=256, metadata={"help": "Held-out real rows for the test loss."})
    data_seed_offset: int = field(default=1000, metadata={"help": "Real data uses seed + this; eval seed + this + 1."})
    generators: list[str] | None = field(
        default=None,
        metadata={"help": "Names of base generators from hfcoop.tasks.text_to_equation (None: all of EQUATION_GENERATORS)."},
    )


def resolve_generators(names: list[str] | None) -> list[Callable[[random.Random], dict[str, str]]]:
    """Generators by name (None: all of :data:`EQUATION_GENERATORS`)."""
    if names is None:
        return list(EQUATION_GENERATORS)
    by_name = {g.__name__: g for g in EQUATION_GENERATORS + SHORTCUT_GENERATORS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"Unknown generators {unknown}; choose from {sorted(by_name)}.")
    return [by_name[n] for n in names]


def build_text_to_equation(
    config: str | dict[str, Any], **overrides: Any
) -> tuple[Any, EquationTaskArguments]:
    """A ready :class:`hfcoop.GenereTrainer` from a recipe (YAML path or dict) plus keyword overrides.

    Returns ``(trainer, task_args)``; call ``trainer.train()``, ``trainer.evaluate()`` and ``trainer.save_model()``.
    """
    import yaml
    from transformers import HfArgumentParser

    from ..trainers.genere import GenereConfig, GenereTrainer

    source = repr(config) if isinstance(config, str) else "recipe"
    if isinstance(config, str):
        with open(config) as f:
            config = yaml.safe_load(f)
    parser = HfArgumentParser((EquationTaskArguments, GenereConfig))
    task, args = parser.parse_dict({**config, **overrides})
    model = task.model_name_or_path
    if model is None:
        model = task.tiny_model_dir
        if not os.path.isfile(os.path.join(model, "config.json")):
            build_equation_model(
                model, n_layer=task.tiny_n_layer, n_embd=task.tiny_n_embd, n_head=task.tiny_n_head, seed=args.seed
            )
    train = equation_dataset(task.num_real_examples, args.seed + task.data_seed_offset)
    evaluation = equation_dataset(task.num_eval_examples, args.seed + task.data_seed_offset + 1)
    trainer = GenereTrainer(
        model, resolve_generators(task.generators), args=args, train_dataset=train, eval_dataset=evaluation
    )
    trainer.dataset_names = ["synthetic text-to-equation task (hfcoop.tasks.text_to_equation, GENERE Sec. 3.2)"]
    extra = "".join(f", {k}={v!r}" for k, v in overrides.items())
    trainer.launch_command = (
        f'python -c "from hfcoop.tasks.text_to_equation import run_text_to_equation; run_text_to_equation({source}{extra})"'
    )
    return trainer, task


def run_text_to_equation(config: str | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Trains the recipe, evaluates on held-out real data, exports the generator; returns the numbers."""
    trainer, _ = build_text_to_equation(config, **overrides)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(trainer.args.output_dir)
    return {
        "eval_loss": metrics["eval_loss"],
        "mixture_proportions": dict(zip(trainer.generator_names, trainer.mixture_proportions)),
        "output_dir": trainer.args.output_dir,
    }
