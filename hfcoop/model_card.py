"""Model cards for exported generators: algorithm, paper, base model, data, hyperparameters, metrics, command."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

from .guards import known_secrets, redact_command

from .env import framework_versions

# The card's text; its metadata (base_model, datasets, library_name, tags, pipeline_tag, model-index) is a
# huggingface_hub ModelCardData, written above it as YAML.
_BODY = """
# {title}

This model was fine-tuned with **{algorithm_title}** using {hfcoop_link}, a
Hugging Face-native toolkit for cooperative alternatives to maximum likelihood.

- **Algorithm:** {algorithm_title}{paper_line}
- **Base model:** {base_model}
- **Training data:** {datasets}
- **Evaluation data:** {eval_datasets}
- **Training length:** {training_length}
- **Companion:** {companion} (not included{companion_note})

## Use

```python
{usage}
print(generator({example_prompt})[0]["generated_text"])
```

`generation_config.json` holds the sampling settings of training and of the results below (do_sample,
temperature, top-k, top-p, max_new_tokens, every EOS id): `pipeline` and `model.generate()` sample with them.

## Training hyperparameters

{hyperparameters}

## Results

{metrics}

## Framework versions

{versions}

## Reproduce

```bash
{command}
```
{citation_block}"""

_USAGE = """from transformers import pipeline

generator = pipeline("text-generation", "{model_id}")"""
# transformers and peft load an adapter's generation config from its base model: the adapter's own is passed.
_ADAPTER_USAGE = """from transformers import GenerationConfig, pipeline

generator = pipeline("text-generation", "{model_id}", generation_config=GenerationConfig.from_pretrained("{model_id}"))"""

_HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs",
    "max_completion_length", "seed",
)  # fmt: skip
_SAMPLING = ("temperature", "top_k", "top_p")  # only for algorithms that sample from the generator while training
# Evaluation numbers that describe the run's speed, not the model: not results.
_NOT_RESULTS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")

# A Hub id: "name" or "owner/name" (letters, digits, -, _, .), which is not a file or folder here.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SPLIT_SUFFIX = re.compile(r"^(.+) \(([\w.-]+) split\)$")
_DATA_EXTENSIONS = (".txt", ".json", ".jsonl", ".csv", ".parquet", ".arrow", ".tsv")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can be a Hub model or dataset id (card metadata must not hold local paths)."""
    return (
        bool(_HUB_ID.match(name))
        and not os.path.exists(name)
        and not name.lower().endswith(_DATA_EXTENSIONS)
    )


def hfcoop_url() -> str | None:
    """Where hfcoop is published: the ``url`` of its setup.py, read from the installed package's metadata."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        return metadata("hfcoop").get("Home-page") or None
    except PackageNotFoundError:
        return None


def format_results(metrics: dict[str, float], quality: dict[str, dict[str, float]] | None) -> str:
    """Evaluation metrics of the run and, when ``hfcoop train`` wrote one, its before/after quality report."""
    parts = []
    if metrics:
        parts.append("Last evaluation during training:\n\n" + "\n".join(
            f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()))  # fmt: skip
    if quality:
        columns = [c for c in ("before", "after") if c in quality]
        keys = list(quality[columns[-1]])
        rows = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for key in keys:
            cells = [quality[c].get(key) for c in columns]
            rows.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
        parts.append(
            "Quality of samples before and after training (`quality.json`; BLEU, Self-BLEU, ROUGE and distinct-n "
            "are fractions in [0, 1], `nll_per_token` is in nats):\n\n" + "\n".join(rows)
        )
    return "\n\n".join(parts) or "No evaluation was run."


def model_index_results(
    metrics: dict[str, float], quality: dict[str, dict[str, float]] | None, eval_datasets: list[str]
) -> list[Any]:
    """The model-index entries (``EvalResult``) of the card: the quality report's "after" column when ``hfcoop
    train`` wrote one, else the last evaluation's numbers; on the first evaluation data set (its Hub id as the
    dataset type, else the file's name; a ``"name (test split)"`` as name and split). None without one."""
    from huggingface_hub import EvalResult

    if not eval_datasets:
        return []
    if quality and quality.get("after"):
        values = dict(quality["after"])
    else:  # eval_loss is the generator's per-token NLL of the evaluation completions (prediction_step)
        values = {("nll_per_token" if k == "eval_loss" else k.removeprefix("eval_").removeprefix("generation/")): v
                  for k, v in metrics.items() if k not in _NOT_RESULTS}  # fmt: skip
    name, split = eval_datasets[0], None
    if match := _SPLIT_SUFFIX.match(name):  # the CLI names a split of dataset_name so
        name, split = match.groups()
    dataset_type = name if is_hub_id(name) else os.path.basename(name.rstrip("/")) or name
    return [
        EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=name, dataset_split=split,
                   metric_type=key, metric_value=round(float(value), 6))
        for key, value in values.items() if isinstance(value, (int, float)) and math.isfinite(value)
    ]  # fmt: skip


