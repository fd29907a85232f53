"""Shared helpers of the two quality benchmarks (``oracle_turing_test.py``, ``coco_quality.py``).

Everything here drives hfcoop through its public API, as a user would: build a GPT-2 with ``transformers``, save
it, and hand the path to ``XConfig`` + ``XTrainer``. Only the bookkeeping around the runs lives here: the
algorithms run (labels of hfcoop's registry, ``hfcoop.algorithms``), timed training phases, periodic evaluation
callbacks, markdown tables, the git state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from typing import Any, Callable

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import TrainerCallback

from hfcoop.algorithms import by_label

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

ALGORITHMS = tuple(by_label(label).label for label in ("MLE", "CoT", "ψ-MLE", "GCN"))  # the ones these benchmarks run


def setup(threads: int, device: str) -> None:
    """Thread count (1 by default: the CPU machines are shared) and quiet logging."""
    from transformers import logging as hf_logging

    if device == "cpu":
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def argument_parser(doc: str, quick: dict[str, Any], lr: float = 1e-3, pretrain_lr: float = 3e-3) -> argparse.ArgumentParser:
    """The options every quality benchmark shares (budget, optimisation, companions); ``None`` = the budget's."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU budget: " + json.dumps(quick))
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training (GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (machines are shared)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--pretrain-steps", type=int, help="shared MLE pretraining steps (0: every run starts from init)")
    p.add_argument("--steps", type=int, help="algorithm steps after the MLE pretraining")
    p.add_argument("--batch-size", type=int, default=64, help="real sequences per step (SeqGAN: 64)")
    p.add_argument("--lr", type=float, default=lr, help="Adam lr of generator and companion, algorithm phase")
    p.add_argument("--pretrain-lr", type=float, default=pretrain_lr, help="Adam lr of the MLE pretraining")
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--eval-every", type=int, help="steps between training-curve points (0: none)")
    p.add_argument("--temperatures", type=float, nargs="+")
    p.add_argument("--mediator-n-layer", type=int, help="CoT mediator of its own shape (CoT App.: a stronger "
                   "mediator), MLE-pretrained like the generator; default: a copy of the generator (trainer default)")
    p.add_argument("--mediator-n-embd", type=int, help="width of that mediator (CoT App.: 2x the generator's)")
    p.add_argument("--mediator-n-head", type=int)
    p.add_argument("--mediator-dropout", type=float, default=0.0, help="embedding/residual dropout of that mediator")
    p.add_argument("--mediator-steps", type=int, default=1, help="CoT N_m")
    p.add_argument("--companion-warmup", type=int, default=0,
                   help="companion_warmup_steps of CoT / ψ-MLE / GCN (counted inside --steps: equal budget)")
    p.add_argument("--companion-lr", type=float, help="learning rate of every companion (default: --lr)")
    p.add_argument("--update-order", default="papers", choices=["papers", "simultaneous"],
                   help="update_order of CoT / ψ-MLE / GCN (simultaneous: one joint step per cycle, one process)")
    p.add_argument("--gcn-baseline", action="store_true", help="GCN weight_baseline (REINFORCE baseline on w)")
    p.add_argument("--tag", default="", help="suffix of the result files (investigation runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS)
    return p


def parse_arguments(
    p: argparse.ArgumentParser, argv: list[str] | None, quick: dict[str, Any], full: dict[str, Any]
) -> argparse.Namespace:
    """Parses, fills unset options from the budget, always evaluates T = 1, and sets threads and logging."""
    a = p.parse_args(argv)
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if 1.0 not in a.temperatures:
        a.temperatures = sorted(a.temperatures + [1.0])
    setup(a.threads, a.device)
    return a


def result_stem(name: str, a: argparse.Namespace) -> str:
    return name + ("_quick" if a.quick else "") + (f"_{a.tag}" if a.tag else "")


def training_settings(a: argparse.Namespace, max_completion_length: int) -> tuple[dict[str, Any], dict[str, dict]]:
    """(settings every run shares, per-algorithm settings): the papers' defaults, GCN drawing one sample per real
    row like the others, and the companion options of the command line."""
    shared = dict(
        per_device_train_batch_size=a.batch_size, max_completion_length=max_completion_length,
        lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no", logging_steps=50, report_to="none",
        disable_tqdm=True, use_cpu=a.device == "cpu", bf16=a.bf16, seed=a.seed, data_seed=a.seed,
        dataloader_num_workers=0,
    )  # fmt: skip
    per_algorithm = {
        "CoT": dict(mediator_steps=a.mediator_steps, gamma=0.0, mediator_learning_rate=a.companion_lr),
        "ψ-MLE": dict(mixture_weight=0.5, bregman_f="logistic", ratio_target="mixture", flatten_alpha=1.0,
                      ratio_learning_rate=a.companion_lr),
        "GCN": dict(weighting="d", sampler="model", num_candidates=1, mle_weight=0.0,
                    discriminator_learning_rate=a.companion_lr, weight_baseline=a.gcn_baseline),
    }  # fmt: skip
    for settings in per_algorithm.values():
        settings["companion_warmup_steps"] = a.companion_warmup
        settings["update_order"] = a.update_order
    return shared, per_algorithm


def own_mediator(a: argparse.Namespace) -> bool:
    return bool(a.mediator_n_embd or a.mediator_n_layer)


def mediator_shape(a: argparse.Namespace) -> dict[str, Any]:
    """n_layer / n_embd / n_head / dropout of the CoT mediator built with ``--mediator-*`` (generator's by default)."""
    return dict(n_layer=a.mediator_n_layer or a.n_layer, n_embd=a.mediator_n_embd or a.n_embd,
                n_head=a.mediator_n_head or a.n_head, dropout=a.mediator_dropout)  # fmt: skip


def companion_protocol(a: argparse.Namespace) -> str:
    """The protocol sentence for the companion options."""
    shape = mediator_shape(a)
    if own_mediator(a):
        text = (f" CoT mediator: its own GPT-2 ({shape['n_layer']} layers x {shape['n_embd']}, dropout "
                f"{shape['dropout']}), MLE-pretrained like the generator; N_m = {a.mediator_steps}.")  # fmt: skip
    else:
        text = f" CoT mediator: a copy of the generator; N_m = {a.mediator_steps}."
    if a.companion_warmup:
        text += f" Companion warm-up: the first {a.companion_warmup} of the {a.steps} steps train the companion alone."
    if a.companion_lr:
        text += f" Companion learning rate {a.companion_lr}."
    if a.gcn_baseline:
        text += " GCN with weight_baseline (weights minus their mean)."
    if a.update_order != "papers":
        text += f" Update order '{a.update_order}': each cycle ends in one step that trains both models."
    return text


def pretrain(
    init: str, out: str, steps: int, lr: float, shared: dict[str, Any], train_dataset: Any,
    curve_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None, eval_every: int = 0,
) -> tuple[str, float, list[dict[str, float]]]:  # fmt: skip
    """MLE from ``init`` for ``steps``, saved to ``out``: (out, training seconds, training curve)."""
    cb = PeriodicEval(curve_fn or (lambda g: {}), eval_every if curve_fn else 0)
    config = make_config("MLE", dict(shared, output_dir=out + "_run", max_steps=steps, learning_rate=lr), {})
    trainer, seconds = train("MLE", init, train_dataset, config, [cb])
    trainer.save_model(out)
    return out, seconds, cb.history


def trainer_classes(name: str) -> tuple[type, type]:
    """(Config, Trainer) of an algorithm of :data:`ALGORITHMS` (or "CoT (scratch)" etc.), from hfcoop's registry."""
    algorithm = by_label(name)
    return algorithm.config_cls, algorithm.trainer_cls


def make_config(name: str, shared: dict[str, Any], algorithm: dict[str, dict[str, Any]]) -> Any:
    """``XConfig(**shared, **algorithm[base name])``, keeping only fields the config has."""
    config_cls, _ = trainer_classes(name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    extra = {k: v for k, v in algorithm.get(name.split(" ")[0], {}).items() if k in fields}
    return config_cls(**shared, **extra)


class PeriodicEval(TrainerCallback):
    """Calls ``fn(generator) -> dict`` every ``every`` optimizer steps (and at the start / end), in eval mode and
    without touching the training RNG; results land in ``self.history`` as ``{"step": s, **fn(...)}``."""

    def __init__(
        self, fn: Callable[[torch.nn.Module], dict[str, float]], every: int, offset: int = 0, at_start: bool = True
    ) -> None:
        self.fn, self.every, self.offset, self.at_start = fn, every, offset, at_start
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    def _run(self, model: torch.nn.Module, step: int) -> None:
        if self.history and self.history[-1]["step"] == step + self.offset:
            return
        start = time.perf_counter()
        generator = getattr(model, "generator", model)
        was_training = generator.training
        generator.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            record = self.fn(generator)
        generator.train(was_training)
        self.history.append({"step": step + self.offset, **record})
        self.seconds += time.perf_counter() - start

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.every and self.at_start and model is not None:
            self._run(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.every and model is not None and state.global_step % self.every == 0:
            self._run(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.every and model is not None:
            self._run(model, state.global_step)


def train(
    name: str,
    model_path: str,
    train_dataset: Any,
    config: Any,
    callbacks: list[TrainerCallback] | None = None,
    companion: Any = None,
) -> tuple[Any, float]:
    """Builds ``XTrainer(model_path, <companion argument>=companion, args=config, train_dataset=...)``, trains it,
    returns (trainer, training seconds excluding the callbacks' evaluation time)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    algorithm = by_label(name)
    trainer = algorithm.trainer_cls(model_path, **algorithm.companion_kwargs(companion), args=config,
                                    train_dataset=train_dataset, callbacks=callbacks)  # fmt: skip
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    seconds -= sum(getattr(cb, "seconds", 0.0) for cb in callbacks or [])
    return trainer, seconds


def count_parameters(module: torch.nn.Module | None) -> int:
    """Distinct parameters (tied weights counted once)."""
    if module is None:
        return 0
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


LOG_PREFIXES = ("generator/", "companion/", "samples/")  # the roles of ARCHITECTURE.md's metric table


def last_logged(trainer: Any) -> dict[str, float]:
    """The last logged value of every trainer metric (:data:`LOG_PREFIXES`) of the run."""
    out: dict[str, float] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if key.startswith(LOG_PREFIXES) and isinstance(value, (int, float)):
                out[key] = float(value)
    return out


def statistics_lines(results: dict[str, dict]) -> list[str]:
    """Markdown section with each run's last logged trainer metrics (``results[name]["logs"]``)."""
    lines = ["## Trainer statistics at the end of training (last logged values)", ""]
    for name, r in results.items():
        if r.get("logs"):
            lines.append(f"- **{name}**: " + ", ".join(f"`{k}` {v:.3g}" for k, v in sorted(r["logs"].items())))
    return lines


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return "—" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_GIT_STATE: list[str] = []


def git_state() -> str:
    """HEAD and the modified tracked files of the working tree the benchmark ran against: read once, when the
    benchmark starts (its code is loaded then; commits made while it runs must not be credited to it)."""
    if _GIT_STATE:
        return _GIT_STATE[0]
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--name-only", "HEAD"], capture_output=True, text=True,
                               check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        _GIT_STATE.append("unknown (not a git checkout)")
        return _GIT_STATE[0]
    _GIT_STATE.append(head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else " (clean)"))
    return _GIT_STATE[0]



def environment_line(device: str, threads: int) -> str:
    import platform

    import transformers

    where = f"{device}" + (f", {threads} thread(s), {os.cpu_count()} CPU cores on the machine" if device == "cpu" else "")
    if device.startswith("cuda") and torch.cuda.is_available():
        where += f" ({torch.cuda.get_device_name()})"
    return (f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}; "
            f"{where}; code: {git_state()}")  # fmt: skip


def plot_training_curves(ax: Any, results: dict[str, dict], key: str, pretrain_steps: int, title: str) -> None:
    """``key`` against the optimizer step for every run with a curve, the end of MLE pretraining dotted."""
    for name, r in results.items():
        if r["curve"]:
            ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]], marker=".", label=name)
    ax.axvline(pretrain_steps, color="gray", ls=":", lw=1)
    ax.set_xlabel("optimizer step (dotted: end of MLE pretraining)")
    ax.set_title(title)
    ax.legend(fontsize=8)


def save_figure(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


git_state()  # the snapshot, taken when a benchmark imports this module (before it trains anything)
