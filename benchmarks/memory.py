#!/usr/bin/env python
"""Memory benchmark (issue 13): peak memory of every hfcoop trainer at GPT-2-small size, beside TRL's.

    python benchmarks/memory.py                       # CPU: peak RSS, 124M-parameter models, 3 steps each: ~10 min
    python benchmarks/memory.py --device cuda --bf16  # GPU: torch allocator peak (max_memory_allocated)
    python benchmarks/memory.py --tiny                # the same code on a 2 x 64 model in about a minute (dry run)

Models are built locally from a config (no Hub): GPT-2 small's shape (12 layers × 768 hidden, 12 heads, 1024
positions, 50257-row embeddings: 124.4M parameters) with a word-level tokenizer trained on COCO captions (its
few thousand words use the first rows of the embedding; the model samples over all 50257). TRL's distillation
teacher and GRPO's reward model (``GPT2ForSequenceClassification``, one logit) have the same size. Trainers are
built by ``benchmarks/speed.py``'s ``make_trainer`` (same data, batch, completion budget, optimizer, sampling
settings, dropout 0, activation checkpointing off); see that file for the equal-work rules.

Each trainer runs ``--steps`` optimizer steps in a **fresh process**, one at a time, so a process's peak is its
own. CPU: peak resident set (``ru_maxrss``) of that process, and the same minus its RSS after imports and data
(before any model is loaded) — the part the trainer's models, optimizer and activations add. GPU: the torch
allocator's peak over construction and training. Ratios are against TRL SFT (full fine-tuning) and, for the
LoRA rows, against TRL SFT with the same LoRA config.

Shared-base rows (``*_shared``): hfcoop's ``shared_base=True`` — the generator and its companion are two LoRA
adapters (plus a one-logit head for ψ-MLE's ratio model / GCN's discriminator) on one frozen base model.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402  (benchmarks/speed.py: assets and trainers with equal work)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FULL = ["trl_sft", "hfcoop_mle", "hfcoop_genere", "hfcoop_cot", "trl_distillation", "hfcoop_psi_mle", "hfcoop_gcn",
        "trl_grpo"]  # fmt: skip
LORA = ["trl_sft_lora", "hfcoop_cot_shared", "hfcoop_psi_mle_shared", "hfcoop_gcn_shared"]
TRAINERS = FULL + LORA
LABELS = {
    **speed.LABELS,
    "hfcoop_genere": "hfcoop GenereTrainer (λ=1, one black-box generator)",
    "trl_sft_lora": "TRL SFTTrainer + LoRA",
    "hfcoop_cot_shared": "hfcoop CoT, shared base (2 LoRA adapters)",
    "hfcoop_psi_mle_shared": "hfcoop ψ-MLE, shared base (2 adapters + head)",
    "hfcoop_gcn_shared": "hfcoop GCN, shared base (2 adapters + head)",
}
TARGETS = [  # (label, trainer, baseline, goal)
    ("CoT pair / TRL SFT", "hfcoop_cot", "trl_sft", 2.2),
    ("CoT shared base / TRL SFT + LoRA", "hfcoop_cot_shared", "trl_sft_lora", 1.3),
    ("ψ-MLE shared base / TRL SFT + LoRA", "hfcoop_psi_mle_shared", "trl_sft_lora", 1.3),
    ("GCN shared base / TRL SFT + LoRA", "hfcoop_gcn_shared", "trl_sft_lora", 1.3),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="Optimizer steps per trainer (the optimizer state exists "
                   "from the first; later steps show any growth).")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--length", type=int, default=16, help="New tokens per sampled completion (and completion budget).")
    p.add_argument("--group-size", type=int, default=2, help="G for GCN (num_candidates) and GRPO (num_generations).")
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--model-vocab", type=int, default=50257, help="Embedding rows (GPT-2's 50257; the tokenizer "
                   "uses the first few thousand).")  # fmt: skip
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per trainer process.")
    p.add_argument("--repeats", type=int, default=1, help="Rounds over the trainers (a fresh process each time); "
                   "rows report the median, the range and each round's ratio to the baseline.")  # fmt: skip
    p.add_argument("--trainers", default=",".join(TRAINERS), help="Comma-separated subset of " + ", ".join(TRAINERS))
    p.add_argument("--tiny", action="store_true", help="2 layers × 64 hidden, 1 step: checks the script runs.")
    p.add_argument("--data", default=speed.DATA_FILE)
    p.add_argument(
        "--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "memory.md"),
        help="Markdown file for the results ('' to skip).",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.tiny:
        args.n_layer, args.n_embd, args.n_head, args.model_vocab, args.steps = 2, 64, 2, 0, 1
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = set(args.trainers) - set(TRAINERS)
    if unknown:
        p.error(f"unknown trainers {sorted(unknown)}; choose from {TRAINERS}")
    return args


def speed_args(args: argparse.Namespace) -> argparse.Namespace:
    """``speed.py``'s settings for the same model and batch (its ``make_trainer`` reads them)."""
    sa = speed.parse_args([
        "--steps", str(args.steps), "--warmup", "0", "--batch-size", str(args.batch_size), "--length", str(args.length),
        "--group-size", str(args.group_size), "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd),
        "--n-head", str(args.n_head), "--device", args.device, "--data", args.data, "--output", "",
    ] + (["--bf16"] if args.bf16 else []))  # fmt: skip
    sa.threads = args.threads
    return sa


