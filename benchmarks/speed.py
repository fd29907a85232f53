#!/usr/bin/env python
"""Speed benchmark (issue 2): seconds per optimizer step of hfcoop MLE / CoT / ψ-MLE / GCN against TRL SFT /
on-policy distillation / GRPO.

    python benchmarks/speed.py                      # CPU, 1 thread, 3 x 30 measured steps per trainer: ~3-8 min
    python benchmarks/speed.py --threads 1,0        # + a second measurement with torch's default thread count
    python benchmarks/speed.py --device cuda --bf16 --steps 50
    python benchmarks/speed.py --profile            # + torch.profiler tables next to the results (slower)
    python benchmarks/speed.py --scaling            # + base / batch x2 / length x2 table (s/step, peak RSS): ~6 min
    python benchmarks/speed.py --n-layer 12 --n-embd 768 --n-head 12 --batch-size 4 --group-size 2 --floor \
        --trainers trl_sft,hfcoop_mle,hfcoop_cot,hfcoop_cot_shared,trl_distillation
                                                    # GPT-2-small size + each part of a step timed alone (--floor)

Everything is built locally (no Hub): a word-level tokenizer trained on COCO captions and two GPT-2 models of the
same size (4 layers x 128 hidden; the student/generator and, for TRL's distillation, a teacher), plus a
``GPT2ForSequenceClassification`` (num_labels=1) of that size as GRPO's reward model, saved with
``save_pretrained`` and loaded back by path. All four trainers see the same prompt/completion dataset (the first
3 words of a caption are the prompt, the rest the completion), the same batch size, learning rate, optimizer and
seed. Work is made equal where the libraries' defaults differ:

- sampling trainers (hfcoop CoT / ψ-MLE, TRL distillation) sample one completion of at most ``--length`` new
  tokens per prompt, with temperature 1, no top-k / top-p, EOS stops a row; hfcoop GCN (``num_candidates``) and
  TRL GRPO (``num_generations``) sample ``--group-size`` completions for each of ``batch / group-size`` prompts,
  so every sampling trainer samples ``--batch-size`` completions per step;
- the real completions are truncated to ``--length`` tokens (hfcoop ``max_completion_length``, TRL SFT
  ``max_length`` = longest prompt + ``--length``);
- dropout is 0 in the model config for every trainer; activation checkpointing off everywhere (TRL configs
  default it on); bf16 only with ``--bf16``; logging, evaluation and checkpointing are off.

Timing: a ``TrainerCallback`` takes the wall time from ``on_step_begin`` to ``on_step_end`` of every optimizer
step (the whole step: TRL's prompt tokenisation and generation happen inside it, as hfcoop's sampling does; the
dataloader's collation happens before ``on_step_begin`` for every trainer). Each trainer runs in its own process
(so its peak memory is its own), and the parent lets them run ``--chunk`` steps at a time in rotating
round-robin order, so that machine load from other users affects all trainers alike. The first ``--warmup``
steps of each trainer are excluded; the reported number is the median over the ``--steps`` measured steps, with
the process CPU time of the same steps alongside (less sensitive to other users' load than wall time).

Threads: by default each trainer runs with one torch thread (``--threads 1,0`` adds a measurement with torch's
default count). One thread is the compute-bound view (matrix products cannot use a second core, so per-token
Python overheads weigh least) and is far less disturbed by other processes on a shared machine: with 2 threads
on 2 busy cores, OpenMP threads wait for each other at every op and steps can take several times their
uncontended time. The load average before and after each measurement is printed with it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAINERS = [
    "hfcoop_mle", "trl_sft", "hfcoop_cot", "trl_distillation", "hfcoop_psi_mle", "hfcoop_gcn", "trl_grpo",
]  # fmt: skip
LABELS = {
    "hfcoop_mle": "hfcoop MLETrainer",
    "trl_sft": "TRL SFTTrainer",
    "hfcoop_cot": "hfcoop CoTTrainer (generator + mediator)",
    "trl_distillation": "TRL DistillationTrainer (β=1, same-size teacher)",
    "hfcoop_psi_mle": "hfcoop PsiMLETrainer (ratio model from the generator)",
    "hfcoop_gcn": "hfcoop GCNTrainer (sampler=model, G candidates)",
    "trl_grpo": "TRL GRPOTrainer (G generations, same-size reward model, β=0)",
}
# Trainers whose batch is counted in prompts, each sampled --group-size times (the others sample one per prompt;
# GRPO's batch is counted in completions): all three then see batch_size / G prompts and batch_size completions.
GROUPED = {"hfcoop_gcn"}
# Optional rows (not in the default list): hfcoop in shared-base mode (generator and companion = 2 LoRA adapters
# on one frozen base, see lora_config).
OPTIONAL = ["hfcoop_cot_shared", "hfcoop_psi_mle_shared", "hfcoop_gcn_shared"]
LABELS.update({
    "hfcoop_cot_shared": "hfcoop CoT, shared base (2 LoRA adapters)",
    "hfcoop_psi_mle_shared": "hfcoop ψ-MLE, shared base (2 adapters + head)",
    "hfcoop_gcn_shared": "hfcoop GCN, shared base (2 adapters + head)",
})
DATA_FILE = "/work/shared/data/image_coco/image_coco.txt"
PROMPT_WORDS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="Measured optimizer steps per trainer and repeat.")
    p.add_argument(
        "--repeats", type=int, default=3, help="Independent measurements (fresh processes) pooled into the table."
    )
    p.add_argument("--warmup", type=int, default=3, help="Warm-up steps per trainer, excluded from the median.")
    p.add_argument("--chunk", type=int, default=3, help="Steps a trainer runs before the next trainer's turn.")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=16, help="New tokens per sampled completion (and completion budget).")
    p.add_argument(
        "--group-size", type=int, default=4,
        help="G: completions per prompt for GCN (num_candidates) and GRPO (num_generations); both get --batch-size "
        "completions per step (batch-size / G prompts).",
    )  # fmt: skip
    p.add_argument(
        "--scaling", action="store_true",
        help="Also measure every trainer at the base setting, batch x2 and length x2 (median s/step, peak RSS).",
    )  # fmt: skip
    p.add_argument("--scaling-steps", type=int, default=6, help="Measured steps per trainer and setting (--scaling).")
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every trainer (GPU).")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=5000, help="Upper bound of the word vocabulary.")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        default="1",
        help="Comma-separated torch CPU thread counts, one full measurement each (0: torch's default), e.g. 1,0. "
        "1 thread is the compute-bound view that other users' load barely distorts; with 2+ threads on a busy "
        "machine OpenMP oversubscription can dominate every step (and the run can take several times longer).",
    )
    p.add_argument("--profile", action="store_true", help="Also write a torch.profiler table per trainer (slower).")
    p.add_argument(
        "--floor", action="store_true",
        help="After training, time each unavoidable part of an hfcoop step alone in the same process (sampling, "
        "the generator's and the companion's forward+backward on their rows, the optimizer step): the floor.",
    )  # fmt: skip
    p.add_argument("--floor-repeats", type=int, default=3, help="Timings per part (--floor); the median is kept.")
    p.add_argument("--data", default=DATA_FILE, help="One caption per line.")
    p.add_argument("--trainers", default=",".join(TRAINERS), help="Comma-separated subset of " + ", ".join(TRAINERS))
    p.add_argument("--workdir", default=None, help="Where the local models go (default: a temporary folder).")
    p.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "speed.md"),
        help="Markdown file for the results table ('' to skip).",
    )
    args = p.parse_args(argv)
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    args.thread_settings = [int(t) for t in str(args.threads).split(",") if t.strip()]
    if args.device != "cpu":
        args.thread_settings = args.thread_settings[:1]
    unknown = set(args.trainers) - set(TRAINERS) - set(OPTIONAL)
    if unknown:
        p.error(f"unknown trainers {sorted(unknown)}; choose from {TRAINERS + OPTIONAL}")
    if args.batch_size % args.group_size:
        p.error("--batch-size must be a multiple of --group-size")
    return args


# ----------------------------------------------------------------------------------------------------- assets
def load_rows(path: str, n: int) -> tuple[list[str], list[str]]:
    lines = [l.strip() for l in open(path, encoding="utf-8") if len(l.split()) > PROMPT_WORDS]
    rows = lines[:n]
    prompts = [" ".join(l.split()[:PROMPT_WORDS]) for l in rows]
    completions = [" " + " ".join(l.split()[PROMPT_WORDS:]) for l in rows]
    return prompts, completions


def build_assets(args: argparse.Namespace, workdir: str) -> dict:
    """Tokenizer + student (generator) + teacher + reward model, saved locally; returns paths and the longest prompt."""
    import torch
    from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

    from hfcoop.tiny import build_tiny_model

    corpus = [l.strip() for l in open(args.data, encoding="utf-8") if l.strip()]
    student = os.path.join(workdir, "student")
    teacher = os.path.join(workdir, "teacher")
    build_tiny_model(
        student, corpus, vocab_size=args.vocab_size, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
        n_positions=128, dropout=0.0, seed=args.seed,
    )  # fmt: skip
    # The teacher: same architecture and tokenizer, other initial weights.
    model = GPT2LMHeadModel.from_pretrained(student)
    torch.manual_seed(args.seed + 1)
    teacher_model = GPT2LMHeadModel(model.config)
    teacher_model.save_pretrained(teacher)
    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.save_pretrained(teacher)
    # GRPO's reward model: GPT-2 of the same size with a single-logit head (num_labels=1), loaded by path.
    reward = os.path.join(workdir, "reward")
    torch.manual_seed(args.seed + 2)
    fields = {k: v for k, v in model.config.to_dict().items() if k not in ("id2label", "label2id")}
    reward_config = model.config.__class__(**fields, num_labels=1)
    reward_config.pad_token_id = tokenizer.pad_token_id
    GPT2ForSequenceClassification(reward_config).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    steps = max(args.warmup + args.steps, args.warmup + args.scaling_steps * 2 if args.scaling else 0)
    n_rows = (steps + 2) * args.batch_size * 2
    prompts, completions = load_rows(args.data, n_rows)
    max_prompt = max(len(ids) for ids in tokenizer(prompts)["input_ids"])
    return {
        "student": student,
        "teacher": teacher,
        "reward": reward,
        "prompts": prompts,
        "completions": completions,
        "max_prompt_tokens": max_prompt,
        "vocab": len(tokenizer),
        "params": sum(p.numel() for p in model.parameters()),
    }


# ----------------------------------------------------------------------------------------------------- workers
def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if platform.system() == "Darwin" else 2**10)


def common_config(args: argparse.Namespace, out_dir: str) -> dict:
    """The TrainingArguments fields every trainer shares (equal work, nothing logged or saved)."""
    on_cpu = args.device == "cpu"
    return dict(
        output_dir=out_dir,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        seed=args.seed,
        bf16=args.bf16,
        use_cpu=on_cpu,
        activation_checkpointing=False,  # TRL configs default it on (as `gradient_checkpointing`): off for all
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def make_trainer(
    name: str, args: argparse.Namespace, assets: dict, callback, out_dir: str, peft_config=None, hfcoop_extra=None
):
    """One trainer of ``TRAINERS``. ``peft_config`` (hfcoop and TRL SFT) trains LoRA adapters; ``hfcoop_extra``:
    more hfcoop config fields (e.g. ``shared_base=True``)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    dataset = Dataset.from_dict({"prompt": assets["prompts"], "completion": assets["completions"]})
    common = common_config(args, out_dir)
    if name in OPTIONAL:  # shared-base mode of the same hfcoop trainer
        peft_config = peft_config or lora_config()
        hfcoop_extra = {**(hfcoop_extra or {}), "shared_base": True}
        name = name[: -len("_shared")]
    if name in GROUPED:
        common["per_device_train_batch_size"] = args.batch_size // args.group_size
    student, teacher = assets["student"], assets["teacher"]
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0)  # plain sampling for every sampling trainer
    if name.startswith("hfcoop"):
        import hfcoop

        # name -> (trainer, config, extra config fields); the companion model (mediator, ratio model,
        # discriminator) is each trainer's default: built from the generator.
        trainer_cls, config_cls, extra = {
            "hfcoop_mle": (hfcoop.MLETrainer, hfcoop.MLEConfig, {}),
            "hfcoop_cot": (hfcoop.CoTTrainer, hfcoop.CoTConfig, sampling),
            "hfcoop_psi_mle": (hfcoop.PsiMLETrainer, hfcoop.PsiMLEConfig, sampling),
            "hfcoop_gcn": (
                hfcoop.GCNTrainer, hfcoop.GCNConfig,
                {**sampling, "sampler": "model", "num_candidates": args.group_size},
            ),
        }[name]  # fmt: skip
        extra = {**extra, **(hfcoop_extra or {})}
        cfg = config_cls(**common, max_prompt_length=32, max_completion_length=args.length, **extra)
        return trainer_cls(student, args=cfg, train_dataset=dataset, callbacks=[callback], peft_config=peft_config)

    tokenizer = AutoTokenizer.from_pretrained(student, padding_side="left")
    if name == "trl_sft":
        from trl import SFTConfig, SFTTrainer

        cfg = SFTConfig(**common, max_length=assets["max_prompt_tokens"] + args.length)
        return SFTTrainer(student, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback],
                          peft_config=peft_config)  # fmt: skip
    del torch
    if name == "trl_grpo":
        from trl import GRPOConfig, GRPOTrainer

        # beta is left at its trl 1.x default 0.0 (no reference model); per_device_train_batch_size counts
        # completions: batch_size / G prompts x G generations, the same completions per step as GCN.
        cfg = GRPOConfig(
            **common, max_completion_length=args.length, num_generations=args.group_size, **sampling,
            disable_dropout=False, log_completions=False,
        )  # fmt: skip
        return GRPOTrainer(
            student, reward_funcs=assets["reward"], args=cfg, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[callback],
        )  # fmt: skip
    from trl import DistillationConfig, DistillationTrainer

    cfg = DistillationConfig(
        **common, max_completion_length=args.length, beta=1.0, **sampling, disable_dropout=False, log_completions=False,
    )  # fmt: skip
    return DistillationTrainer(
        student, teacher_model=teacher, args=cfg, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[callback],
    )  # fmt: skip


