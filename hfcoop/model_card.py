"""Model cards for exported generators: algorithm, paper, base model, data, hyperparameters, metrics, command."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

_TEMPLATE = """---
library_name: transformers
tags:
- hfcoop
- {algorithm}
- text-generation
{base_model_line}{datasets_block}---

# {model_name}

This model was fine-tuned with **{algorithm_title}** using [hfcoop](https://pypi.org/project/hfcoop/), a
Hugging Face-native toolkit for cooperative alternatives to maximum likelihood.

- **Algorithm:** {algorithm_title}{paper_line}
- **Base model:** {base_model}
- **Training data:** {datasets}
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

## Reproduce

```bash
{command}
```
{citation_block}"""

_HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs",
    "max_completion_length", "temperature", "top_k", "top_p", "seed",
)  # fmt: skip


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
) -> str:
    """The model card text; pure, so tests can check every field without a trainer."""
    hp = "\n".join(f"- {k}: {v}" for k, v in hyperparameters.items()) or "- (defaults)"
    mt = "\n".join(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items())
    return _TEMPLATE.format(
        model_name=model_name,
        algorithm=algorithm,
        algorithm_title=algorithm_title,
        paper_line=f"\n- **Paper:** {paper}" if paper else "",
        base_model=base_model or "trained from scratch",
        base_model_line=f"base_model: {base_model}\n" if base_model and not os.path.isdir(base_model) else "",
        datasets=", ".join(datasets) or "user-supplied dataset",
        datasets_block="datasets:\n" + "".join(f"- {d}\n" for d in datasets) if datasets else "",
        companion=companion,
        companion_note="; saved in the subfolder of the same name" if companion_saved else "",
        hyperparameters=hp,
        metrics=mt or "No evaluation was run.",
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
        hyperparameters={k: getattr(args, k) for k in _HYPERPARAMETERS if hasattr(args, k)}
        | trainer.card_hyperparameters(),
        metrics=metrics,
        command=getattr(trainer, "launch_command", None) or " ".join(shlex.quote(a) for a in sys.argv),
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path
