"""What a user watches while a run trains: tables of sampled completions with the companion's score of each.

Modelled on TRL's ``GRPOTrainer`` (``log_completions``): rows are gathered from every process, then the main
process writes them to ``<output_dir>/completions/completions_<step>.jsonl`` and to each tracker that
``report_to`` names and that can show a table — TensorBoard (a Markdown table under the ``completions`` text
tag), Weights & Biases and trackio (``Table``), MLflow (``log_table``). Other trackers get the jsonl file.
The tables are the run's report, not the model: a push to the Hub uploads them only with ``hub_include_reports``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import TrainerCallback

COMPLETIONS_TAG = "completions"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (TensorBoard renders Markdown in its text tab); pipes and newlines escaped."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_completions(trainer: Any, rows: list[dict[str, Any]], step: int) -> None:
    """Writes one table of completions (main process only) to the jsonl file and the trackers of ``report_to``."""
    folder = os.path.join(trainer.args.output_dir, COMPLETIONS_TAG)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"completions_{step:05d}.jsonl"), "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    report_to = trainer.args.report_to or []
    for callback in trainer.callback_handler.callbacks:
        writer = getattr(callback, "tb_writer", None)  # transformers' TensorBoardCallback, once training began
        if writer is not None:
            writer.add_text(COMPLETIONS_TAG, markdown_table(rows), step)
            writer.flush()
    columns = list(rows[0])
    data = [[r[c] for c in columns] for r in rows]
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({COMPLETIONS_TAG: wandb.Table(columns=columns, data=data)}, step=step)
    if "trackio" in report_to:
        import trackio

        trackio.log({COMPLETIONS_TAG: trackio.Table(columns=columns, data=data)}, step=step)
    if "mlflow" in report_to:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_table({c: [r[c] for r in rows] for c in columns}, f"{COMPLETIONS_TAG}/step_{step:05d}.json")


class CompletionsLogger(TrainerCallback):
    """At the end of every ``log_completions_steps``-th optimizer step, writes the rows the step recorded."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.flush_completions()
