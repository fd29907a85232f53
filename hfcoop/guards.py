"""What protects a user's runs, data and secrets: output folders, checkpoints, divergence, tokens.

- An ``output_dir`` that holds an earlier run is refused unless the user overwrites or resumes it, and an
  unwritable one is refused before any compute.
- A checkpoint is marked complete only after every file of it is on disk, so a save cut short by a killed job is
  never the one ``resume_from_checkpoint=True`` picks; a checkpoint without optimizer/scheduler/RNG state is
  refused (resuming from it would silently not be exact).
- A non-finite loss or gradient stops training with an error naming the step; non-finite weights are never saved.
- Tokens never reach a file: commands are redacted before they are written, and pickled configs drop them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
from typing import Any, Iterable

import torch

CHECKPOINT_MARKER = "hfcoop_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Files and folders a run writes into its output_dir (hfcoop's, Trainer's, the trackers'): what marks an earlier
# run, and what an overwrite clears. Anything else in the folder is the user's and is left alone.
RUN_FILE_PATTERNS = (
    "checkpoint-*", "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "adapter_config.json", "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template*",
    "hfcoop_*", "training_args.bin", "quality.json", "training_curves.png", "README.md", "runs", "mediator",
    "ratio_model", "discriminator", "genere_state.json", "all_results.json", "train_results.json",
    "eval_results.json", "trainer_state.json",
)  # fmt: skip
_MODEL_MARKERS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                  "hfcoop_training_args.json")  # fmt: skip
_SECRET_FLAG = re.compile(r"(token|secret|password|api_key|apikey)", re.IGNORECASE)


class NonFiniteTrainingError(RuntimeError):
    """Training diverged: a loss, gradient or weight is NaN or infinite."""


class OutputDirError(ValueError):
    """The output folder cannot take this run (an earlier run is there, or it cannot be written)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed exactly."""


# ----------------------------------------------------------------------------------------------- output folders
def earlier_run_files(output_dir: str) -> list[str]:
    """Names in ``output_dir`` that show an earlier run finished or checkpointed there (empty if none)."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir))
    return [n for n in names if n in _MODEL_MARKERS or _CHECKPOINT_RE.match(n)]


def check_output_dir(output_dir: str, *, overwrite: bool, resuming: bool, clear: bool = True) -> None:
    """Refuses, before any compute, an ``output_dir`` that cannot be written or that holds an earlier run.

    Resuming continues the earlier run in place; ``overwrite`` replaces it: its run files are removed first (only
    the names a run writes, see ``RUN_FILE_PATTERNS``), so the new run's export never sits beside the old run's
    companion, checkpoints or ``quality.json``.
    """
    check_writable(output_dir)
    found = earlier_run_files(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise OutputDirError(
            f"output_dir '{output_dir}' holds an earlier run ({shown}). Choose another output_dir, resume it with "
            "resume_from_checkpoint=True (CLI: --resume_from_checkpoint true), or replace it with "
            "overwrite_output_dir=True (CLI: --overwrite_output_dir true)."
        )
    if not clear:  # other processes of a distributed run: the main process clears
        return
    for name in run_files(output_dir):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def run_files(output_dir: str) -> list[str]:
    names = set()
    for pattern in RUN_FILE_PATTERNS:
        names.update(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(output_dir), pattern)))
    return sorted(names)