def render_model_card(
    *,
    model_id: str,
    algorithm: str,
    algorithm_title: str,
    paper: str,
    citation: str,
    base_model: str | None,
    datasets: list[str],
    companion: str,
    companion_saved: bool,
    hyperparameters: dict[str, Any],
    metrics: dict[str, float],
    command: str,
    training_length: str = "not recorded",
    eval_datasets: list[str] | None = None,
    quality: dict[str, dict[str, float]] | None = None,
    versions: dict[str, str] | None = None,
    hfcoop_url: str | None = None,
    library_name: str = "transformers",
    tags: list[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    example_prompt: str = "",
) -> str:
    """The model card text (a ``huggingface_hub.ModelCard``); pure, so tests can check every field without a trainer.

    ``model_id`` is what the usage snippet loads: the Hub repo id when pushed, else the local path. ``datasets`` are
    the training data; only Hub ids among them go to the ``datasets:`` metadata (a local path there would link to a
    wrong or missing Hub page), likewise ``base_model``. ``eval_datasets`` are named in the text and in the
    model-index, which holds the quality results (:func:`model_index_results`).
    """
    from huggingface_hub import ModelCard, ModelCardData

    eval_datasets = list(eval_datasets or [])
    title = model_id.rstrip("/").split("/")[-1]
    results = model_index_results(metrics, quality, eval_datasets)
    data = ModelCardData(
        base_model=base_model if base_model and is_hub_id(base_model) else None,
        datasets=[d for d in datasets if is_hub_id(d)] or None,
        library_name=library_name,
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["hfcoop", algorithm, *(tags or [])])),
        language=language,
        license=license,
        model_name=title if results else None,  # the model-index's name
        eval_results=results or None,
    )
    body = _BODY.format(
        title=title,
        usage=(_ADAPTER_USAGE if library_name == "peft" else _USAGE).format(model_id=model_id),
        example_prompt=json.dumps(example_prompt, ensure_ascii=False),  # a Python string literal
        algorithm_title=algorithm_title,
        paper_line=f"\n- **Paper:** {paper}" if paper else "",
        base_model=base_model or "trained from scratch",
        datasets=", ".join(datasets) or "not named",
        eval_datasets=", ".join(eval_datasets) or "none",
        training_length=training_length,
        hfcoop_link=f"[hfcoop]({hfcoop_url})" if hfcoop_url else "hfcoop",
        companion=companion,
        companion_note="; saved in the subfolder of the same name" if companion_saved else "",
        hyperparameters="\n".join(f"- {k}: {v}" for k, v in hyperparameters.items()) or "- (defaults)",
        metrics=format_results(metrics, quality),
        versions="\n".join(f"- {k}: {v}" for k, v in (versions or {}).items()) or "- (not recorded)",
        command=command,
        citation_block=f"\n## Citation\n\n```bibtex\n{citation.strip()}\n```\n" if citation else "",
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def describe_dataset(dataset: Any, argument: str, with_columns: bool = True) -> str:
    """A data set passed to the trainer without a name (an API run): what the card can still say about it."""
    parts = []
    try:
        parts.append(f"{len(dataset)} rows")
    except TypeError:  # an IterableDataset
        pass
    if with_columns and getattr(dataset, "column_names", None):
        parts.append("columns: " + ", ".join(dataset.column_names))
    return f"the `{argument}` given to the trainer" + (f" ({'; '.join(parts)})" if parts else "")


def training_length(args: Any, state: Any) -> tuple[str, dict[str, Any]]:
    """How long the run trained, and the one length setting that decided it (max_steps when set: Trainer then
    ignores num_train_epochs, so the card does not list both)."""
    steps = f"{state.global_step} optimizer steps"
    if args.max_steps > 0:
        return f"{steps} (max_steps {args.max_steps})", {"max_steps": args.max_steps}
    epochs = f", {state.epoch:.3g} epochs" if state.epoch is not None else ""
    return f"{steps}{epochs} (num_train_epochs {args.num_train_epochs})", {"num_train_epochs": args.num_train_epochs}


def usage_id(trainer: Any, output_dir: str) -> str:
    """What the card's snippet loads: the Hub repo the run pushes to (its full id once the repo exists), else the
    local folder."""
    args = trainer.args
    if args.push_to_hub and (getattr(trainer, "hub_model_id", None) or args.hub_model_id):
        return trainer.hub_model_id or args.hub_model_id
    return os.path.abspath(output_dir)


def example_prompt(trainer: Any) -> str:
    """A prompt for the card's snippet: the first evaluation prompt of string prompt/completion data, else none."""
    dataset = getattr(trainer, "raw_eval_dataset", None)
    try:
        prompt = dataset[0]["prompt"] if dataset is not None and "prompt" in dataset.column_names else ""
    except (TypeError, KeyError, IndexError):
        return ""
    return prompt if isinstance(prompt, str) and len(prompt) <= 200 and "\n" not in prompt else ""


def write_model_card(
    trainer: Any,
    output_dir: str,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    **_: Any,
) -> str:
    """Writes ``README.md`` for the exported generator of ``trainer`` and returns its path. The keyword arguments
    are those of ``Trainer.create_model_card`` / ``push_to_hub`` that a card uses."""
    args = trainer.args
    metrics = {}
    for entry in trainer.state.log_history:
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    datasets = datasets or list(getattr(trainer, "dataset_names", []))
    eval_datasets = list(getattr(trainer, "eval_dataset_names", []))
    if not eval_datasets and getattr(trainer, "raw_eval_dataset", None) is not None:
        eval_datasets = [describe_dataset(trainer.raw_eval_dataset, "eval_dataset")]
    datasets = [d for d in datasets if d not in eval_datasets]  # evaluation data is not training data
    if not datasets and trainer.train_dataset is not None:
        datasets = [describe_dataset(trainer.train_dataset, "train_dataset", with_columns=False)]  # tokenised by now
    quality = None
    quality_path = os.path.join(args.output_dir, "quality.json")  # written by `hfcoop train`
    if os.path.isfile(quality_path):
        with open(quality_path) as f:
            quality = json.load(f)
    length, length_setting = training_length(args, trainer.state)
    hyperparameters = {k: getattr(args, k) for k in _HYPERPARAMETERS if hasattr(args, k)}
    hyperparameters = {k: v for k, v in hyperparameters.items() if k not in ("max_steps", "num_train_epochs")}
    hyperparameters |= length_setting
    if trainer.samples_from_generator:
        hyperparameters |= {k: getattr(args, k) for k in _SAMPLING}
    from .modeling import PeftModel

    adapter = PeftModel is not None and isinstance(trainer.pair.generator, PeftModel)
    text = render_model_card(
        model_id=usage_id(trainer, output_dir),
        algorithm=trainer.algorithm,
        algorithm_title=trainer.config_class.algorithm_title,
        paper=trainer.paper,
        citation=trainer.citation,
        base_model=trainer.base_model_id,
        datasets=datasets,
        companion=trainer.companion_name if trainer.pair.companion is not None else "none",
        companion_saved=bool(args.save_companion),
        hyperparameters=hyperparameters | trainer.card_hyperparameters(),
        metrics=metrics,
        training_length=length,
        eval_datasets=eval_datasets,
        quality=quality,
        versions=framework_versions(),
        hfcoop_url=hfcoop_url(),
        library_name="peft" if adapter else "transformers",  # an adapter export loads through peft
        tags=[tags] if isinstance(tags, str) else tags,
        language=language,
        license=license,
        example_prompt=example_prompt(trainer),
        # Redacted here too: a script run as `python train.py --hub_token ...` reaches the card through sys.argv.
        command=redact_command(getattr(trainer, "launch_command", None) or sys.argv, known_secrets(trainer.args)),
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path
