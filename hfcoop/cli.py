"""``hfcoop`` command line.

  hfcoop train <algorithm> --config recipe.yaml [--field value ...]   train (algorithms: mle cot psi_mle gcn genere)
  hfcoop generate --model_name_or_path M [--dataset_name D | --prompts_file F] [--output_file out.jsonl]
  hfcoop evaluate --model_name_or_path M --dataset_name D   |   hfcoop evaluate --predictions_file out.jsonl
  hfcoop sweep --model_name_or_path M1 M2 --dataset_name D    quality-diversity curve over temperatures
  hfcoop recipes [NAME]                                       the bundled recipes (--config takes their names)
  hfcoop env                                                  versions and devices, for bug reports

YAML recipes and command-line flags fill the same dataclasses (TRL's ``TrlParser``): the script arguments
below plus the algorithm's ``XConfig`` (every ``TrainingArguments`` field). Flags override the YAML. Every verb
also runs under ``accelerate launch -m hfcoop.cli ...``. ``hfcoop <verb> --help`` describes a verb's flags;
``hfcoop train <algorithm> --help`` groups the trainer's own fields (``--help-all``: every inherited one too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .algorithms import ALGORITHMS, Algorithm
from .validation import (
    InputError, check_config_file, check_output_path, check_ranges, exits_on_input_error, length_budget_problem, require,
)


@dataclass
class ScriptArguments:
    """What to train on and from: model, companion, data (everything that is not a training hyperparameter)."""

    companion_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Companion (CoT mediator / psi-MLE ratio model / GCN discriminator); default: from the generator."},
    )
    tiny_model: bool = field(
        default=False,
        metadata={"help": "No model given: build a tiny GPT-2 with a tokenizer trained on the training texts (offline demos)."},
    )
    tiny_model_layers: int = field(default=2, metadata={"help": "Layers of the tiny model."})
    tiny_model_hidden: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    tiny_model_vocab_size: int = field(default=5000, metadata={"help": "Vocabulary size of the tiny tokenizer."})
    tiny_model_positions: int | None = field(
        default=None,
        metadata={"help": "Positions of the tiny model (None: max_prompt_length + max_completion_length, at least 128)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Training data: a Hub dataset id, a dataset folder, or a txt/json/jsonl/csv file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    task: str = field(
        default="auto",
        metadata={"help": "Column preset: auto, text, summarization (cnn_dailymail/xsum/scitldr), question_generation "
                  "(squad/squad_qg). auto passes text / prompt+completion data through and recognises known layouts."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Evaluation data if it is not a split of `dataset_name` (e.g. a test file)."}
    )
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Split of `dataset_name` used for evaluation and the quality report (TRL's name; None: no "
                  "evaluation split)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    generators: str | None = field(
        default=None,
        metadata={"help": "GENERE only: `package.module:ATTRIBUTE` (an installed module, never one in the current "
                  "folder) or `path/to/file.py:ATTRIBUTE` naming a list of black-box data generators. Runs that code."},
    )
    quality_samples: int = field(
        default=200, metadata={"help": "Samples generated for the before/after quality report (0: skip it)."}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Build everything (config, data, models, trainer) and check it, then stop before training."},
    )


def model_arguments() -> type:
    """TRL's ``ModelConfig`` (its flags and meanings: ``model_name_or_path``, ``model_revision``, ``dtype``,
    ``attn_implementation``, ``load_in_4bit`` / ``load_in_8bit``, ``bnb_4bit_quant_type``, ``use_bnb_nested_quant``,
    ``use_peft``, ``lora_*``, ``use_dora``, ``use_rslora``), built on first use so that ``hfcoop --help`` imports no trl.
    One difference: ``dtype`` defaults to ``auto`` (the checkpoint's dtype), as hfcoop's Python API loads models."""
    global ModelArguments
    if ModelArguments is None:
        from trl import ModelConfig

        @dataclass
        class _ModelArguments(ModelConfig):
            dtype: str | None = field(
                default="auto",
                metadata={"help": "Load the models in this dtype (auto: the checkpoint's).",
                          "choices": ["auto", "bfloat16", "float16", "float32"]},
            )

        _ModelArguments.__name__ = _ModelArguments.__qualname__ = "ModelArguments"
        ModelArguments = _ModelArguments
    return ModelArguments


ModelArguments: type | None = None


def apply_model_arguments(model: Any, args: Any) -> Any:
    """TRL's model flags into the trainer's config, as ``trl sft`` does: ``model_init_kwargs`` gets ``revision``,
    ``dtype``, ``attn_implementation`` and the bitsandbytes ``quantization_config`` (TRL's
    ``get_quantization_config``), a recipe's own ``model_init_kwargs`` entries winning; returns TRL's
    ``get_peft_config`` (None without ``use_peft``)."""
    from trl import get_peft_config, get_quantization_config

    if model.lora_task_type != "CAUSAL_LM":
        raise SystemExit(f"hfcoop: lora_task_type {model.lora_task_type!r}: the generator is a causal LM, so its "
                         "adapters are CAUSAL_LM (companions get the task type they need); drop the flag.")  # fmt: skip
    if (model.load_in_4bit or model.load_in_8bit) and not model.use_peft:
        raise SystemExit("hfcoop: load_in_4bit / load_in_8bit need use_peft: true (quantized weights are trained "
                         "through LoRA adapters: QLoRA).")  # fmt: skip
    kwargs: dict[str, Any] = {"dtype": model.dtype}
    if model.model_revision not in (None, "main"):
        kwargs["revision"] = model.model_revision
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    # TRL computes 4-bit matmuls in the model dtype; "auto" is not a dtype, float32 is the safe choice then.
    quantization = get_quantization_config(dataclasses.replace(model, dtype=model.dtype if model.dtype != "auto" else "float32"))
    if quantization is not None:
        kwargs["quantization_config"] = quantization.to_dict()
    # TRL's ModelConfig turns one --lora_target_modules name into a string, which peft reads as a regex matched against
    # the whole module path, so `--lora_target_modules c_attn` targeted nothing; one plain name is kept a name.
    target = model.lora_target_modules
    if isinstance(target, str) and target != "all-linear" and target.replace("_", "").replace(".", "").isalnum():
        model.lora_target_modules = [target]
    explicit = args.model_init_kwargs
    if isinstance(explicit, str):
        explicit = json.loads(explicit)
    args.model_init_kwargs = {**kwargs, **(explicit or {})}
    return get_peft_config(model)


def _algorithm(name: str) -> Algorithm:
    """The registry entry of an algorithm (its trainer is imported only when used); a clear error for an unknown
    name."""
    if name not in ALGORITHMS:
        raise SystemExit(f"hfcoop: unknown algorithm '{name}'. Choose one of: {', '.join(ALGORITHMS)}.")
    return ALGORITHMS[name]


def config_path(argv: list[str]) -> str | None:
    """The ``--config`` value named on the command line (``--config x.yaml`` or ``--config=x.yaml``), if any."""
    for i, a in enumerate(argv):
        if a == "--config":
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise SystemExit("hfcoop: --config needs a value: a recipe file, or a bundled recipe such as "
                                 "coco/cot_tiny (`hfcoop recipes` lists them).")  # fmt: skip
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def resolve_config_argument(argv: list[str]) -> list[str]:
    """``argv`` with its ``--config`` value as an existing file (a path, or a bundled recipe by name), written as
    ``--config FILE``; a clear error when it names neither."""
    from .bundled import find_recipe

    config = config_path(argv)
    if config is None:
        return argv
    found = find_recipe(config)
    if found is None:
        raise SystemExit(f"hfcoop: the --config file '{config}' does not exist (from {os.getcwd()}) and is no bundled "
                         "recipe: `hfcoop recipes` lists those (e.g. coco/cot_tiny).")  # fmt: skip
    i = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
    return [*argv[:i], "--config", found, *argv[i + (2 if argv[i] == "--config" else 1) :]]


def parse(dataclass_types: tuple[type, ...], argv: list[str]) -> tuple[Any, ...]:
    """YAML ``--config`` (a file or a bundled recipe) + flags into dataclasses; unknown fields and bad YAML are
    clear errors. Flags are matched whole: no abbreviations (``--log_completions`` is not ``--log_completions_steps``)."""
    import yaml
    from trl import TrlParser

    argv = resolve_config_argument(argv)
    check_config_file(dataclass_types, config_path(argv))  # YAML values reach the dataclasses untyped: checked first
    parser = TrlParser(dataclass_types, allow_abbrev=False)
    try:
        return parser.parse_args_and_config(argv)
    except yaml.YAMLError as err:
        raise SystemExit(f"hfcoop: the --config file is not valid YAML: {err}") from None
    except ValueError as err:
        raise SystemExit(f"hfcoop: {unknown_fields_message(str(err))}") from None


# Fields of TRL's trainer configs that hfcoop has no field for, with what a TRL user does here instead.
TRL_ONLY_FIELDS = {
    "max_length": "TRL SFT's whole-sequence budget; hfcoop budgets max_prompt_length + max_completion_length",
    "packing": "hfcoop does not pack sequences (each row is its own prompt + completion); drop it",
    "padding_free": "hfcoop does not pack sequences; drop it",
    "dataset_text_field": "hfcoop reads a `text` column (or prompt/completion, or messages): rename the column",
    "completion_only_loss": "hfcoop's losses always concern the completion only; drop it",
    "assistant_only_loss": "hfcoop trains on the last assistant turn of `messages` rows; drop it",
    "eos_token": "hfcoop uses the tokenizer's EOS and generation_config's EOS ids; drop it",
    "dataset_streaming": "hfcoop loads datasets in full (max_train_samples keeps the first N rows)",
    "num_generations": "GRPO's group size; GCN's is num_candidates",
}


def unknown_fields_message(message: str) -> str:
    """TrlParser's "unknown arguments" errors as one line naming the fields, with the hfcoop way for TRL's own."""
    import re

    if "Unknown arguments" not in message and "not used by the HfArgumentParser" not in message:
        return message
    names = list(dict.fromkeys(re.findall(r"'--([A-Za-z0-9_\-]+)", message)))
    hints = [f"{n}: {TRL_ONLY_FIELDS[n]}" for n in names if TRL_ONLY_FIELDS.get(n)]
    where = "the recipe has" if "config file" in message else "the command line has"
    text = f"{where} fields hfcoop does not know: {', '.join(names)}"
    return text + (f" ({'; '.join(hints)})" if hints else "") + ". `hfcoop train <algorithm> --help` lists the fields."


def load_datasets(script: ScriptArguments) -> tuple[Any, Any]:
    from .data import apply_task, load_any_dataset

    if script.dataset_name is None:
        raise SystemExit("hfcoop: set `dataset_name` (a Hub dataset id or a local file) in the recipe or as a flag.")
    train = load_any_dataset(script.dataset_name, script.dataset_config, script.dataset_train_split)
    eval_ = None
    if script.eval_dataset_name:
        eval_ = load_any_dataset(script.eval_dataset_name, script.dataset_config, script.dataset_test_split or "train")
    elif script.dataset_test_split:
        eval_ = load_any_dataset(script.dataset_name, script.dataset_config, script.dataset_test_split)
    if script.max_train_samples is not None:
        train = train.select(range(min(script.max_train_samples, len(train))))
    if eval_ is not None and script.max_eval_samples is not None:
        eval_ = eval_.select(range(min(script.max_eval_samples, len(eval_))))
    try:
        return apply_task(train, script.task), (apply_task(eval_, script.task) if eval_ is not None else None)
    except ValueError as err:
        raise SystemExit(f"hfcoop: {err}") from None


def check_model_reference(name: str | None, what: str) -> None:
    """A model named by a path that does not exist gets a message saying so (not a Hub id-format error)."""
    if not name or os.path.exists(name):
        return
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1
    if looks_like_path:
        raise SystemExit(f"hfcoop: the {what} path '{name}' does not exist. Check the path (relative paths start from "
                         f"{os.getcwd()}), or give a Hub model id such as openai-community/gpt2.")  # fmt: skip


def tiny_model_positions(script: ScriptArguments, args: Any, data_format: str) -> int:
    """Enough positions for the recipe's prompt and completion budgets (prompt budget 128 when unset)."""
    if script.tiny_model_positions is not None:
        return script.tiny_model_positions
    prompt = 1 if data_format == "text" else (args.max_prompt_length or 128)
    return max(128, prompt + args.max_completion_length)


def cache_dir() -> str:
    """Where hfcoop keeps what it builds for a run but is not the run's result (the tiny base models): ``$HFCOOP_CACHE``,
    else ``$XDG_CACHE_HOME/hfcoop``, else ``~/.cache/hfcoop``. Outside ``output_dir``, so a push uploads none of it."""
    if os.environ.get("HFCOOP_CACHE"):
        return os.path.expanduser(os.environ["HFCOOP_CACHE"])
    return os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache"), "hfcoop")


def resolve_model(
    model_name_or_path: str | None, script: ScriptArguments, train: Any, args: Any, generators: Any = None
) -> str:
    """The generator path; builds the tiny model (once per settings and data, in :func:`cache_dir`) when asked to."""
    if model_name_or_path:
        check_model_reference(model_name_or_path, "model_name_or_path")
        return model_name_or_path
    if not script.tiny_model:
        raise SystemExit("hfcoop: set `model_name_or_path` (Hub id or local path), or `tiny_model: true` for a demo.")
    import hashlib

    from .tiny import build_tiny_model

    from .data import is_conversational

    columns = [c for c in ("text", "prompt", "completion", "messages") if c in train.column_names]
    chat = len(train) > 0 and is_conversational(train[0])  # an instruct-style tiny model (chat template)
    texts = [t for row in train for c in columns for t in _texts_of(row[c])]
    if generators:  # GENERE: the tokenizer must also cover what the black-box generators write
        import random

        rng = random.Random(0)
        texts += [t for g in generators for _ in range(200) for v in g(rng).values() for t in _texts_of(v)]
    settings = dict(vocab_size=script.tiny_model_vocab_size, n_layer=script.tiny_model_layers,
                    n_embd=script.tiny_model_hidden, chat=chat,
                    n_positions=tiny_model_positions(script, args, "text" if "text" in columns else "prompt_completion"))  # fmt: skip
    # The cached model is keyed by its settings and the texts its tokenizer learns from: a changed recipe or data
    # set builds a new one instead of silently reusing the old.
    digest = hashlib.sha256(json.dumps([settings, texts]).encode()).hexdigest()[:10]
    path = os.path.join(cache_dir(), f"tiny-base-model-{digest}")
    with args.main_process_first(desc="tiny model"):  # under accelerate launch: built once, read by every rank
        if not os.path.isfile(os.path.join(path, "config.json")):
            build_atomically(path, lambda folder: build_tiny_model(folder, texts, **settings))
    return path


def build_atomically(path: str, build: Any) -> None:
    """``build(folder)`` into a private folder beside ``path``, then renamed to ``path``: two runs sharing the cache
    (separate jobs, not the ranks of one launch) never read a half-written model; the second one's copy is dropped."""
    import shutil
    import tempfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    folder = tempfile.mkdtemp(prefix=os.path.basename(path) + ".partial-", dir=os.path.dirname(path))
    try:
        build(folder)
        os.rename(folder, path)
    except OSError:
        if not os.path.isfile(os.path.join(path, "config.json")):  # not "another run finished it first"
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _texts_of(value: Any) -> list[str]:
    """The words of a column value: a string, or the contents of a list of chat messages."""
    if isinstance(value, list):
        return [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return [value] if isinstance(value, str) else []


def resolve_recipe_paths(script: ScriptArguments, argv: list[str]) -> None:
    """Recipe data paths are written relative to the repository root (``recipes/data/...``): run from elsewhere, a
    path that does not exist from the current folder is looked up from the recipe's folder upwards, then in the
    data hfcoop bundles (an installed wheel, an empty Colab folder). A Hub id is left alone."""
    from .bundled import bundled_data_path, find_recipe

    config = config_path(argv)
    config = find_recipe(config) if config is not None else None
    if config is None:
        return
    for name in ("dataset_name", "eval_dataset_name"):
        value = getattr(script, name)
        if not value or os.path.isabs(value) or os.path.exists(value):
            continue
        folder = os.path.dirname(os.path.abspath(config))
        while not os.path.exists(os.path.join(folder, value)) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        if os.path.exists(os.path.join(folder, value)):
            setattr(script, name, os.path.join(folder, value))
        elif bundled_data_path(value):
            setattr(script, name, bundled_data_path(value))


def resume_setting(value: Any) -> str | bool | None:
    """``--resume_from_checkpoint true`` means "the newest complete checkpoint", not a folder named "true"."""
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0", "none", ""):
        return value.strip().lower() in ("true", "yes", "1") or None
    return value


def companion_from(name: str, script: ScriptArguments) -> Any:
    """The value of the algorithm's companion argument, from the ScriptArguments field the registry names."""
    if ALGORITHMS[name].companion_source != "generators":  # a model (MLE takes none: ignored there)
        check_model_reference(script.companion_name_or_path, "companion_name_or_path")
        return script.companion_name_or_path
    if not script.generators:
        raise SystemExit("hfcoop: GENERE needs `generators: module:attribute` naming a list of data generators.")
    from .tasks import load_user_object

    return load_user_object(script.generators, "generators")  # runs the user's code: see its docstring


# TrainingArguments fields a recipe usually sets; the grouped help lists them by name (``--help-all``: all of them).
COMMON_TRAINING_ARGUMENTS = (
    "output_dir", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
    "num_train_epochs", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "fp16",
    "gradient_checkpointing", "eval_strategy", "eval_steps", "per_device_eval_batch_size", "logging_steps",
    "save_steps", "save_total_limit", "report_to", "run_name", "seed", "resume_from_checkpoint", "push_to_hub",
    "hub_model_id",
)  # fmt: skip


def _field_lines(dataclass_type: type, names: set[str] | None = None) -> list[str]:
    """``--name (default)`` and its help text, for the fields of ``dataclass_type`` (or only ``names``)."""
    import textwrap

    lines = []
    for f in dataclasses.fields(dataclass_type):
        if not f.init or (names is not None and f.name not in names):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        lines.append(f"  --{f.name} (default: {default})")
        help_text = f.metadata.get("help", "")
        if help_text:
            lines += textwrap.wrap(help_text, 110, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def train_help(algorithm: Algorithm) -> str:
    """``hfcoop train <algorithm> --help``: hfcoop's own fields grouped, TrainingArguments' named, not described.
    Reads the configs only: no trainer is imported (as fast as ``trl sft --help``, benchmarks/cli_startup.py)."""
    import textwrap

    from transformers import TrainingArguments

    from .trainers.base_config import CooperativeConfig

    name, config_cls = algorithm.name, algorithm.config_cls
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    shared = {f.name for f in dataclasses.fields(CooperativeConfig)}
    own = {f.name for f in dataclasses.fields(config_cls)} - shared
    inherited = sorted(base - set(COMMON_TRAINING_ARGUMENTS))
    parts = [
        f"usage: hfcoop train {name} --config recipe.yaml [--field value ...]   (YAML keys = flag names)",
        "",
        "Model (TRL's ModelConfig: same flags and meanings as `trl sft`; dtype defaults to auto):",
        *textwrap.wrap(", ".join(f"--{f.name}" for f in dataclasses.fields(model_arguments())), 110,
                       initial_indent="  ", subsequent_indent="  "),
        "",
        "Companion and data (hfcoop):",
        *_field_lines(ScriptArguments),
        "",
        f"{algorithm.title} ({config_cls.__name__}'s own fields):",
        *(_field_lines(config_cls, own) or ["  (no fields of its own)"]),
        "",
        "Shared by every hfcoop algorithm (CooperativeConfig):",
        *_field_lines(config_cls, shared - base),
        "",
        "Most used transformers.TrainingArguments fields (same names and meaning as in Trainer / TRL):",
        *textwrap.wrap(", ".join(f"--{n}" for n in COMMON_TRAINING_ARGUMENTS), 110,
                       initial_indent="  ", subsequent_indent="  "),
        "",
        f"{len(inherited)} more TrainingArguments fields are accepted; `hfcoop train {name} --help-all` describes them.",
    ]  # fmt: skip
    return "\n".join(parts)


# accelerate launch options hfcoop also takes as training fields keep their training meaning.
_NOT_LAUNCH_OPTIONS = {"--debug", "--help", "-h", "--module", "-m", "--gradient_accumulation_steps", "--config_file"}


def split_launch_arguments(argv: list[str], field_names: set[str]) -> tuple[list[str], list[str]]:
    """(training arguments, ``accelerate launch`` arguments) of a ``hfcoop train`` command line, the latter non-empty
    only when ``--accelerate_config`` or ``--num_processes`` asks hfcoop to launch itself (TRL's ``trl sft
    --accelerate_config zero3 --num_processes 8`` habit). Any other ``accelerate launch`` option may ride along."""
    if not any(a.split("=", 1)[0] in ("--accelerate_config", "--num_processes") for a in argv):
        return argv, []
    from accelerate.commands.launch import launch_command_parser

    takes_value = {o: a.nargs != 0 for a in launch_command_parser()._actions for o in a.option_strings}
    takes_value["--accelerate_config"] = True
    launch_options = {o for o in takes_value if o not in _NOT_LAUNCH_OPTIONS and o.lstrip("-") not in field_names}
    training, launch, i = [], [], 0
    while i < len(argv):
        option = argv[i].split("=", 1)[0]
        if option in launch_options:
            value = "=" not in argv[i] and takes_value[option] and i + 1 < len(argv)
            launch += argv[i : i + 1 + value]
            i += 1 + value
        else:
            training.append(argv[i])
            i += 1
    return training, launch


def launch_training(name: str, training: list[str], launch: list[str]) -> None:
    """Runs ``accelerate launch --config_file <config> [launch options] -m hfcoop.cli train <name> <training>``;
    ``--accelerate_config`` is a file or a bundled config by name (ddp, zero2, zero3, fsdp, ...)."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    from .bundled import ACCELERATE_CONFIGS, find_accelerate_config

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_LAUNCHED" in os.environ:
        raise SystemExit("hfcoop: --accelerate_config / --num_processes given inside an already launched job: pass "
                         "them to hfcoop alone, or to accelerate launch alone.")  # fmt: skip
    launch = [part for a in launch for part in (a.split("=", 1) if a.startswith("--accelerate_config=") else [a])]
    if "--accelerate_config" in launch:
        i = launch.index("--accelerate_config")
        found = find_accelerate_config(launch[i + 1]) if i + 1 < len(launch) else None
        if found is None:
            raise SystemExit(f"hfcoop: --accelerate_config takes a file or one of {', '.join(ACCELERATE_CONFIGS)}; "
                             f"got {launch[i + 1] if i + 1 < len(launch) else 'nothing'}.")  # fmt: skip
        launch[i : i + 2] = ["--config_file", found]
    elif not any(a.startswith("--config_file") for a in launch):
        launch = ["--config_file", find_accelerate_config("ddp"), *launch]
    parsed = launch_command_parser().parse_args([*launch, "-m", "hfcoop.cli", "train", name, *training])
    os.environ["ACCELERATE_LAUNCHED"] = "1"  # inherited by the processes: they must not launch again
    try:
        launch_command(parsed)
    except Exception as err:  # noqa: BLE001 - the processes printed their own `hfcoop:` line above
        raise SystemExit(f"hfcoop: the launched training failed ({type(err).__name__}); its processes' messages are "
                         "above.") from None  # fmt: skip
    finally:
        os.environ.pop("ACCELERATE_LAUNCHED", None)


def build_trainer(name: str, script: ScriptArguments, model_args: Any, args: Any, train_ds: Any, eval_ds: Any) -> Any:
    """The algorithm's trainer on the loaded data, its companion argument filled as the registry says, with the
    data sets' names for the model card."""
    algorithm = ALGORITHMS[name]
    companion = companion_from(name, script)
    generators = companion if algorithm.companion_source == "generators" else None
    peft_config = apply_model_arguments(model_args, args)
    model = resolve_model(model_args.model_name_or_path, script, train_ds, args, generators)
    trainer = algorithm.trainer_cls(
        model,
        **algorithm.companion_kwargs(companion),
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=peft_config,
    )
    trainer.dataset_names = [script.dataset_name]
    if script.eval_dataset_name:
        trainer.eval_dataset_names = [script.eval_dataset_name]
    elif script.dataset_test_split:
        trainer.eval_dataset_names = [f"{script.dataset_name} ({script.dataset_test_split} split)"]
    return trainer


def train(argv: list[str]) -> dict[str, Any]:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(f"usage: hfcoop train <{'|'.join(ALGORITHMS)}> --config recipe.yaml [--flag value ...]\n"
                         "       hfcoop train <algorithm> --help")  # fmt: skip
    name, argv = argv[0], argv[1:]
    algorithm = _algorithm(name)
    config_cls = algorithm.config_cls  # the trainer is imported only to train (build_trainer)
    if "--help-all" in argv:
        argv = ["--help"]  # argparse's full help: every field, TrainingArguments' included
    elif "-h" in argv or "--help" in argv:
        print(train_help(algorithm))
        return {}
    model_cls = model_arguments()
    fields = {f.name for cls in (ScriptArguments, config_cls, model_cls) for f in dataclasses.fields(cls)}
    argv, launch = split_launch_arguments(argv, fields)
    if launch:
        return launch_training(name, argv, launch) or {}
    script, args, model_args = parse((ScriptArguments, config_cls, model_cls), argv)
    check_ranges(script, args, model_args)
    resolve_recipe_paths(script, argv)
    from .guards import check_output_dir, known_secrets, redact_command, resolve_resume
    from .run_lock import acquire_run_lock

    if not script.dry_run and args.should_save:  # one run per output_dir (released when the command ends: run())
        acquire_run_lock(args.output_dir)
    resume = resolve_resume(resume_setting(args.resume_from_checkpoint), args.output_dir)
    args.resume_from_checkpoint = resume
    # Before any data is loaded or model built: an earlier run here is refused (or cleared with overwrite).
    if not script.dry_run:
        check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, resuming=resume is not None,
                         clear=args.should_save)  # fmt: skip
    train_ds, eval_ds = load_datasets(script)
    trainer = build_trainer(name, script, model_args, args, train_ds, eval_ds)
    trainer.launch_command = redact_command(["hfcoop", "train", name, *argv], known_secrets(args))
    if script.dry_run:
        batch = next(iter(trainer.get_train_dataloader()))
        print(f"hfcoop: dry run OK: {name} with {trainer.base_model_id}, {len(train_ds)} training rows"
              f"{f', {len(eval_ds)} evaluation rows' if eval_ds is not None else ''}, first batch "
              f"{tuple(batch['prompt_input_ids'].shape)} prompt + {tuple(batch['completion_input_ids'].shape)} "
              "completion tokens; nothing was trained.")  # fmt: skip
        return {}
    report: dict[str, Any] = {}
    # The report samples from the unwrapped generator with no collective ops, so the main process alone runs it.
    # Sharded parameters (ZeRO-3, FSDP) need every rank to sample, so there the report is skipped.
    from .distributed import parameters_are_sharded

    sharded = parameters_are_sharded(trainer.accelerator)
    assess = bool(script.quality_samples) and eval_ds is not None and trainer.is_world_process_zero() and not sharded
    if sharded and script.quality_samples and trainer.is_world_process_zero():
        print("hfcoop: quality report skipped with sharded parameters; run `hfcoop evaluate` on the saved model.")
    if assess:
        report["before"] = quality(trainer, eval_ds, script.quality_samples)
    trainer.train(resume_from_checkpoint=resume)
    if assess:
        report["after"] = quality(trainer, eval_ds, script.quality_samples)
    if trainer.is_world_process_zero():
        from .plotting import plot_training_curves

        plot_training_curves(trainer.state.log_history, os.path.join(args.output_dir, "training_curves.png"))
        if report:  # before save_model: the model card reports it
            with open(os.path.join(args.output_dir, "quality.json"), "w") as f:
                json.dump(report, f, indent=2)
            print_quality(report)
    # Written last, once: save_model() exports the generator and card and, with push_to_hub, uploads them (the
    # quality report and curves too only with hub_include_reports; the card's model-index holds the results).
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"hfcoop: generator saved to {args.output_dir}")
    return report


def quality(trainer: Any, eval_dataset: Any, num_samples: int) -> dict[str, float]:
    from .evaluation import generation_quality

    return generation_quality(
        trainer.pair.generator,
        trainer.processing_class,
        eval_dataset,
        num_samples=num_samples,
        max_new_tokens=trainer.args.max_completion_length,
        max_prompt_length=trainer.args.max_prompt_length,
        batch_size=max(trainer.args.per_device_eval_batch_size, 32),
        seed=trainer.args.seed,
        # The training's sampling settings: those the export's generation_config.json holds.
        temperature=trainer.args.temperature,
        top_k=trainer.args.top_k,
        top_p=trainer.args.top_p,
    )


def print_quality(report: dict[str, dict[str, float]]) -> None:
    keys = list(report.get("after", report.get("before", {})))
    print(f"\n{'metric':<22}{'before':>12}{'after':>12}")
    for key in keys:
        before, after = report.get("before", {}).get(key), report.get("after", {}).get(key)
        fmt = lambda v: f"{v:>12.4f}" if isinstance(v, float) else f"{'-':>12}"  # noqa: E731
        print(f"{key:<22}{fmt(before)}{fmt(after)}")


@dataclass
class EvaluateArguments:
    """``hfcoop evaluate``: quality of a saved generator on a dataset, or of a file written by ``hfcoop generate``."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Generator to evaluate (Hub id or local path); not needed with predictions_file."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Evaluation data (Hub id, folder or file); with predictions_file only for unconditional "
                  "samples, as their reference set."},
    )
    predictions_file: str | None = field(
        default=None,
        metadata={"help": "Score this jsonl from `hfcoop generate` (rows with `completion` and, for conditional data, "
                  "`reference`) instead of sampling."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    task: str = field(default="auto", metadata={"help": "Column preset (see `hfcoop train --help`)."})
    split: str = field(default="test", metadata={"help": "Split of a Hub dataset."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N rows."})
    num_samples: int = field(default=500, metadata={"help": "Samples generated for BLEU/ROUGE/diversity."})
    max_new_tokens: int = field(default=32, metadata={"help": "Most tokens per sample."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Prompts keep their last N tokens (None: as many as fit the model)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    batch_size: int = field(default=32, metadata={"help": "Generation batch size."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    output_file: str | None = field(default=None, metadata={"help": "Write the metrics here as JSON."})


@exits_on_input_error
def evaluate_cli(argv: list[str]) -> dict[str, float]:
    (a,) = parse((EvaluateArguments,), argv)
    check_ranges(a)
    check_output_path(a.output_file, "--output_file")  # before any sample is drawn
    if a.predictions_file:
        metrics = score_predictions_file(a)
    else:
        from .evaluation import generation_quality
        from .modeling import load_causal_lm, load_tokenizer

        require(bool(a.model_name_or_path and a.dataset_name),
                "evaluate needs --model_name_or_path and --dataset_name (or --predictions_file).")
        dataset = eval_dataset_from(a)
        model = load_causal_lm(a.model_name_or_path)
        tokenizer = load_tokenizer(None, a.model_name_or_path)
        metrics = generation_quality(
            model, tokenizer, dataset, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
            max_prompt_length=a.max_prompt_length, batch_size=a.batch_size, seed=a.seed, temperature=a.temperature,
        )  # fmt: skip
    print(json.dumps(metrics, indent=2))
    if a.output_file:
        with open(a.output_file, "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics


def score_predictions_file(a: Any) -> dict[str, float]:
    """Metrics of a ``hfcoop generate`` jsonl: against each row's ``reference`` (conditional), or against the texts
    of ``dataset_name`` (unconditional samples: BLEU against the set, Self-BLEU)."""
    from .metrics import compute_generation_metrics

    rows = read_predictions(a.predictions_file)
    predictions = [r["completion"].strip() for _, r in rows]
    if "reference" in rows[0][1]:
        references = [r["reference"].strip() for _, r in rows]
        return compute_generation_metrics(predictions, references, task="conditional")
    require(bool(a.dataset_name), f"{a.predictions_file} has no `reference` column: give --dataset_name as the "
                                  "reference set of these unconditional samples.")  # fmt: skip
    require(len(rows) >= 2, f"{a.predictions_file} has {len(rows)} unconditional sample: Self-BLEU compares samples "
                            "with each other, so give at least 2 rows (or a `reference` in each row).")  # fmt: skip
    dataset = eval_dataset_from(a)
    require("text" in dataset.column_names, "unconditional samples are scored against a `text` dataset.")
    return compute_generation_metrics(predictions, [t.strip() for t in dataset["text"]], task="unconditional",
                                      seed=a.seed)  # fmt: skip


def read_predictions(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a predictions jsonl, checked: one JSON object per line with a string ``completion``,
    and a string ``reference`` in every row or in none (a file with only some would be scored as the wrong task)."""
    require(os.path.isfile(path), f"the predictions file '{path}' does not exist.")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
            require(isinstance(row, dict), f"{path}, line {number}: not a JSON object with a `completion`.")
            for key in ("completion", "reference"):
                if key in row or key == "completion":
                    require(isinstance(row.get(key), str), f"{path}, line {number}: `{key}` must be a string, got "
                                                           f"{json.dumps(row.get(key))[:60]}.")  # fmt: skip
            rows.append((number, row))
    require(bool(rows), f"{path} has no rows: it needs one JSON object with a `completion` per line.")
    with_reference = [n for n, r in rows if "reference" in r]
    if with_reference and len(with_reference) < len(rows):
        missing = next(n for n, r in rows if "reference" not in r)
        raise InputError(f"{path}, line {missing}: no `reference`, but line {with_reference[0]} has one. Give every "
                         "row its reference (conditional samples) or none (unconditional samples).")  # fmt: skip
    return rows


def eval_dataset_from(a: Any) -> Any:
    """The evaluation rows of ``dataset_name`` (its first ``max_eval_samples``), mapped by the task preset and
    checked as training checks its data (every row's columns, the first bad row named)."""
    from .data import apply_task, load_any_dataset, validate_dataset

    dataset = load_any_dataset(a.dataset_name, a.dataset_config, a.split)
    if a.max_eval_samples is not None:
        dataset = dataset.select(range(min(a.max_eval_samples, len(dataset))))
    dataset = apply_task(dataset, a.task)
    validate_dataset(dataset, a.dataset_name)
    return dataset


@dataclass
class SweepArguments(EvaluateArguments):
    """``hfcoop sweep``: the quality-diversity curve over sampling temperatures (Caccia et al., 2020)."""

    model_name_or_path: list[str] = field(metadata={"help": "One or more generators; one curve each."})
    temperatures: list[float] = field(
        default_factory=lambda: [0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.5], metadata={"help": "Temperatures to sample at."}
    )
    quality_metric: str | None = field(
        default=None, metadata={"help": "x-axis metric (default bleu-4 unconditional, rougeL conditional)."}
    )
    diversity_metric: str | None = field(
        default=None, metadata={"help": "y-axis metric (default self-bleu-4 unconditional, distinct-2 conditional)."}
    )
    output_dir: str = field(default="sweep", metadata={"help": "Where sweep.csv and sweep.png go."})


@exits_on_input_error
def sweep_cli(argv: list[str]) -> list[dict[str, Any]]:
    import csv

    from .evaluation import generation_quality
    from .modeling import load_causal_lm, load_tokenizer
    from .plotting import plot_sweep

    from .guards import check_writable
    from .metrics import compute_generation_metrics

    (a,) = parse((SweepArguments,), argv)
    check_ranges(a)
    require(bool(a.dataset_name), "sweep needs --dataset_name: the evaluation data (Hub id, folder or file) whose "
                                  "quality-diversity curve it draws.")  # fmt: skip
    require(not os.path.isfile(a.output_dir), f"--output_dir '{a.output_dir}' is a file: give a folder.")
    check_writable(a.output_dir)  # before any sample is drawn
    dataset = eval_dataset_from(a)
    conditional = "text" not in dataset.column_names  # prompt/completion or conversational rows
    x = a.quality_metric or ("rougeL" if conditional else "bleu-4")
    y = a.diversity_metric or ("distinct-2" if conditional else "self-bleu-4")
    toy = ["a b c", "a b d"]  # the metric names this task reports, from a two-row toy
    names = [*compute_generation_metrics(toy, toy, task="conditional" if conditional else "unconditional"),
             "nll_per_token"]  # fmt: skip
    for flag, metric in (("--quality_metric", x), ("--diversity_metric", y)):
        require(metric in names, f"{flag} {metric!r} is not a metric of this data; choose one of {', '.join(names)}.")
    rows: list[dict[str, Any]] = []
    for path in a.model_name_or_path:
        model, tokenizer = load_causal_lm(path), load_tokenizer(None, path)
        for temperature in a.temperatures:
            metrics = generation_quality(
                model, tokenizer, dataset, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
                max_prompt_length=a.max_prompt_length, batch_size=a.batch_size, seed=a.seed, temperature=temperature,
            )  # fmt: skip
            rows.append({"model": path, "temperature": temperature, **metrics})
            print(f"{path} T={temperature}: {x}={metrics[x]:.4f} {y}={metrics[y]:.4f}")
    with open(os.path.join(a.output_dir, "sweep.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_sweep(rows, x, y, os.path.join(a.output_dir, "sweep.png"))
    print(f"hfcoop: wrote {a.output_dir}/sweep.csv and sweep.png")
    return rows


@dataclass
class GenerateArguments:
    """``hfcoop generate``: sample from a saved generator (unconditionally, for prompts, or for a dataset's rows)."""

    model_name_or_path: str = field(metadata={"help": "Generator (Hub id or local path)."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts from a dataset (Hub id, folder, jsonl/json/csv/parquet file) with prompt/completion "
                  "columns or a --task preset; each output row keeps its prompt and reference."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    task: str = field(default="auto", metadata={"help": "Column preset (auto, summarization, question_generation, ...)."})
    split: str = field(default="test", metadata={"help": "Split of a Hub dataset."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N rows of the dataset."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "One single-line prompt per line (multi-line prompts: use --dataset_name)."}
    )
    num_samples: int | None = field(
        default=None,
        metadata={"help": "Samples per prompt (default: 1 per dataset row, 10 per prompts_file line or unconditional)."},
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Most tokens per sample."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Prompts keep their last N tokens (None: as many as fit the model)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus filtering (1.0: off)."})
    batch_size: int = field(default=32, metadata={"help": "Rows per generation batch (plain sampling)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    output_file: str | None = field(default=None, metadata={"help": "Write the rows here (jsonl)."})
    decoding: str = field(
        default="sample",
        metadata={"help": "sample (plain ancestral sampling), resample (K candidates resampled by D) or mcts (MCTS "
                  "guided by p.D); the last two need `discriminator_name_or_path`."},
    )
    discriminator_name_or_path: str | None = field(
        default=None, metadata={"help": "Cooperative decoding: a one-logit sequence classifier (e.g. GCN's export)."}
    )
    num_candidates: int = field(default=8, metadata={"help": "resample: candidates per sample."})
    num_simulations: int = field(default=16, metadata={"help": "mcts: simulations per token."})


def generation_requests(a: Any, tokenizer: Any = None, eos_ids: list[int] | None = None) -> list[dict[str, str]]:
    """One ``{"prompt", ["reference"]}`` per sample to draw, from the dataset, the prompts file or BOS.

    Conversational rows (``messages``, or message-list prompt/completion) are rendered by the tokenizer's chat
    template exactly as training renders them; their prompts carry the template's special tokens verbatim."""
    require(not (a.dataset_name and a.prompts_file), "give either --dataset_name or --prompts_file, not both.")
    if a.dataset_name:
        from .data import is_conversational, render_conversational_dataset

        dataset = eval_dataset_from(a)
        if len(dataset) and is_conversational(dataset[0]):
            dataset = render_conversational_dataset(dataset, tokenizer, eos_ids)
            clean = [tokenizer.decode(tokenizer(r["completion"], add_special_tokens=False)["input_ids"],
                                      skip_special_tokens=True).strip() for r in dataset]  # the answer, not its markup
            return [{"prompt": r["prompt"], "reference": ref, "chat": True}
                    for r, ref in zip(dataset, clean) for _ in range(a.num_samples or 1)]  # fmt: skip
        if "prompt" not in dataset.column_names:
            raise SystemExit("hfcoop: generate --dataset_name needs prompt/completion rows (or a --task preset that "
                             "makes them); for unconditional samples leave out the dataset.")  # fmt: skip
        n = a.num_samples or 1
        return [{"prompt": r["prompt"], "reference": r["completion"]} for r in dataset for _ in range(n)]
    n = a.num_samples or 10
    if a.prompts_file:
        with open(a.prompts_file) as f:
            return [{"prompt": line.rstrip("\n")} for line in f if line.strip() for _ in range(n)]
    return [{"prompt": ""}] * n


@exits_on_input_error
def generate_cli(argv: list[str]) -> list[dict[str, str]]:
    import torch

    from .batching import pad_left
    from .cooperative_decoding import prompt_rows
    from .modeling import eos_token_ids, load_causal_lm, load_tokenizer, max_positions
    from .sampling import build_generation_config, generation_mode, sample_completions

    (a,) = parse((GenerateArguments,), argv)
    check_ranges(a)
    if a.decoding not in ("sample", "resample", "mcts"):
        raise SystemExit(f"hfcoop: unknown decoding '{a.decoding}'. Choose sample, resample or mcts.")
    if a.decoding != "sample" and not a.discriminator_name_or_path:
        raise SystemExit(f"hfcoop: --decoding {a.decoding} needs --discriminator_name_or_path.")
    require(not (a.dataset_name and a.prompts_file), "give either --dataset_name or --prompts_file, not both.")
    require(not a.prompts_file or os.path.isfile(a.prompts_file), f"the --prompts_file '{a.prompts_file}' does not exist.")
    check_output_path(a.output_file, "--output_file")  # before any sample is drawn
    torch.manual_seed(a.seed)
    model = load_causal_lm(a.model_name_or_path)
    problem = length_budget_problem(max_positions(model), a.max_prompt_length, a.max_new_tokens,
                                    "--max_prompt_length", "--max_new_tokens")  # fmt: skip
    require(problem is None, str(problem))
    tokenizer = load_tokenizer(None, a.model_name_or_path)
    eos_ids = eos_token_ids(tokenizer, model)
    requests = generation_requests(a, tokenizer, eos_ids)
    config = build_generation_config(tokenizer, a.max_new_tokens, a.temperature, a.top_k, a.top_p, eos_ids)
    completions: list[str] = []
    if a.decoding != "sample":
        from .cooperative_decoding import cooperative_generate

        # Requests for one prompt are consecutive: one cooperative call per run of equal prompts.
        start = 0
        while start < len(requests):
            prompt, end = requests[start]["prompt"], start
            while end < len(requests) and requests[end]["prompt"] == prompt:
                end += 1
            completions += cooperative_generate(
                model, a.discriminator_name_or_path, [prompt] * (end - start) if prompt else None,
                num_samples=end - start, tokenizer=tokenizer, method=a.decoding, max_new_tokens=a.max_new_tokens,
                temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, num_candidates=a.num_candidates,
                num_simulations=a.num_simulations, add_special_tokens=not requests[start].get("chat"),
            )  # fmt: skip
            start = end
    else:
        # As in training, prompts keep their last tokens: what fits the model's positions beside the new tokens.
        limit = a.max_prompt_length or (max_positions(model) or 10**9) - a.max_new_tokens  # >= 1: checked above
        with generation_mode(model) as g:
            for start in range(0, len(requests), a.batch_size):
                batch = requests[start : start + a.batch_size]
                # Chat prompts already hold the template's special tokens: not added twice.
                ids = prompt_rows(tokenizer, [r["prompt"] for r in batch], len(batch), limit,
                                  add_special_tokens=not batch[0].get("chat"))  # fmt: skip
                prompt_ids, prompt_mask = pad_left(ids, tokenizer.pad_token_id)
                out, _ = sample_completions(g, prompt_ids, prompt_mask, config)
                completions += tokenizer.batch_decode(out, skip_special_tokens=True)
    rows = [{"prompt": r["prompt"], "completion": c, **({"reference": r["reference"]} if "reference" in r else {})}
            for r, c in zip(requests, completions)]  # fmt: skip
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if a.output_file:
        with open(a.output_file, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return rows


def recipes_cli(argv: list[str]) -> list[str]:
    """``hfcoop recipes``: the bundled recipes (``--config`` takes their names) and accelerate configs;
    ``hfcoop recipes NAME`` prints one (to copy and edit)."""
    from .bundled import ACCELERATE_CONFIGS, find_recipe, list_recipes, recipe_summary, recipes_root

    if argv and argv[0] not in ("-h", "--help"):
        path = find_recipe(argv[0])
        if path is None:
            raise SystemExit(f"hfcoop: no bundled recipe '{argv[0]}'; `hfcoop recipes` lists them.")
        print(open(path).read(), end="")
        return [path]
    names = list_recipes()
    width = max(map(len, names))
    print(f"Bundled recipes ({recipes_root()}): hfcoop train <algorithm> --config <name>")
    for name in names:
        print(f"  {name:<{width}}  {recipe_summary(name)}")
    print(f"accelerate configs (--accelerate_config NAME --num_processes N): {', '.join(ACCELERATE_CONFIGS)}, or a path")
    print("`hfcoop recipes NAME` prints one, to copy and edit.")
    return names


def env_cli(argv: list[str]) -> dict[str, str]:
    from .env import print_env

    return print_env()


VERBS = {"train": train, "evaluate": evaluate_cli, "generate": generate_cli, "sweep": sweep_cli, "recipes": recipes_cli,
         "env": env_cli}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HFCOOP_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        run(argv)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - the CLI turns every failure into one actionable line
        if debug:
            raise
        raise SystemExit(f"hfcoop: {one_line(err)}\n(the full traceback: add --debug or set HFCOOP_DEBUG=1)") from None


def one_line(err: BaseException) -> str:
    """An exception as one line: its message (with the kind for errors whose message alone is unclear)."""
    message = " ".join(str(err).split())
    from .guards import known_secrets, redact_text

    message = redact_text(message, known_secrets())
    if isinstance(err, (ValueError, TypeError)) or type(err).__module__.startswith("hfcoop"):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def end_distributed() -> None:
    """Destroys the process group at the end of the command, as `trl sft` does (`Trainer.end`): a ZeRO-3 rank left
    with live gloo threads at exit aborted ("terminate called without an active exception", exit -6). Here, not in
    `train()`: code that calls `train()` several times in one launch needs the group between the calls."""
    if "torch" not in sys.modules:  # a verb that never loaded torch (help, recipes, env) has no group
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"verbs: {', '.join(VERBS)}; algorithms: {', '.join(ALGORITHMS)}")
        return
    verb = argv[0]
    if verb not in VERBS:
        raise SystemExit(f"hfcoop: unknown command '{verb}'. Choose one of: {', '.join(VERBS)}.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verb != "train" and int(os.environ.get("RANK", "0")) != 0:
        return  # under `accelerate launch`, inference verbs run once (they use no collective ops)
    from .run_lock import release_all_run_locks

    try:
        VERBS[verb](argv[1:])
        end_distributed()
    except InputError as err:  # bad input: its one line says what to fix, no traceback hint
        raise SystemExit(f"hfcoop: {one_line(err)}") from None
    except KeyboardInterrupt as stop:  # Ctrl-C, or a preemption that saved a checkpoint: one line, no traceback
        print(f"hfcoop: {str(stop) or 'interrupted (Ctrl-C).'}", file=sys.stderr)
        raise SystemExit(getattr(stop, "exit_code", 130)) from None
    finally:
        release_all_run_locks()


if __name__ == "__main__":
    main()