def check_writable(output_dir: str) -> None:
    """Creates ``output_dir`` and writes a probe file in it; a clear error instead of a failure after training."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".hfcoop-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(
            f"output_dir '{output_dir}' cannot be written ({err.strerror or err}). Choose a folder you can write to."
        ) from None


# ----------------------------------------------------------------------------------------------- checkpoints
def mark_checkpoint_complete(checkpoint_dir: str, global_step: int) -> None:
    """Written last, after every file of the checkpoint: its presence is what makes a checkpoint resumable."""
    tmp = os.path.join(checkpoint_dir, CHECKPOINT_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": global_step, "files": sorted(os.listdir(checkpoint_dir))}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(checkpoint_dir, CHECKPOINT_MARKER))  # atomic: the marker is whole or absent


def checkpoint_problem(checkpoint_dir: str) -> str | None:
    """Why ``checkpoint_dir`` cannot be resumed exactly, or None when it can."""
    if not os.path.isdir(checkpoint_dir):
        return "it does not exist"
    if os.path.isfile(os.path.join(checkpoint_dir, CHECKPOINT_MARKER)):
        return None
    # No marker: written by another tool or an older hfcoop, or cut short. Check the state a resume needs.
    names = os.listdir(checkpoint_dir)
    missing = []
    if "trainer_state.json" not in names:
        missing.append("trainer_state.json")
    optimizer = any(n.startswith(("optimizer", "global_step")) for n in names)  # torch / FSDP / DeepSpeed layouts
    if not optimizer:
        missing.append("optimizer state")
    if "scheduler.pt" not in names and not any(n.startswith("global_step") for n in names):
        missing.append("scheduler.pt")
    if not any(n.startswith("rng_state") for n in names):
        missing.append("rng_state*.pth")
    return f"it lacks {', '.join(missing)} (a save cut short, or saved with save_only_model)" if missing else None


def complete_checkpoints(output_dir: str) -> list[str]:
    """Resumable checkpoints of ``output_dir``, oldest first (by step, not by name)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), n) for n in os.listdir(output_dir) if (m := _CHECKPOINT_RE.match(n))]
    return [os.path.join(output_dir, n) for _, n in sorted(found) if checkpoint_problem(os.path.join(output_dir, n)) is None]


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: ``True`` means the newest *complete* one of ``output_dir``."""
    if resume_from_checkpoint in (None, False, ""):
        return None
    if resume_from_checkpoint is True:
        complete = complete_checkpoints(output_dir)
        if not complete:
            raise CheckpointError(
                f"resume_from_checkpoint=True but '{output_dir}' holds no complete checkpoint. Start without "
                "resuming, or pass the path of a checkpoint folder."
            )
        return complete[-1]
    problem = checkpoint_problem(str(resume_from_checkpoint))
    if problem is not None:
        raise CheckpointError(
            f"cannot resume from '{resume_from_checkpoint}': {problem}. Resuming would not continue the run exactly; "
            f"resume from another checkpoint (complete ones: {[os.path.basename(c) for c in complete_checkpoints(os.path.dirname(str(resume_from_checkpoint)))] or 'none'}) "
            "or start a new run from its weights (model_name_or_path)."
        )
    return str(resume_from_checkpoint)


# ----------------------------------------------------------------------------------------------- divergence
DIVERGENCE_FIX = (
    "Lower learning_rate (and the companion's), keep gradient clipping on (max_grad_norm > 0), or use bf16 instead "
    "of fp16."
)


def check_finite_loss(loss: torch.Tensor, step: int, limit: float = float("inf")) -> None:
    """Raises when the loss is NaN/inf or beyond ``limit`` (a loss that large means the weights already diverged)."""
    value = float(loss.detach())
    if value != value or abs(value) == float("inf"):
        raise NonFiniteTrainingError(f"training diverged at step {step + 1}: the loss is {value}. {DIVERGENCE_FIX}")
    if abs(value) > limit:
        raise NonFiniteTrainingError(
            f"training diverged at step {step + 1}: the loss is {value:.3g}, beyond divergence_loss={limit:g}. "
            f"{DIVERGENCE_FIX}"
        )


def quarantine_checkpoint(output_dir: str, step: int) -> str | None:
    """After divergence is seen at ``step``, the checkpoint of that step holds the diverged weights: it loses its
    completion mark (so ``resume_from_checkpoint=True`` skips it). Returns the newest checkpoint still good."""
    folder = os.path.join(output_dir, f"checkpoint-{step}")
    marker = os.path.join(folder, CHECKPOINT_MARKER)
    if os.path.isfile(marker):
        os.replace(marker, os.path.join(folder, "hfcoop_diverged.json"))
    good = [c for c in complete_checkpoints(output_dir) if int(c.rsplit("-", 1)[1]) < step]
    return good[-1] if good else None


def check_finite_gradients(parameters: Iterable[torch.nn.Parameter], step: int, grad_norm: Any = None) -> None:
    """Raises when a gradient is NaN/inf (uses Trainer's grad norm when it computed one)."""
    if grad_norm is not None:
        value = float(grad_norm)
        finite = value == value and abs(value) != float("inf")
    else:
        grads = [p.grad for p in parameters if p.grad is not None]
        finite = not grads or bool(torch.isfinite(torch.stack([g.detach().float().norm() for g in grads])).all())
        value = None
    if not finite:
        raise NonFiniteTrainingError(
            f"training diverged at step {step + 1}: the gradient norm is {value if value is not None else 'not finite'}. "
            f"{DIVERGENCE_FIX}"
        )


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """Never write a non-finite model: a NaN export would load fine and generate garbage."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteTrainingError(
                f"refusing to save the {what}: its weight '{name}' holds NaN/inf values (training diverged). "
                f"{DIVERGENCE_FIX}"
            )


# ----------------------------------------------------------------------------------------------- secrets
def redact_command(argv: list[str] | str, secrets: Iterable[str | None] = ()) -> str:
    """A shell command with the values of token/secret flags and any known secret string replaced by ``***``."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    out, hide_next = [], False
    for word in words:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag, eq, _ = word.partition("=")
        if word.startswith("-") and _SECRET_FLAG.search(flag):
            if eq:
                out.append(f"{flag}=***")
            else:
                out.append(word)
                hide_next = True
            continue
        out.append(word)
    text = " ".join(shlex.quote(w) if w != "***" and not w.endswith("=***") else w for w in out)
    return redact_text(text, secrets)


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def known_secrets(args: Any = None) -> list[str]:
    """Secret strings this process knows: the config's hub token and the token environment variables."""
    values = [getattr(args, "hub_token", None)]
    values += [os.environ.get(k) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")]
    return [v for v in values if v]