def lora_config(r: int = 16):
    """LoRA on every attention and MLP matrix of GPT-2 (r, alpha = 2r, no dropout): the LoRA rows' adapters."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, fan_in_fan_out=True,
                      target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM")  # fmt: skip


FLOOR_PARTS = ["sampling", "companion signal", "generator f+b", "companion f+b", "clip + optimizer"]


def time_parts(trainer, reps: int, cuda: bool) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds of each unavoidable part of one hfcoop step, each timed alone on the rows the step gives it.

    Same batch, shapes and models as a training step: sampling (``trainer.sample``, the step's completions per
    prompt); the generator's forward + backward on its training rows; the companion's forward + backward on its
    rows (CoT: real + generated; ψ-MLE: real + generated, scored; GCN: real + the G samples per prompt, scored); the
    optimizer step (AdamW over both models). The losses here are plain sums: what a step adds beyond these (its
    losses, masks, padding, bookkeeping) is the overhead that step / floor measures.
    """
    import torch
    from hfcoop.losses import token_logprobs
    from hfcoop.batching import pad_columns

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, zero_grad: bool = True) -> tuple[float, float]:
        times, cpu = [], []
        for _ in range(reps):
            if zero_grad:
                trainer.pair.zero_grad(set_to_none=True)  # as each training step starts
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return statistics.median(times), statistics.median(cpu)

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    r_ids, r_mask = batch["completion_input_ids"], batch["completion_mask"]
    algorithm = trainer.algorithm
    k = trainer.args.num_candidates if algorithm == "gcn" else 1
    parts: dict[str, tuple[float, float]] = {}
    if algorithm != "mle":
        parts["sampling"] = timed(lambda: trainer.sample(p_ids, p_mask, k))
        g_ids, g_mask = trainer.sample(p_ids, p_mask, k)
        width = max(g_ids.shape[1], r_ids.shape[1])
        pad = trainer.processing_class.pad_token_id
        g_ids, g_mask = pad_columns(g_ids, g_mask, width, pad)
        r_ids, r_mask = pad_columns(r_ids, r_mask, width, pad)
    rows = torch.arange(p_ids.shape[0], device=p_ids.device)
    both = (torch.cat([rows, rows]), torch.cat([r_ids, g_ids]), torch.cat([r_mask, g_mask])) if k == 1 and (
        algorithm != "mle") else None  # fmt: skip
    generator_rows = {
        "mle": (rows, r_ids, r_mask),
        "cot": (rows, g_ids, g_mask) if algorithm == "cot" else None,
        "psi_mle": both,
        "gcn": (rows.repeat_interleave(k), g_ids, g_mask) if algorithm == "gcn" else None,
    }[algorithm]
    companion_rows = {"cot": both, "psi_mle": both}.get(algorithm)
    if algorithm == "gcn":
        companion_rows = (torch.cat([rows, rows.repeat_interleave(k)]), torch.cat([r_ids, g_ids]),
                          torch.cat([r_mask, g_mask]))  # fmt: skip

    def lm_part(selection):
        idx, ids, mask = selection
        part = trainer.lm_inputs(p_ids[idx], p_mask[idx], ids, mask)
        part["completion_mask"] = mask
        return part, ids[mask.bool()]

    def generator_step() -> None:
        part, targets = lm_part(generator_rows)
        with trainer.autocast_smart_context_manager():
            logits, _ = trainer.model(generator=part)
            loss = token_logprobs(logits, targets).sum()
        loss.backward()

    def companion_step() -> None:
        idx, ids, mask = companion_rows
        with trainer.autocast_smart_context_manager():
            if algorithm == "cot":
                part, targets = lm_part(companion_rows)
                _, logits = trainer.model(companion=part)
                loss = token_logprobs(logits, targets).sum()
            else:
                _, logits = trainer.model(companion=trainer.companion_inputs(p_ids[idx], p_mask[idx], ids, mask))
                loss = logits.float().sum()
        loss.backward()

    parts["generator f+b"] = timed(generator_step)
    if companion_rows is not None:
        parts["companion f+b"] = timed(companion_step)

        def companion_signal() -> None:  # the generator step's no-grad, eval-mode read of the updated companion
            idx, ids, mask = generator_rows
            if algorithm == "cot":
                trainer.companion_signal(trainer.model, lm_part(generator_rows)[0])
            else:
                trainer.companion_signal(trainer.model, trainer.companion_inputs(p_ids[idx], p_mask[idx], ids, mask))

        parts["companion signal"] = timed(companion_signal)

    generator_step()  # gradients for every parameter, then time the update alone
    if companion_rows is not None:
        companion_step()
    def update() -> None:  # what Trainer does once the gradients exist: clip (max_grad_norm, as for TRL), then step
        if trainer.args.max_grad_norm:
            trainer._clip_grad_norm(trainer.model)
        trainer.optimizer.step()

    if companion_rows is None:
        parts["clip + optimizer"] = timed(update, zero_grad=False)
    else:  # the papers' order: a cycle is one companion step and one generator step, each updating its own model
        step = trainer.state.global_step
        times = []
        for global_step in (0, 1):  # a companion step, then a generator step (trainer.is_generator_step)
            trainer.state.global_step = global_step + trainer.args.companion_warmup_steps
            times.append(timed(update, zero_grad=False))
        trainer.state.global_step = step
        parts["clip + optimizer"] = tuple(a + b for a, b in zip(*times))
        parts["sampling"] = tuple(2 * v for v in parts["sampling"])  # fresh samples in both steps of the cycle
    trainer.pair.zero_grad(set_to_none=True)
    return parts


