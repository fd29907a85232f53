"""The completions tables of `log_completions_steps` through each experiment tracker, executed offline.

    pip install wandb mlflow-skinny trackio
    python benchmarks/trackers_check.py wandb mlflow trackio

Per tracker: a tiny CoT run (2 steps, a table every step) with ``report_to=[tracker]``, everything local
(W&B offline mode, MLflow file store, trackio's local database), then the logged tables are read back from the
tracker's own files. Not part of the test suite: the trackers are optional and not dev dependencies.
Results: ``benchmarks/results/trackers_check.md``.
"""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = os.path.join(ROOT, "recipes", "data", "coco_train_sample.txt")


def run(tracker: str, folder: str) -> None:
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=folder, WANDB_SILENT="true", MLFLOW_ALLOW_FILE_STORE="true",
                      MLFLOW_TRACKING_URI=f"file:{folder}/mlruns", TRACKIO_DIR=f"{folder}/trackio")  # fmt: skip
    from datasets import Dataset

    from hfcoop import CoTConfig, CoTTrainer
    from hfcoop.tiny import build_tiny_model

    with open(CAPTIONS) as f:
        lines = [line.strip() for line in f if line.strip()][:300]
    lm = build_tiny_model(f"{folder}/lm", lines, vocab_size=400, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    args = CoTConfig(output_dir=f"{folder}/out", max_steps=2, per_device_train_batch_size=4, max_completion_length=6,
                     logging_steps=1, log_completions_steps=1, num_completions_to_log=3, report_to=[tracker],
                     save_strategy="no", use_cpu=True, run_name=f"hfcoop-{tracker}")  # fmt: skip
    CoTTrainer(lm, args=args, train_dataset=Dataset.from_dict({"text": lines[:32]})).train()


def tables(tracker: str, folder: str) -> list[dict]:
    """The completions tables as the tracker stored them."""
    if tracker == "wandb":
        import wandb

        wandb.finish()
        paths = sorted(glob.glob(f"{folder}/wandb/offline-run-*/files/media/table/**/*.table.json", recursive=True))
        return [json.load(open(p)) for p in paths]
    if tracker == "mlflow":
        paths = sorted(glob.glob(f"{folder}/mlruns/**/artifacts/completions/*.json", recursive=True))
        return [json.load(open(p)) for p in paths]
    db = glob.glob(f"{folder}/trackio/**/*.db", recursive=True)[0]
    rows = sqlite3.connect(db).execute("select metrics from metrics").fetchall()
    return [m["completions"] for m in (json.loads(r[0]) for r in rows) if "completions" in m]


def main(trackers: list[str]) -> None:
    for tracker in trackers:
        folder = tempfile.mkdtemp(prefix=f"hfcoop-{tracker}-")
        run(tracker, folder)
        found = tables(tracker, folder)
        assert len(found) == 2, f"{tracker}: {len(found)} tables, expected one per step"
        print(f"{tracker}: {len(found)} tables; first: {json.dumps(found[0])[:300]}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["wandb", "mlflow", "trackio"])
