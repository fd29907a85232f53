"""Model cards for exported generators: algorithm, paper, base model, data, hyperparameters, metrics, command."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from .guards import known_secrets, redact_command

from .env import framework_versions

_TEMPLATE = """---
library_name: transformers
tags:
- hfcoop
- {algorithm}
- text-generation
{base_model_line}{datasets_block}---

# {model_name}

This model was fine-tuned with **{algorithm_title}** using {hfcoop_link}, a
Hugging Face-native toolkit for cooperative alternatives to maximum likelihood.

- **Algorithm:** {algorithm_title}{paper_line}
- **Base model:** {base_model}
- **Training data:** {datasets}
- **Evaluation data:** {eval_datasets}
- **Companion:** {companion} (not included{companion_note})

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{model_name}")
tokenizer = AutoTokenizer.from_pretrained("{model_name}")
```

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

_HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs",
    "max_completion_length", "seed",
)  # fmt: skip
_SAMPLING = ("temperature", "top_k", "top_p")  # only for algorithms that sample from the generator while training

# A Hub dataset id: "name" or "owner/name" (letters, digits, -, _, .), which is not a file or folder here.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_DATA_EXTENSIONS = (".txt", ".json", ".jsonl", ".csv", ".parquet", ".arrow", ".tsv")


def is_hub_dataset_id(name: str) -> bool:
    """Whether ``name`` can be a Hub dataset id (the card's ``datasets:`` metadata must not hold local paths)."""
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


def render_model_card(
    *,
    model_name: str,
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
    eval_datasets: list[str] | None = None,
    quality: dict[str, dict[str, float]] | None = None,
    versions: dict[str, str] | None = None,
    hfcoop_url: str | None = None,
) -> str:
    """The model card text; pure, so tests can check every field without a trainer.

    ``datasets`` are the training data; only Hub ids among them go to the ``datasets:`` metadata (a local path
    there would link to a wrong or missing Hub page). ``eval_datasets`` are named in the text only.
    """
    hp = "\n".join(f"- {k}: {v}" for k, v in hyperparameters.items()) or "- (defaults)"
    hub_datasets = [d for d in datasets if is_hub_dataset_id(d)]
    versions_text = "\n".join(f"- {k}: {v}" for k, v in (versions or {}).items()) or "- (not recorded)"
    return _TEMPLATE.format(
        model_name=model_name,
        algorithm=algorithm,
        algorithm_title=algorithm_title,
        paper_line=f"\n- **Paper:** {paper}" if paper else "",
        base_model=base_model or "trained from scratch",
        base_model_line=f"base_model: {base_model}\n" if base_model and not os.path.isdir(base_model) else "",
        datasets=", ".join(datasets) or "user-supplied dataset",
        eval_datasets=", ".join(eval_datasets or []) or "none",
        datasets_block="datasets:\n" + "".join(f"- {d}\n" for d in hub_datasets) if hub_datasets else "",
        hfcoop_link=f"[hfcoop]({hfcoop_url})" if hfcoop_url else "hfcoop",
        companion=companion,
        companion_note="; saved in the subfolder of the same name" if companion_saved else "",
        hyperparameters=hp,
        metrics=format_results(metrics, quality),
        versions=versions_text,
        command=command,
        citation_block=f"\n## Citation\n\n```bibtex\n{citation.strip()}\n```\n" if citation else "",
    )


def write_model_card(trainer: Any, output_dir: str, dataset_name: str | list[str] | None = None, **_: Any) -> str:
    """Writes ``README.md`` for the exported generator of ``trainer`` and returns its path."""
    args = trainer.args
    metrics = {}
    for entry in trainer.state.log_history:
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    datasets = datasets or list(getattr(trainer, "dataset_names", []))
    eval_datasets = list(getattr(trainer, "eval_dataset_names", []))
    datasets = [d for d in datasets if d not in eval_datasets]  # evaluation data is not training data
    quality = None
    quality_path = os.path.join(args.output_dir, "quality.json")  # written by `hfcoop train`
    if os.path.isfile(quality_path):
        with open(quality_path) as f:
            quality = json.load(f)
    hyperparameters = {k: getattr(args, k) for k in _HYPERPARAMETERS if hasattr(args, k)}
    if trainer.samples_from_generator:
        hyperparameters |= {k: getattr(args, k) for k in _SAMPLING}
    text = render_model_card(
        model_name=args.hub_model_id or os.path.basename(os.path.abspath(output_dir)),
        algorithm=trainer.algorithm,
        algorithm_title=trainer.algorithm_title,
        paper=trainer.paper,
        citation=trainer.citation,
        base_model=trainer.base_model_id,
        datasets=datasets,
        companion=trainer.companion_name if trainer.pair.companion is not None else "none",
        companion_saved=bool(args.save_companion),
        hyperparameters=hyperparameters | trainer.card_hyperparameters(),
        metrics=metrics,
        eval_datasets=eval_datasets,
        quality=quality,
        versions=framework_versions(),
        hfcoop_url=hfcoop_url(),
        # Redacted here too: a script run as `python train.py --hub_token ...` reaches the card through sys.argv.
        command=redact_command(getattr(trainer, "launch_command", None) or sys.argv, known_secrets(trainer.args)),
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path