def worker(name: str, args: argparse.Namespace, assets: dict, conn) -> None:
    """Builds one trainer, then trains it, pausing at the step counts the parent gives until told to go on."""
    import torch
    from transformers import TrainerCallback

    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step; yields the machine to the other trainers at the pause points."""

        def __init__(self, pauses: list[int]) -> None:
            self.pauses = set(pauses)
            self.times: list[float] = []
            self.cpu_times: list[float] = []  # process CPU time per step: robust to other users' load
            self.sampled: list[float] = []  # mean sampled completion length per step (sampling trainers)
            self.trainer = None
            self.t0 = 0.0

        def on_train_begin(self, *a, **k):
            conn.send(("waiting", None))
            conn.recv()

        def on_step_begin(self, *a, **k):
            if args.profile and len(self.times) == args.warmup:
                from torch.profiler import ProfilerActivity, profile

                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                self.profiler = profile(activities=activities)
                self.profiler.__enter__()
            sync()
            self.t0 = time.perf_counter()
            self.c0 = time.process_time()

        def on_step_end(self, *a, **k):
            sync()
            self.times.append(time.perf_counter() - self.t0)
            self.cpu_times.append(time.process_time() - self.c0)
            metrics = self.trainer._metrics["train"] if self.trainer is not None else {}
            for key, values in metrics.items():
                if values and key in ("samples/completion_length", "completions/mean_length"):
                    self.sampled.append(float(values[-1]))
            if len(self.times) in self.pauses:
                conn.send(("paused", len(self.times)))
                conn.recv()

    try:
        if args.threads:
            torch.set_num_threads(args.threads)  # set per measurement by main()
        torch.manual_seed(args.seed)
        rss_before = _rss_mib()
        pauses = list(range(args.warmup, args.warmup + args.steps, args.chunk))
        timer = StepTimer([p for p in pauses if p > 0])
        with tempfile.TemporaryDirectory() as out_dir:
            trainer = make_trainer(name, args, assets, timer, out_dir)
            timer.trainer = trainer
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
            parts = time_parts(trainer, args.floor_repeats, cuda) if args.floor and name.startswith("hfcoop") else None
        if args.profile and getattr(timer, "profiler", None) is not None:
            timer.profiler.__exit__(None, None, None)
            table = timer.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            folder = os.path.dirname(os.path.abspath(args.output)) if args.output else "."
            path = os.path.join(folder, f"profile_{name}_threads{torch.get_num_threads()}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"{name}: torch.profiler over {args.steps} steps after warm-up\n{table}\n")
        sampled = statistics.mean(timer.sampled) if timer.sampled else None
        result = {
            "times": timer.times,
            "cpu_times": timer.cpu_times,
            "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": rss_before,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "sampled_tokens": sampled,
            "threads": torch.get_num_threads(),
            "parts": parts,
        }
        conn.send(("done", result))
    except BaseException as exc:  # report, don't hang the parent
        import traceback

        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


# ----------------------------------------------------------------------------------------------------- driver
def run(args: argparse.Namespace, assets: dict) -> dict:
    """One measurement: every trainer in its own process, trained in interleaved turns of ``--chunk`` steps."""
    ctx = mp.get_context("spawn")
    t_start = time.time()
    procs, conns = {}, {}
    for name in args.trainers:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(name, args, assets, child), daemon=True)
        proc.start()
        procs[name], conns[name] = proc, parent

    def receive(name: str):
        kind, payload = conns[name].recv()
        if kind == "error":
            raise RuntimeError(f"{name} failed:\n{payload}")
        return kind, payload

    # Construction (tokenisation, model loading) runs in parallel; training turns are strictly one at a time.
    for name in args.trainers:
        kind, _ = receive(name)
        assert kind == "waiting", kind
    print(f"threads {args.threads or 'default'}: trainers built in {time.time() - t_start:.0f}s", flush=True)
    results: dict[str, dict] = {}
    active = list(args.trainers)
    turn = 0
    while active:
        order = active[turn % len(active) :] + active[: turn % len(active)]
        for name in order:
            conns[name].send("go")
            kind, payload = receive(name)
            if kind == "done":
                results[name] = payload
                active.remove(name)
        turn += 1
    for proc in procs.values():
        proc.join(timeout=60)
    return results


def pool(args: argparse.Namespace, repeats: list[dict]) -> dict:
    """The repeats' measured steps (warm-up dropped from each), concatenated per trainer, and the table's numbers."""
    rows = {}
    for name in repeats[0]:
        times = [t for rep in repeats for t in rep[name]["times"][args.warmup :]]
        cpu_times = [t for rep in repeats for t in rep[name]["cpu_times"][args.warmup :]]
        sampled = [rep[name]["sampled_tokens"] for rep in repeats if rep[name]["sampled_tokens"] is not None]
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        rows[name] = {
            "times": times,
            "median": statistics.median(times),
            "q1": q[0],
            "q3": q[2],
            "cpu": statistics.median(cpu_times),
            "mean": statistics.mean(times),
            "mean_cpu": statistics.mean(cpu_times),
            "sampled_tokens": statistics.mean(sampled) if sampled else None,
            "peak_rss_mib": max(rep[name]["peak_rss_mib"] for rep in repeats),
            "rss_before_mib": statistics.median(rep[name]["rss_before_mib"] for rep in repeats),
            "peak_gpu_mib": max((rep[name]["peak_gpu_mib"] or 0) for rep in repeats),
            "threads": repeats[0][name]["threads"],
            "parts": {  # (wall, CPU) medians over the repeats
                part: tuple(statistics.median(rep[name]["parts"][part][i] for rep in repeats) for i in (0, 1))
                for part in (repeats[0][name]["parts"] or {})
            },
        }
    return rows


def step_median(args: argparse.Namespace, repeat: dict, name: str, start: int = 0, stop: int | None = None) -> float:
    measured = repeat[name]["times"][args.warmup :]
    return statistics.median(measured[start:stop])


def round_terms(args: argparse.Namespace, repeat: dict, a: str, b: str) -> list[float]:
    """Per round of one repeat, a's median step / b's median step: the two ran back to back in that round."""
    n = min(len(repeat[a]["times"]), len(repeat[b]["times"])) - args.warmup
    return [
        step_median(args, repeat, a, i, i + args.chunk) / step_median(args, repeat, b, i, i + args.chunk)
        for i in range(0, n, args.chunk)
    ]


def render(
    args: argparse.Namespace, assets: dict, measurements: list[tuple[int, dict]], wall_s: float, scaling=None
) -> str:
    gpu = args.device != "cpu"
    lines = [
        "# Speed: seconds per optimizer step",
        "",
        f"`python benchmarks/speed.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"GPT-2 {args.n_layer} layers × {args.n_embd} hidden ({args.n_head} heads), word vocabulary {assets['vocab']} "
        f"({assets['params'] / 1e6:.2f}M parameters per model, built locally); batch {args.batch_size}; "
        f"{args.length} new tokens per sampled completion; COCO captions as prompt (first {PROMPT_WORDS} words) + "
        f"completion; device {args.device}{' bf16' if args.bf16 else ' fp32'}; medians over all measured optimizer "
        f"steps of {args.repeats} repeats ({args.warmup} warm-up steps dropped from each), the trainers interleaved "
        f"{args.chunk} steps at a time (each in its own process, new processes for each repeat). "
        "Wall = `on_step_begin` → `on_step_end`; CPU = process CPU time over the same span (less sensitive to "
        "other users' load); *paired by round* = median over rounds of the two trainers' per-round median ratio "
        "(they ran back to back, so load drifts cancel).",
    ]
    for threads, summary in measurements:
        rows, repeats = summary["rows"], summary["repeats"]
        base = rows.get("trl_sft")
        used = next(iter(rows.values()))["threads"] if rows else "?"
        label = "torch default" if not threads else "pinned"
        lines += [
            "",
            f"## {used} torch thread{'s' if used != 1 else ''} per trainer ({label})",
            "",
            f"{len(repeats)} repeats × {args.steps} measured steps per trainer. 1-minute load average of the machine "
            f"({os.cpu_count()} CPUs) before each repeat and at the end: "
            + ", ".join(f"{x:.1f}" for x in summary["load"])
            + ".",
            "",
            "| trainer | median s/step (wall) | IQR (s) | × TRL SFT | median CPU s/step | × TRL SFT (CPU) | "
            "sampled tokens/row | sampled tokens/s | peak RSS (MiB) | Δ RSS over imports (MiB) |" + (" peak GPU (MiB) |" if gpu else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
        ]
        for name in TRAINERS + OPTIONAL:
            if name not in rows:
                continue
            r = rows[name]
            rel = f"{r['median'] / base['median']:.2f}" if base else "–"
            rel_cpu = f"{r['cpu'] / base['cpu']:.2f}" if base else "–"
            sampled = f"{r['sampled_tokens']:.1f}" if r["sampled_tokens"] is not None else "–"
            # every sampling trainer samples --batch-size completions per step (GCN / GRPO: batch / G prompts × G)
            rate = f"{args.batch_size * r['sampled_tokens'] / r['median']:.0f}" if r["sampled_tokens"] is not None else "–"
            line = (
                f"| {LABELS[name]} | {r['median']:.4f} | {r['q1']:.4f}–{r['q3']:.4f} | {rel} | {r['cpu']:.4f} | "
                f"{rel_cpu} | {sampled} | {rate} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['rss_before_mib']:.0f} |"
            )
            if gpu:
                line += f" {r['peak_gpu_mib']:.0f} |"
            lines.append(line)
        lines += [
            "",
            "| ratio | wall (ratio of medians) | CPU (ratio of medians) | wall, paired by round | wall, each repeat "
            "| target | met (wall) |",
            "|---|---:|---:|---:|---|---:|---|",
        ]
        for text, a, b, target in TARGETS:
            if a in rows and b in rows:
                wall = rows[a]["median"] / rows[b]["median"]
                cpu = rows[a]["cpu"] / rows[b]["cpu"]
                paired = statistics.median(t for rep in repeats for t in round_terms(args, rep, a, b))
                each = ", ".join(f"{step_median(args, rep, a) / step_median(args, rep, b):.2f}" for rep in repeats)
                met = "yes" if wall <= target else "no"
                lines.append(f"| {text} | {wall:.2f} | {cpu:.2f} | {paired:.2f} | {each} | ≤ {target} | {met} |")
        lines += render_floor(args, rows)
    lines += [
        "",
        "Equal work: one sampled completion per prompt for CoT / ψ-MLE / distillation, G for GCN / GRPO "
        "(temperature 1, no top-k/top-p, EOS stops a row; the *sampled tokens/row* column checks it), real "
        "completions cut to the same budget, dropout 0, activation checkpointing off (TRL's configs turn it on by "
        "default), same optimizer (AdamW), "
        "learning rate, batch and seed; logging, evaluation and saving off. Peak RSS is each trainer process's "
        "maximum resident set (model, optimizer, data, libraries); Δ subtracts the RSS after imports.",
        "",
        f"GCN / ψ-MLE / GRPO matching: G = {args.group_size}. Each step of hfcoop GCN (`sampler='model'`, "
        f"`num_candidates={args.group_size}`, batch {args.batch_size // args.group_size} prompts) and of TRL GRPO "
        f"(`num_generations={args.group_size}`, `per_device_train_batch_size={args.batch_size}` completions = "
        f"{args.batch_size // args.group_size} prompts) samples {args.batch_size} completions; hfcoop ψ-MLE "
        f"(PsiMLEConfig defaults, ratio model built from the generator) samples one completion for each of its "
        f"{args.batch_size} prompts, so also {args.batch_size} per step (and trains on as many real completions). "
        "GCN's discriminator and ψ-MLE's ratio model are trained every step (forward + backward); GRPO's reward "
        "model (GPT2ForSequenceClassification, num_labels=1, same size, loaded by path) only scores. GRPO keeps "
        "trl 1.x's default `beta=0.0` (no reference model) and its default loss (`dapo`), one generation per "
        "optimizer step (`steps_per_generation` = gradient accumulation = 1, `num_iterations=1`).",
        "",
        f"Total wall time {wall_s:.0f} s (building the models and trainers included).",
    ]
    if args.profile:
        lines += ["", "Measured under torch.profiler (`--profile`): times include the profiler's overhead."]
    if scaling:
        lines += render_scaling(args, scaling)
    return "\n".join(lines) + "\n"


def render_floor(args: argparse.Namespace, rows: dict) -> list[str]:
    """Step time against the sum of its parts, each timed alone (--floor)."""
    timed = [n for n in TRAINERS + OPTIONAL if n in rows and rows[n]["parts"]]
    if not timed:
        return []
    lines = [
        "",
        f"### The floor (`--floor`): each part of a step timed alone, median of {args.floor_repeats} after training, "
        "in the same process and turn",
        "",
        "Each cell: wall / process CPU seconds (CPU time is what other users' load distorts least).",
        "",
        "| trainer | " + " | ".join(f"{p} (s)" for p in FLOOR_PARTS) + " | sum of parts (s) | median step or 2 × mean (cycle) (s) | "
        "step / sum, wall | step / sum, CPU | goal | met (CPU) |",
        "|---|" + "---:|" * (len(FLOOR_PARTS) + 4) + "---:|---|",
    ]
    for name in timed:
        parts, row = rows[name]["parts"], rows[name]
        wall, cpu = sum(v[0] for v in parts.values()), sum(v[1] for v in parts.values())
        cells = [f"{parts[p][0]:.3f} / {parts[p][1]:.3f}" if p in parts else "–" for p in FLOOR_PARTS]
        # Companion trainers alternate a companion step and a generator step (the papers' order): their parts are
        # a cycle's, compared with two steps (twice the mean step; the median of a two-valued series is neither).
        cycle = 2 if "companion f+b" in parts else 1
        step_wall, step_cpu = (row["mean"], row["mean_cpu"]) if cycle == 2 else (row["median"], row["cpu"])
        step_wall, step_cpu = cycle * step_wall, cycle * step_cpu
        ratio_cpu = step_cpu / cpu
        lines.append(
            f"| {LABELS[name]} | " + " | ".join(cells) + f" | {wall:.3f} / {cpu:.3f} | {step_wall:.3f} / "
            f"{step_cpu:.3f}{' (cycle)' if cycle == 2 else ''} | {step_wall / wall:.2f} | {ratio_cpu:.2f} | ≤ 1.1 | "
            f"{'yes' if ratio_cpu <= 1.1 else 'no'} |"
        )
    lines += [
        "",
        "Companion trainers (CoT, ψ-MLE, GCN) train one model per step, the companion then the generator: their row "
        "is a cycle of two steps (2 × the mean step) against a cycle's parts — sampling twice (both steps draw fresh "
        "samples), the companion's f+b, its signal (a no-grad eval-mode forward on the generator's rows), the "
        "generator's f+b and both steps' clip + optimizer (each over its own model). "
        "Parts: sampling = `trainer.sample` (the step's completions per prompt, KV-cached); generator f+b / companion "
        "f+b = that model's forward and backward on the rows the step gives it (packed completion logits for LMs, "
        "the one logit for scorers), loss a plain sum; clip + optimizer = the gradient-norm clip Trainer applies "
        "(`max_grad_norm`, default 1.0 for every trainer here, TRL's too; per model for hfcoop) and AdamW's update of "
        "both models. What a step costs "
        "beyond their sum (its losses, padding, per-step bookkeeping, Trainer's loop) is its overhead.",
    ]
    return lines


def scaling_settings(args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """The base setting, batch x2 and length x2: one short interleaved measurement each (--scaling)."""
    short = dict(steps=args.scaling_steps, repeats=1, threads=args.thread_settings[0], profile=False)
    return [
        (label, argparse.Namespace(**{**vars(args), **short, **change}))
        for label, change in [
            ("base", {}),
            ("batch ×2", {"batch_size": 2 * args.batch_size}),
            ("length ×2", {"length": 2 * args.length}),
        ]
    ]


def measure_scaling(args: argparse.Namespace, assets: dict) -> list[tuple[str, argparse.Namespace, dict]]:
    out = []
    for label, run_args in scaling_settings(args):
        print(f"scaling: {label}", flush=True)
        out.append((label, run_args, pool(run_args, [run(run_args, assets)])))
    return out


def render_scaling(args: argparse.Namespace, scaling: list[tuple[str, argparse.Namespace, dict]]) -> list[str]:
    head = " | ".join(f"{label}: s/step | {label}: peak RSS (MiB)" for label, _, _ in scaling)
    settings = "; ".join(f"{label} = batch {a.batch_size}, {a.length} new tokens" for label, a, _ in scaling)
    lines = [
        "",
        "## Scaling (`--scaling`)",
        "",
        f"{settings}. One interleaved measurement per setting: {args.scaling_steps} measured steps per trainer after "
        f"{args.warmup} warm-up steps, {scaling[0][1].threads or 'default'} torch thread(s); median wall s/step, "
        "(× the trainer's own base time), and the process's peak RSS. Batch counts prompts for one-sample "
        "trainers and completions for GCN / GRPO (G fixed), as above. Length ×2 doubles the sampled completions; the "
        "real completions (teacher-forced by MLE / SFT) are COCO captions of ~9 tokens, mostly under either budget, "
        "so it barely changes MLE's and SFT's work.",
        "",
        f"| trainer | {head} |",
        "|---|" + "---:|" * (2 * len(scaling)),
    ]
    for name in TRAINERS + OPTIONAL:
        if name not in scaling[0][2]:
            continue
        base = scaling[0][2][name]["median"]
        cells = []
        for label, _, rows in scaling:
            r = rows[name]
            rel = "" if label == "base" else f" ({r['median'] / base:.2f}×)"
            cells.append(f"{r['median']:.4f}{rel} | {r['peak_rss_mib']:.0f}")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return lines


TARGETS = [
    ("hfcoop CoT / TRL distillation", "hfcoop_cot", "trl_distillation", 0.9),
    ("hfcoop MLE / TRL SFT", "hfcoop_mle", "trl_sft", 1.05),
    ("hfcoop GCN / TRL GRPO", "hfcoop_gcn", "trl_grpo", 1.0),
    ("hfcoop ψ-MLE / TRL GRPO", "hfcoop_psi_mle", "trl_grpo", 1.3),
    ("hfcoop CoT shared base / TRL distillation", "hfcoop_cot_shared", "trl_distillation", 1.0),
]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.time()
    workdir = args.workdir or tempfile.mkdtemp(prefix="hfcoop_speed_")
    assets = build_assets(args, workdir)
    print(f"assets in {workdir}: vocab {assets['vocab']}, {assets['params'] / 1e6:.2f}M parameters", flush=True)
    measurements = []
    for threads in args.thread_settings:
        run_args = argparse.Namespace(**{**vars(args), "threads": threads})
        loads, repeats = [], []
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            repeats.append(run(run_args, assets))
        loads.append(os.getloadavg()[0])
        measurements.append((threads, {"rows": pool(args, repeats), "repeats": repeats, "load": loads}))
    scaling = measure_scaling(args, assets) if args.scaling else None
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    publish(render(args, assets, measurements, time.time() - t_start, scaling), args.output)


def publish(text: str, output: str | None) -> None:
    """Prints a report and writes it to ``output`` (its folder created) when one is given."""
    print(text)
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
