"""What protects a user's runs, data and secrets: output folders, checkpoints, divergence, tokens.

- A run writes into an ``output_dir`` that is empty, holds an earlier hfcoop run (refused unless the user overwrites
  or resumes it), or, with ``overwrite_output_dir``, holds other files; it never replaces or removes a file it did
  not write. An unwritable ``output_dir`` is refused before any compute.
- A checkpoint is marked complete only after every file of it is on disk, so a save cut short by a killed job is
  never the one ``resume_from_checkpoint=True`` picks; a checkpoint without optimizer/scheduler/RNG state is
  refused (resuming from it would silently not be exact).
- A non-finite loss or gradient stops training with an error naming the step; non-finite weights are never saved.
- Tokens never reach a file: commands are redacted before they are written, and pickled configs drop them.
"""

from __future__ import annotations

import glob
import hashlib
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
    "eval_results.json", "trainer_state.json", "completions",
)  # fmt: skip
_MODEL_MARKERS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                  "hfcoop_training_args.json")  # fmt: skip
RUN_MARKER = "_hfcoop_run.json"  # "_": the Hub upload of output_dir skips it, as it skips the lock
LOCK_NAME = "_hfcoop_run.lock"  # the run lock's file (hfcoop.run_lock), taken before the folder is checked
_TMP_SUFFIX = ".tmp"  # _write_json's temporary file, renamed over the real one
_PROBE_PREFIX = ".hfcoop-write-test-"  # check_writable's probe; another process of the run may be writing one
_MARKER_NOTE = "hfcoop writes into this folder: an overwrite replaces the files it wrote, never others."
_SECRET_FLAG = re.compile(r"(token|secret|password|api_key|apikey)", re.IGNORECASE)


class NonFiniteTrainingError(RuntimeError):
    """Training diverged: a loss, gradient or weight is NaN or infinite."""


class OutputDirError(ValueError):
    """The output folder cannot take this run (an earlier run or other files are there, or it cannot be written)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed exactly."""


# ----------------------------------------------------------------------------------------------- output folders
def owns_output_dir(output_dir: str) -> bool:
    """Whether ``output_dir`` holds an hfcoop run: its marker, or (runs of older versions) hfcoop's own args file or
    a checkpoint hfcoop marked complete."""
    if not os.path.isdir(output_dir):
        return False
    names = os.listdir(output_dir)
    if RUN_MARKER in names or "hfcoop_training_args.json" in names:
        return True
    return any(_CHECKPOINT_RE.match(n) and os.path.isfile(os.path.join(output_dir, n, CHECKPOINT_MARKER)) for n in names)


