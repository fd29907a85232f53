"""``hfcoop`` command line: ``train <algorithm> --config recipe.yaml``, ``evaluate``, ``generate``.

YAML recipes and command-line flags fill the same dataclasses (TRL's ``TrlParser``): the script arguments
below plus the algorithm's ``XConfig`` (every ``TrainingArguments`` field). Flags override the YAML. Every verb
also runs under ``accelerate launch -m hfcoop.cli ...``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

ALGORITHMS = {"mle": "MLE", "cot": "CoT", "psi_mle": "PsiMLE", "gcn": "GCN", "genere": "Genere"}


@dataclass
class ScriptArguments:
    """What to train on and from: model, companion, data (everything that is not a training hyperparameter)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Generator: a Hub id or local path of a causal LM."}
    )
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
    dataset_eval_split: str | None = field(
        default=None, metadata={"help": "Split of `dataset_name` used for evaluation (None: no evaluation split)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    generators: str | None = field(
        default=None, metadata={"help": "GENERE only: `module:attribute` naming a list of black-box data generators."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters on the generator instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get adapters (None: peft's default for the architecture)."}
    )
    quality_samples: int = field(
        default=200, metadata={"help": "Samples generated for the before/after quality report (0: skip it)."}
    )


def _algorithm(name: str) -> tuple[type, type]:
    import hfcoop

    if name not in ALGORITHMS:
        raise SystemExit(f"hfcoop: unknown algorithm '{name}'. Choose one of: {', '.join(ALGORITHMS)}.")
    prefix = ALGORITHMS[name]
    config_cls, trainer_cls = getattr(hfcoop, f"{prefix}Config", None), getattr(hfcoop, f"{prefix}Trainer", None)
    if config_cls is None or trainer_cls is None:
        raise SystemExit(f"hfcoop: algorithm '{name}' is not available in this version of hfcoop.")
    return config_cls, trainer_cls


def parse(dataclass_types: tuple[type, ...], argv: list[str]) -> tuple[Any, ...]:
    """YAML ``--config`` + flags into dataclasses; unknown fields and bad YAML are clear errors."""
    import yaml
    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    try:
        return parser.parse_args_and_config(argv)
    except yaml.YAMLError as err:
        raise SystemExit(f"hfcoop: the --config file is not valid YAML: {err}") from None
    except ValueError as err:
        raise SystemExit(f"hfcoop: {err}") from None


def load_datasets(script: ScriptArguments) -> tuple[Any, Any]:
    from .data import apply_task, load_any_dataset

    if script.dataset_name is None:
        raise SystemExit("hfcoop: set `dataset_name` (a Hub dataset id or a local file) in the recipe or as a flag.")
    train = load_any_dataset(script.dataset_name, script.dataset_config, script.dataset_train_split)
    eval_ = None
    if script.eval_dataset_name:
        eval_ = load_any_dataset(script.eval_dataset_name, script.dataset_config, script.dataset_eval_split or "train")
    elif script.dataset_eval_split:
        eval_ = load_any_dataset(script.dataset_name, script.dataset_config, script.dataset_eval_split)
    if script.max_train_samples is not None:
        train = train.select(range(min(script.max_train_samples, len(train))))
    if eval_ is not None and script.max_eval_samples is not None:
        eval_ = eval_.select(range(min(script.max_eval_samples, len(eval_))))
    try:
        return apply_task(train, script.task), (apply_task(eval_, script.task) if eval_ is not None else None)
    except ValueError as err:
        raise SystemExit(f"hfcoop: {err}") from None


def resolve_model(script: ScriptArguments, train: Any, args: Any, generators: Any = None) -> str:
    """The generator path; builds the tiny model (once, inside the run's folder) when asked to."""
    if script.model_name_or_path:
        return script.model_name_or_path
    if not script.tiny_model:
        raise SystemExit("hfcoop: set `model_name_or_path` (Hub id or local path), or `tiny_model: true` for a demo.")
    from .tiny import build_tiny_model

    path = os.path.join(args.output_dir, "tiny-base-model")
    with args.main_process_first(desc="tiny model"):  # under accelerate launch: built once, read by every rank
        if not os.path.isfile(os.path.join(path, "config.json")):
            columns = [c for c in ("text", "prompt", "completion") if c in train.column_names]
            texts = [row[c] for row in train for c in columns]
            if generators:  # GENERE: the tokenizer must also cover what the black-box generators write
                import random

                rng = random.Random(0)
                texts += [v for g in generators for _ in range(200) for v in g(rng).values()]
            build_tiny_model(
                path,
                texts,
                vocab_size=script.tiny_model_vocab_size,
                n_layer=script.tiny_model_layers,
                n_embd=script.tiny_model_hidden,
            )
    return path


def peft_config_from(script: ScriptArguments) -> Any:
    if not script.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=script.lora_r,
        lora_alpha=script.lora_alpha,
        lora_dropout=script.lora_dropout,
        target_modules=script.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def companion_from(name: str, script: ScriptArguments) -> Any:
    if name != "genere":
        return script.companion_name_or_path
    if not script.generators:
        raise SystemExit("hfcoop: GENERE needs `generators: module:attribute` naming a list of data generators.")
    module_name, _, attribute = script.generators.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def train(argv: list[str]) -> dict[str, Any]:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(f"usage: hfcoop train <{'|'.join(ALGORITHMS)}> --config recipe.yaml [--flag value ...]")
    name, argv = argv[0], argv[1:]
    config_cls, trainer_cls = _algorithm(name)
    script, args = parse((ScriptArguments, config_cls), argv)
    train_ds, eval_ds = load_datasets(script)
    companion = () if name == "mle" else (companion_from(name, script),)
    model = resolve_model(script, train_ds, args, companion[0] if name == "genere" else None)
    trainer = trainer_cls(
        model,
        *companion,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=peft_config_from(script),
    )
    trainer.dataset_names = [d for d in (script.dataset_name, script.eval_dataset_name) if d]
    trainer.launch_command = "hfcoop train " + " ".join([name, *argv])
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
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if assess:
        report["after"] = quality(trainer, eval_ds, script.quality_samples)
    trainer.save_model()
    if trainer.is_world_process_zero():
        from .plotting import plot_training_curves

        plot_training_curves(trainer.state.log_history, os.path.join(args.output_dir, "training_curves.png"))
        if report:
            with open(os.path.join(args.output_dir, "quality.json"), "w") as f:
                json.dump(report, f, indent=2)
            print_quality(report)
        print(f"hfcoop: generator saved to {args.output_dir}")
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=trainer.dataset_names)
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
    """``hfcoop evaluate``: quality of a saved generator on a dataset."""

    model_name_or_path: str = field(metadata={"help": "Generator to evaluate (Hub id or local path)."})
    dataset_name: str = field(metadata={"help": "Evaluation data (Hub id, folder or file)."})
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


def evaluate_cli(argv: list[str]) -> dict[str, float]:
    from .evaluation import generation_quality
    from .modeling import load_causal_lm, load_tokenizer

    (a,) = parse((EvaluateArguments,), argv)
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


def eval_dataset_from(a: Any) -> Any:
    from .data import apply_task, load_any_dataset

    dataset = load_any_dataset(a.dataset_name, a.dataset_config, a.split)
    if a.max_eval_samples is not None:
        dataset = dataset.select(range(min(a.max_eval_samples, len(dataset))))
    return apply_task(dataset, a.task)


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


def sweep_cli(argv: list[str]) -> list[dict[str, Any]]:
    import csv

    from .evaluation import generation_quality
    from .modeling import load_causal_lm, load_tokenizer
    from .plotting import plot_sweep

    (a,) = parse((SweepArguments,), argv)
    dataset = eval_dataset_from(a)
    conditional = "prompt" in dataset.column_names
    x = a.quality_metric or ("rougeL" if conditional else "bleu-4")
    y = a.diversity_metric or ("distinct-2" if conditional else "self-bleu-4")
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
    os.makedirs(a.output_dir, exist_ok=True)
    with open(os.path.join(a.output_dir, "sweep.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_sweep(rows, x, y, os.path.join(a.output_dir, "sweep.png"))
    print(f"hfcoop: wrote {a.output_dir}/sweep.csv and sweep.png")
    return rows


@dataclass
class GenerateArguments:
    """``hfcoop generate``: sample from a saved generator."""

    model_name_or_path: str = field(metadata={"help": "Generator (Hub id or local path)."})
    prompts_file: str | None = field(default=None, metadata={"help": "One prompt per line (none: unconditional)."})
    num_samples: int = field(default=10, metadata={"help": "Samples (per prompt when prompts are given)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Most tokens per sample."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus filtering (1.0: off)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    output_file: str | None = field(default=None, metadata={"help": "Write samples here (jsonl)."})
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


def generate_cli(argv: list[str]) -> list[dict[str, str]]:
    import torch

    from .data import pad_left, start_token_id
    from .modeling import load_causal_lm, load_tokenizer
    from .sampling import build_generation_config, generation_mode, sample_completions

    (a,) = parse((GenerateArguments,), argv)
    if a.decoding not in ("sample", "resample", "mcts"):
        raise SystemExit(f"hfcoop: unknown decoding '{a.decoding}'. Choose sample, resample or mcts.")
    if a.decoding != "sample" and not a.discriminator_name_or_path:
        raise SystemExit(f"hfcoop: --decoding {a.decoding} needs --discriminator_name_or_path.")
    torch.manual_seed(a.seed)
    model = load_causal_lm(a.model_name_or_path)
    tokenizer = load_tokenizer(None, a.model_name_or_path)
    config = build_generation_config(tokenizer, a.max_new_tokens, a.temperature, a.top_k, a.top_p)
    if a.prompts_file:
        with open(a.prompts_file) as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    else:
        prompts = [""]
    rows = []
    if a.decoding != "sample":
        from .cooperative_decoding import cooperative_generate

        for prompt in prompts:
            texts = cooperative_generate(
                model, a.discriminator_name_or_path, [prompt] * a.num_samples if prompt else None,
                num_samples=a.num_samples, tokenizer=tokenizer, method=a.decoding, max_new_tokens=a.max_new_tokens,
                temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, num_candidates=a.num_candidates,
                num_simulations=a.num_simulations,
            )  # fmt: skip
            rows += [{"prompt": prompt, "completion": t} for t in texts]
        prompts = []  # done
    with generation_mode(model) as g:
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"] if prompt else [start_token_id(tokenizer)]
            prompt_ids, prompt_mask = pad_left([ids] * a.num_samples, tokenizer.pad_token_id)
            out, _ = sample_completions(g, prompt_ids, prompt_mask, config)
            rows += [{"prompt": prompt, "completion": t} for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if a.output_file:
        with open(a.output_file, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return rows


VERBS = {"train": train, "evaluate": evaluate_cli, "generate": generate_cli, "sweep": sweep_cli}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    VERBS[verb](argv[1:])


if __name__ == "__main__":
    main()