def build_assets(args: argparse.Namespace, workdir: str) -> dict:
    """speed.py's assets, with every model's embeddings grown to ``--model-vocab`` rows (GPT-2 small's 124M)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    assets = speed.build_assets(speed_args(args), workdir)
    if args.model_vocab:
        for key, cls in (("student", AutoModelForCausalLM), ("teacher", AutoModelForCausalLM),
                         ("reward", AutoModelForSequenceClassification)):  # fmt: skip
            model = cls.from_pretrained(assets[key])
            model.resize_token_embeddings(args.model_vocab, mean_resizing=False)
            model.save_pretrained(assets[key])
        assets["params"] = sum(p.numel() for p in AutoModel.from_pretrained(assets["student"]).parameters())
    return assets


def lora_config(args: argparse.Namespace):
    return speed.lora_config(args.lora_r)


def make(name: str, args: argparse.Namespace, assets: dict, out_dir: str):
    from transformers import TrainerCallback

    sa = speed_args(args)
    callback = TrainerCallback()
    if name == "hfcoop_genere":
        import random

        from datasets import Dataset

        import hfcoop

        rows = list(zip(assets["prompts"], assets["completions"]))

        def caption(rng: random.Random) -> dict:  # a black-box generator: a random training row
            prompt, completion = rows[rng.randrange(len(rows))]
            return {"prompt": prompt, "completion": completion}

        cfg = hfcoop.GenereConfig(**speed.common_config(sa, out_dir), max_prompt_length=32,
                                  max_completion_length=args.length, generative_weight=1.0)  # fmt: skip
        data = Dataset.from_dict({"prompt": assets["prompts"], "completion": assets["completions"]})
        return hfcoop.GenereTrainer(assets["student"], [caption], args=cfg, train_dataset=data, callbacks=[callback])
    if name == "trl_sft_lora":
        return speed.make_trainer("trl_sft", sa, assets, callback, out_dir, peft_config=lora_config(args))
    if name.endswith("_shared"):
        return speed.make_trainer(name[: -len("_shared")], sa, assets, callback, out_dir,
                                  peft_config=lora_config(args), hfcoop_extra={"shared_base": True})  # fmt: skip
    return speed.make_trainer(name, sa, assets, callback, out_dir)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if platform.system() == "Darwin" else 2**10)


def worker(name: str, args: argparse.Namespace, assets: dict, conn) -> None:
    try:
        import torch

        torch.set_num_threads(args.threads)
        cuda = args.device.startswith("cuda")
        import datasets, peft, transformers, trl  # noqa: F401,E401  (imports count in the baseline, not the trainer)

        import hfcoop  # noqa: F401

        rss_before = _rss_mib()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out_dir:
            trainer = make(name, args, assets, out_dir)
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in trainer.model.parameters())
            trainer.train()
        conn.send(("done", {
            "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": rss_before,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "trainable": trainable, "params": total, "seconds": time.perf_counter() - t0,
        }))  # fmt: skip
    except BaseException as exc:
        import traceback

        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def measure(name: str, args: argparse.Namespace, assets: dict) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=worker, args=(name, args, assets, child), daemon=True)
    proc.start()
    kind, payload = parent.recv()
    proc.join(timeout=60)
    if kind == "error":
        raise RuntimeError(f"{name} failed:\n{payload}")
    return payload


def median_row(runs: list[dict]) -> dict:
    """One trainer's rounds as one row: the median of each number, the rounds kept for ranges and paired ratios."""
    row = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[0][k]
           for k in runs[0]}  # fmt: skip
    row["delta_mib"] = statistics.median(r["peak_rss_mib"] - r["rss_before_mib"] for r in runs)
    row["runs"] = runs
    return row