def earlier_run_files(output_dir: str) -> list[str]:
    """Names in ``output_dir`` that show an earlier run finished or checkpointed there (empty if none)."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir))
    return [n for n in names if n in _MODEL_MARKERS or _CHECKPOINT_RE.match(n)]


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def check_output_dir(output_dir: str, *, overwrite: bool, resuming: bool, clear: bool = True) -> None:
    """Refuses, before any compute, an ``output_dir`` the run may not write into; marks the folder as this run's.

    hfcoop writes into an ``output_dir`` that is missing or empty (but for its lock and write probe), or that holds
    an earlier hfcoop run (its marker ``RUN_MARKER``): resuming continues that run in place; ``overwrite`` replaces
    it: its run files are removed first (only the names a run writes, see ``RUN_FILE_PATTERNS``), so the new run's
    export never sits beside the old run's companion, checkpoints, completions or ``quality.json``; without either
    it is refused. A folder of files hfcoop did not write is refused unless ``overwrite``, which writes beside them,
    and even then if the run would replace one of them (a user's README.md in ``--output_dir .``). A file hfcoop did
    not write is never replaced or removed. An unwritable ``output_dir`` is refused.
    """
    check_writable(output_dir)
    if not owns_output_dir(output_dir):
        _check_foreign_output_dir(output_dir, overwrite)
    else:
        found = earlier_run_files(output_dir)
        if found and not resuming:
            if not overwrite:
                raise OutputDirError(
                    f"output_dir '{output_dir}' holds an earlier run ({_shown(found)}). Choose another output_dir, "
                    "resume it with resume_from_checkpoint=True (CLI: --resume_from_checkpoint true), or replace it "
                    "with overwrite_output_dir=True (CLI: --overwrite_output_dir true)."
                )
            if clear:  # other processes of a distributed run: the main process clears
                for name in run_files(output_dir):
                    path = os.path.join(output_dir, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    elif os.path.lexists(path):
                        os.remove(path)
    if clear:
        _write_json(os.path.join(output_dir, RUN_MARKER), {"written_by": "hfcoop", "note": _MARKER_NOTE})


def _check_foreign_output_dir(output_dir: str, overwrite: bool) -> None:
    """A folder hfcoop has not written to: written only if empty, or beside its files (never over them) with
    ``overwrite``."""
    # hfcoop's own files that another process of this run (or a killed run) may leave here do not count.
    own = (LOCK_NAME, RUN_MARKER, RUN_MARKER + _TMP_SUFFIX)  # the temporary file: while the marker is written
    found = sorted(n for n in os.listdir(output_dir) if n not in own and not n.startswith(_PROBE_PREFIX))
    if found and not overwrite:
        raise OutputDirError(
            f"output_dir '{output_dir}' is not empty and holds no hfcoop run ({_shown(found)}). Choose an empty or "
            "new output_dir, or write beside these files with overwrite_output_dir=True (CLI: --overwrite_output_dir "
            "true); hfcoop never replaces or removes files it did not write."
        )
    clashes = run_files(output_dir)
    if clashes:
        raise OutputDirError(
            f"output_dir '{output_dir}' holds files hfcoop did not write that this run would replace "
            f"({_shown(clashes)}); hfcoop never replaces or removes them, even with overwrite_output_dir. Choose an "
            "empty or new output_dir."
        )


def run_files(output_dir: str) -> list[str]:
    names = set()
    for pattern in RUN_FILE_PATTERNS:
        names.update(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(output_dir), pattern)))
    return sorted(names)


def check_writable(output_dir: str) -> None:
    """Creates ``output_dir`` and writes a probe file in it; a clear error instead of a failure after training."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f"{_PROBE_PREFIX}{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(
            f"output_dir '{output_dir}' cannot be written ({err.strerror or err}). Choose a folder you can write to."
        ) from None


def _write_json(path: str, value: Any) -> None:
    """Writes ``path`` whole or not at all (a temporary file, synced, then renamed over it)."""
    tmp = path + _TMP_SUFFIX
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- checkpoints
def mark_checkpoint_complete(checkpoint_dir: str, global_step: int, run: dict[str, Any] | None = None,
                             resumable: bool = True) -> None:  # fmt: skip
    """Written last, after every file of the checkpoint: its presence is what makes a checkpoint resumable.

    ``run`` (:func:`run_fingerprint`) is what a resume must match; ``resumable`` is False for weights-only saves
    (``save_only_model``)."""
    record = {"global_step": global_step, "files": sorted(os.listdir(checkpoint_dir)), "resumable": resumable}
    _write_json(os.path.join(checkpoint_dir, CHECKPOINT_MARKER), record | ({"run": run} if run else {}))


def unmark_checkpoint(checkpoint_dir: str) -> None:
    """Before a checkpoint folder is written again or deleted: it stops counting as complete first."""
    marker = os.path.join(checkpoint_dir, CHECKPOINT_MARKER)
    if os.path.lexists(marker):
        os.remove(marker)


def checkpoint_record(checkpoint_dir: str) -> dict[str, Any] | None:
    """The completion marker's content (None when the checkpoint has none, or it cannot be read)."""
    try:
        with open(os.path.join(checkpoint_dir, CHECKPOINT_MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def checkpoint_problem(checkpoint_dir: str) -> str | None:
    """Why ``checkpoint_dir`` cannot be resumed exactly, or None when it can."""
    if not os.path.isdir(checkpoint_dir):
        return "it does not exist"
    record = checkpoint_record(checkpoint_dir)
    if record is None:
        diverged = os.path.isfile(os.path.join(checkpoint_dir, "hfcoop_diverged.json"))
        return ("it holds the weights of a run that diverged" if diverged else
                "it has no completion marker (its save was cut short, or hfcoop did not write it)")  # fmt: skip
    if record.get("resumable") is False:
        return ("it was saved with save_only_model=True: weights only, no optimizer, scheduler or RNG state, so a "
                "resumed run would not continue exactly")  # fmt: skip
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
    return f"it lacks {', '.join(missing)} (saved with save_only_model, or files were removed)" if missing else None


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
            found = sorted((int(m.group(1)), n) for n in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
                           if (m := _CHECKPOINT_RE.match(n)))  # fmt: skip
            why = f" ({found[-1][1]}: {checkpoint_problem(os.path.join(output_dir, found[-1][1]))})" if found else ""
            raise CheckpointError(
                f"resume_from_checkpoint=True but '{output_dir}' holds no complete checkpoint{why}. Start without "
                "resuming, or pass the path of a checkpoint folder."
            )
        return complete[-1]
    problem = checkpoint_problem(str(resume_from_checkpoint))
    if problem is not None:
        complete = [os.path.basename(c) for c in complete_checkpoints(os.path.dirname(str(resume_from_checkpoint)))]
        raise CheckpointError(
            f"cannot resume from '{resume_from_checkpoint}': {problem}. Resume from another checkpoint (complete "
            f"ones: {', '.join(complete) or 'none'}) or start a new run from its weights (model_name_or_path)."
        )
    return str(resume_from_checkpoint)


def save_failure(err: BaseException) -> str | None:
    """Why a checkpoint write failed, when it is the filesystem's fault (disk full, quota, I/O), else None.
    torch.save reports a full disk as a RuntimeError ("enforce fail at inline_container.cc ... file write failed")."""
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    text = str(err)
    if "inline_container" in text or "write failed" in text or "No space left" in text:
        return "a file write failed (is the disk full?)"
    return None


def prune_checkpoints(output_dir: str, keep: int | None, protected: Iterable[str | None] = ()) -> None:
    """``save_total_limit``: keeps the newest ``keep`` complete checkpoints (and ``protected``, e.g. the best one);
    deletes the older ones and any unfinished save older than the newest complete checkpoint. Each loses its
    marker before its files, so a deletion cut short never leaves a "complete" checkpoint with files missing."""
    if not keep or keep <= 0:
        return
    complete = complete_checkpoints(output_dir)
    if not complete:
        return
    newest = int(complete[-1].rsplit("-", 1)[1])
    keep_paths = set(complete[-keep:]) | {os.path.normpath(p) for p in protected if p}
    for name in sorted(os.listdir(output_dir)):
        m = _CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and int(m.group(1)) < newest and path not in keep_paths and os.path.normpath(path) not in keep_paths:
            unmark_checkpoint(path)
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- resume checks
def run_fingerprint(algorithm: str, models: dict[str, torch.nn.Module | None], tokenizer: Any) -> dict[str, Any]:
    """What a checkpoint's run is made of: the algorithm, each model's parameter shapes, the tokenizer's hash. A
    resume must match all of them (the weights of another model size or vocabulary would not continue the run)."""
    shapes = {role: {name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}
              for role, model in models.items() if model is not None}  # fmt: skip
    return {"algorithm": algorithm, "shapes": shapes, "tokenizer": tokenizer_hash(tokenizer)}


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of the tokenizer's files' content: vocabulary, merges, normalisation (``tokenizer.json``), special
    tokens and chat template; not its truncation/padding state, which the collator changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else type(tokenizer).__name__
    extra = [sorted(map(str, getattr(tokenizer, "all_special_tokens", []))), getattr(tokenizer, "chat_template", None)]
    return hashlib.sha256(json.dumps([spec, extra], sort_keys=True).encode()).hexdigest()[:16]


def resume_mismatch(saved: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """The first difference between a checkpoint's run and this one, in words (None when they match)."""
    if not saved:
        return None  # a checkpoint of an older hfcoop: nothing recorded to compare
    if saved.get("algorithm") != current["algorithm"]:
        return f"it was saved by a {saved.get('algorithm')} run, this run is {current['algorithm']}"
    for role in sorted(set(saved.get("shapes", {})) | set(current["shapes"])):
        old, new = saved.get("shapes", {}).get(role), current["shapes"].get(role)
        if old is None or new is None:
            return f"the checkpoint {'has no' if old is None else 'has a'} {role}, this run {'has' if old is None else 'has none'}"
        if old == new:
            continue
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                if name not in new:
                    return f"the checkpoint's {role} has parameter '{name}', this run's has not (another model or adapter setting)"
                if name not in old:
                    return f"this run's {role} has parameter '{name}', the checkpoint's has not (another model or adapter setting)"
                return (f"the {role}'s parameter '{name}' has shape {old[name]} in the checkpoint, {new[name]} in this "
                        "run (another model size)")  # fmt: skip
    if saved.get("tokenizer") != current["tokenizer"]:
        return ("its tokenizer differs from this run's (another vocabulary, order of tokens or special tokens: "
                f"hash {saved.get('tokenizer')} vs {current['tokenizer']}); a changed data set rebuilds a tiny "
                "model's tokenizer")  # fmt: skip
    return None


def check_resume_matches(checkpoint: str, current: dict[str, Any]) -> None:
    """Refuses to resume ``checkpoint`` into a run of another algorithm, model shape or tokenizer, in one line."""
    record = checkpoint_record(checkpoint) or {}
    difference = resume_mismatch(record.get("run"), current)
    if difference is not None:
        raise CheckpointError(
            f"cannot resume from '{checkpoint}': {difference}. Resume with the settings that run used, or start a new "
            "run (another output_dir, or overwrite_output_dir=True)."
        )


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
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):  # longest first
        text = text.replace(secret, "***")
    return text


# Keys whose values are secrets, at any depth of init kwargs: token, *_token, *api_key*, *secret*, *password*.
_SECRET_KEY = re.compile(r"(^|_)token$|api_?key|secret|password", re.IGNORECASE)
# Environment variables whose values a run may know (hub and tracker credentials); values shorter than 8
# characters are not treated as secrets (a "1" would blank every digit 1 of every file).
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "COMET_API_KEY", "NEPTUNE_API_TOKEN",
               "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "HF_API_TOKEN")  # fmt: skip


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def secret_values(value: Any) -> list[str]:
    """String values under secret-named keys (``is_secret_key``) at any depth of dicts, lists and objects with a
    ``to_dict`` (a ``BitsAndBytesConfig``); a JSON string (init kwargs given on the command line) is read first."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        try:
            value = value.to_dict()
        except Exception:  # noqa: BLE001 - a config object that cannot describe itself holds nothing we can find
            return []
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_key(k) and isinstance(v, str):
                found.append(v)
            else:
                found += secret_values(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found += secret_values(v)
    return found


def known_secrets(args: Any = None) -> list[str]:
    """Every secret string this run knows: the config's hub token, secret-named keys at any depth of the model /
    companion init kwargs (and their quantization configs), and the credential environment variables."""
    values = [getattr(args, "hub_token", None)]
    for name in ("model_init_kwargs", "companion_init_kwargs"):
        values += secret_values(getattr(args, name, None))
    values += [os.environ.get(k) for k in _SECRET_ENV]
    values += [v for k, v in os.environ.items() if is_secret_key(k.lower()) and len(v) >= 8]
    return sorted({v for v in values if isinstance(v, str) and len(v) >= 4})


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON-like value with secret-named keys' values and every known secret string replaced."""
    secrets = list(secrets)
    if isinstance(value, dict):
        return {k: ("***" if is_secret_key(k) and isinstance(v, str) and v else redact_value(v, secrets))
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v, secrets) for v in value)
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value
