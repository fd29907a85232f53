"""GENERE, Fig. 1 of the paper: test loss vs the fraction of real data, on the synthetic text-to-equation task.

For each amount of real data (``--sizes``, one panel each) and each fraction f of real rows in the training
mix (``--fractions``; λ = (1 - f) / f, f = 0 is generated rows only), three estimators train the same tiny GPT-2
for the same number of steps:

- **MLE**: real data only (f = 1; GENERE with λ = 0 is exactly this).
- **GENERE**: real rows mixed with rows from the 5 base generators of ``hfcoop.tasks.text_to_equation`` (1 matching,
  4 distractors), the mixture γ learned by Algorithm 2 (black-box variant).
- **uniform mixture**: the same mix with γ frozen at 0 (η_γ = 0), i.e. every generator equally often: the
  paper's "hybrid" baseline of Table 5, which isolates what learning γ buys.

Every run starts with ``--warmup`` steps of MLE on the real data (Sec. 3.2 initialises its model with 200 such
iterations). The test loss is the per-token NLL of held-out real rows. Results: ``benchmarks/results/genere_fig1[_tag].md``
and ``.png``; ``genere_fig1.md`` was measured with the paper's summed reward, ``--eta 0.05 --likelihood-normalization
sum --shrinkage 1.0``; the defaults now are the trainer's (per-token reward, η_γ 0.1, shrinkage 0.99). Default run: 2 sizes x 2 seeds x (MLE + GENERE at 4 fractions + uniform at 2), 28 runs of 300
steps, about 8 minutes on 2 CPU cores.

    python benchmarks/genere_fig1.py [--sizes 32 512] [--fractions 0 0.25 0.5 0.75 1] [--seeds 0 1]
                                     [--uniform-fractions 0 0.5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run_one(model: str, n_real: int, fraction: float, learn_gamma: bool, seed: int, a: argparse.Namespace) -> dict:
    from transformers.trainer_callback import PrinterCallback

    from hfcoop import GenereConfig, GenereTrainer
    from hfcoop.tasks.text_to_equation import EQUATION_GENERATORS, MATCHING_GENERATOR, equation_dataset

    weight = math.inf if fraction == 0 else (1.0 - fraction) / fraction
    with tempfile.TemporaryDirectory() as out:
        args = GenereConfig(
            output_dir=out, max_steps=a.steps, per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
            lr_scheduler_type="constant", max_prompt_length=32, max_completion_length=16, generative_weight=weight,
            mixture_learning_rate=a.eta if learn_gamma else 0.0, mle_warmup_steps=a.warmup, save_strategy="no",
            logging_steps=a.steps, report_to="none", use_cpu=True, disable_tqdm=True, seed=seed,
            per_device_eval_batch_size=128, likelihood_normalization=a.likelihood_normalization,
            mixture_shrinkage=a.shrinkage,
        )  # fmt: skip
        trainer = GenereTrainer(
            model, EQUATION_GENERATORS, args=args, train_dataset=equation_dataset(n_real, seed=1000 + seed),
            eval_dataset=equation_dataset(a.test_size, seed=999_999),
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        loss = trainer.evaluate()["eval_loss"]
    return {"test_loss": loss, "pi_match": trainer.mixture_proportions[MATCHING_GENERATOR]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 512], help="amounts of real data (panels)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument(
        "--uniform-fractions", type=float, nargs="*", default=[0.0, 0.5], help="fractions for the uniform baseline"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=50, help="MLE warm-up steps (mle_warmup_steps)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eta", type=float, default=0.1, help="mixture_learning_rate η_γ (the paper's 0.1)")
    parser.add_argument("--likelihood-normalization", default="per_token", choices=["per_token", "sum"],
                        help="the γ update's reward (GenereConfig.likelihood_normalization; default: the trainer's)")
    parser.add_argument("--shrinkage", type=float, default=0.99, help="mixture_shrinkage (the paper's 0.99)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--n-embd", type=int, default=128, help="width of the tiny GPT-2")
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    a = parser.parse_args(argv)

    import torch
    from transformers import logging as hf_logging

    from hfcoop.tasks.text_to_equation import build_equation_model

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
    start, cpu_start = time.time(), time.process_time()
    model = build_equation_model(
        tempfile.mkdtemp(prefix="genere-fig1-"), n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head
    )
    fractions = sorted(set(a.fractions) | set(a.uniform_fractions))  # the table's columns
    methods = ["GENERE"] + (["uniform mixture"] if a.uniform_fractions else [])
    runs = {"GENERE": sorted(set(a.fractions) - {1.0}), "uniform mixture": sorted(set(a.uniform_fractions) - {1.0})}
    results: dict[tuple, list[dict]] = {}
    for n in a.sizes:
        for seed in a.seeds:
            if 1.0 in a.fractions:  # f = 1 never calls a generator: the MLE run, shared by every method
                results.setdefault((n, "MLE", 1.0), []).append(run_one(model, n, 1.0, False, seed, a))
            for method in methods:
                for f in runs[method]:
                    if f < 1.0:
                        r = run_one(model, n, f, method == "GENERE", seed, a)
                        results.setdefault((n, method, f), []).append(r)
                        print(f"n={n} seed={seed} {method:16s} f={f:g}: test loss {r['test_loss']:.4f}, "
                              f"pi_match {r['pi_match']:.2f}  [{time.time() - start:.0f}s]", flush=True)  # fmt: skip
    elapsed = (time.time() - start, time.process_time() - cpu_start)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "genere_fig1" + (f"_{a.tag}" if a.tag else ""))
    write_markdown(results, a, fractions, methods, elapsed, stem + ".md")
    plot(results, a, fractions, methods, stem + ".png")
    print(open(stem + ".md").read())


def _mean(rs: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rs)


def _cell(rs: list[dict] | None, key: str = "test_loss") -> str:
    if not rs:
        return "–"
    values = [r[key] for r in rs]
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{spread}"


def write_markdown(results, a, fractions, methods, elapsed, path) -> None:
    header = "| real data | method | " + " | ".join(f"f = {f:g}" for f in fractions) + " |"
    rule = "|---|---|" + "---:|" * len(fractions)
    lines = [
        "# GENERE — Fig. 1 (test loss vs fraction of real data), synthetic text-to-equation task",
        "",
        f"Generated by `{' '.join(['python benchmarks/genere_fig1.py', *sys.argv[1:]])}` in {elapsed[0] / 60:.1f} min "
        f"wall, {elapsed[1] / 60:.1f} CPU minutes (one torch thread; {os.cpu_count()} shared cores; torch "
        f"{__import__('torch').__version__}).",
        "",
        f"Tiny GPT-2 ({a.n_layer} layers x {a.n_embd}, {a.n_head} heads, word-level tokenizer), {a.steps} optimizer "
        f"steps of batch {a.batch_size} per run "
        f"(the first {a.warmup} plain MLE on the real rows, as Sec. 3.2 initialises its model), Adam lr {a.lr}, "
        f"GENERE η_γ = {a.eta}, reward {a.likelihood_normalization}, shrinkage {a.shrinkage}, σ = 1, α = 0.98; K = 5 base generators (1 matching + 4 distractors). "
        f"Test loss = per-token NLL of {a.test_size} held-out real rows (mean ± std over seeds {a.seeds}). "
        "f = fraction of real rows in the training mix (λ = (1 - f)/f); f = 1 is MLE (λ = 0) and appears in every row "
        "of its panel. *Uniform mixture* = GENERE with γ frozen at 0 (η_γ = 0).",
        "",
        "## Test loss (lower is better)",
        "",
        header,
        rule,
    ]
    for n in a.sizes:
        mle = results.get((n, "MLE", 1.0))
        for method in methods:
            cells = [_cell(mle) if f == 1.0 else _cell(results.get((n, method, f))) for f in fractions]
            lines.append(f"| {n} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Learned mass on the matching generator, π_match (GENERE)", "", header, rule]
    for n in a.sizes:
        cells = ["–" if f == 1.0 else _cell(results.get((n, "GENERE", f)), "pi_match") for f in fractions]
        lines.append(f"| {n} | GENERE | " + " | ".join(cells) + " |")
    lines += ["", "## Best fraction per panel", ""]
    for n in a.sizes:
        best = {
            method: min(
                ((f, _mean(results[(n, "MLE" if f == 1.0 else method, f)], "test_loss")) for f in fractions
                 if (n, "MLE" if f == 1.0 else method, f) in results),
                key=lambda t: t[1],
            )
            for method in methods
        }  # fmt: skip
        mle = results.get((n, "MLE", 1.0))
        mle_text = f"MLE {_mean(mle, 'test_loss'):.3f}" if mle else "MLE not run"
        lines.append(f"- {n} real rows: {mle_text}; " + "; ".join(
            f"{m} best at f = {f:g} ({loss:.3f})" for m, (f, loss) in best.items()) + ".")  # fmt: skip
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def plot(results, a, fractions, methods, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(a.sizes), figsize=(5 * len(a.sizes), 4), squeeze=False)
    styles = {"GENERE": ("tab:blue", "o-"), "uniform mixture": ("tab:gray", "s--")}
    for ax, n in zip(axes[0], a.sizes):
        mle = results.get((n, "MLE", 1.0))
        for method in methods:
            xs, ys, es = [], [], []
            for f in fractions:
                rs = mle if f == 1.0 else results.get((n, method, f))
                if rs:
                    vals = [r["test_loss"] for r in rs]
                    xs.append(100 * f)
                    ys.append(statistics.fmean(vals))
                    es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            color, style = styles[method]
            ax.errorbar(xs, ys, yerr=es, fmt=style, color=color, capsize=3, label=method)
        if mle:
            ax.axhline(_mean(mle, "test_loss"), color="tab:red", lw=1, ls=":", label="MLE (real data only)")
        ax.set_title(f"{n} real training rows")
        ax.set_xlabel("fraction of real data (%)")
        ax.set_ylabel("test loss (NLL per token, log scale)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("GENERE on the text-to-equation task (cf. Fig. 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