def render(args: argparse.Namespace, assets: dict, rows: dict[str, dict], wall_s: float) -> str:
    gpu = args.device != "cpu"
    key = "peak_gpu_mib" if gpu else "peak_rss_mib"

    def delta(r: dict) -> float:
        return r["delta_mib"]

    def spread(r: dict) -> str:
        values = [run[key] for run in r["runs"]]
        return f"{min(values):.0f}–{max(values):.0f}" if len(values) > 1 else "–"

    def per_round(a: dict, b: dict) -> str:
        return ", ".join(f"{x[key] / y[key]:.2f}" for x, y in zip(a["runs"], b["runs"]))

    lines = [
        "# Memory: peak per trainer",
        "",
        f"`python benchmarks/memory.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"GPT-2 {args.n_layer} layers × {args.n_embd} hidden ({args.n_head} heads), "
        f"{assets['params'] / 1e6:.1f}M parameters per model (built from a config, embeddings "
        f"{args.model_vocab or assets['vocab']} rows; word tokenizer of {assets['vocab']} tokens); batch "
        f"{args.batch_size}, {args.length} new tokens per sampled completion, G = {args.group_size} for GCN / GRPO; "
        f"{args.steps} optimizer steps (AdamW) per trainer, each in a fresh process, one at a time, "
        f"{args.repeats} round(s) over the trainers (medians; range over rounds); device "
        f"{args.device}{' bf16' if args.bf16 else ' fp32'}, {args.threads} torch thread(s). LoRA rows: r = "
        f"{args.lora_r}, α = {2 * args.lora_r}, on c_attn, c_proj, c_fc (attention and MLP).",
        "",
    ]
    if gpu:
        lines += ["| trainer | trainable params (M) | peak GPU allocated (MiB) | range | × baseline | s |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    else:
        lines += [
            "| trainer | trainable params (M) | peak RSS (MiB) | range | × baseline | Δ over imports (MiB) | Δ × baseline | s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for name in TRAINERS:
        if name not in rows:
            continue
        r = rows[name]
        base = rows.get("trl_sft_lora" if name in LORA else "trl_sft")
        rel = f"{r[key] / base[key]:.2f}" if base else "–"
        cells = [LABELS[name], f"{r['trainable'] / 1e6:.2f}", f"{r[key]:.0f}", spread(r), rel]
        if not gpu:
            cells += [f"{delta(r):.0f}", f"{delta(r) / delta(base):.2f}" if base else "–"]
        cells.append(f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "× baseline: against TRL SFTTrainer (full fine-tuning) for the full rows, TRL SFTTrainer + the same LoRA "
        "config for the LoRA rows. *s*: construction + training wall time of the process.",
        "",
        "Goals on the peak: ratio of the medians, and each round's ratio (the two processes of a round ran back to "
        "back).",
        "",
        "| goal | ratio (peak) | each round |" + ("" if gpu else " ratio (Δ over imports) |") + " goal | met |",
        "|---|---:|---|" + ("" if gpu else "---:|") + "---:|---|",
    ]
    for text, a, b, goal in TARGETS:
        if a in rows and b in rows:
            ratio = rows[a][key] / rows[b][key]
            cell = "" if gpu else f" {delta(rows[a]) / delta(rows[b]):.2f} |"
            met = "yes" if ratio <= goal and all(x[key] <= goal * y[key] for x, y in zip(rows[a]["runs"], rows[b]["runs"])) else "no"
            lines.append(f"| {text} | {ratio:.2f} | {per_round(rows[a], rows[b])} |{cell} ≤ {goal} | {met} |")
    lines += ["", f"Total wall time {wall_s:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="hfcoop_memory_") as workdir:
        assets = build_assets(args, workdir)
        print(f"assets: {assets['params'] / 1e6:.1f}M parameters, vocab {assets['vocab']}", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in args.trainers}
        for round_ in range(args.repeats):
            for name in args.trainers:
                r = measure(name, args, assets)
                runs[name].append(r)
                print(f"round {round_ + 1}/{args.repeats} {name}: peak RSS {r['peak_rss_mib']:.0f} MiB "
                      f"(Δ {r['peak_rss_mib'] - r['rss_before_mib']:.0f}), GPU {r['peak_gpu_mib']}, "
                      f"{r['seconds']:.0f} s", flush=True)  # fmt: skip
    rows = {name: median_row(r) for name, r in runs.items()}
    speed.publish(render(args, assets, rows, time.time() - t0), args.output)


if __name__ == "__main__":
    main()
