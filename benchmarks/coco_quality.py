"""Image COCO captions (ψ-MLE Table 3; Texygen protocol): BLEU-2..5 vs the test set, Self-BLEU-2..5, NLL_test for
MLE, CoT, ψ-MLE and GCN at an equal budget.

Protocol
- Data: Texygen's COCO split, ``../shared/data/image_coco`` (10,000 training / 10,000 test captions).
- Tokens: a word-level tokenizer (lower-cased; words and punctuation split, as nltk's ``word_tokenize`` splits
  them in Texygen). Its vocabulary is built from the training **and** test captions, as Texygen's
  ``text_process`` does, so NLL_test never meets an unknown word; the models are trained on training captions only.
- Generator: GPT-2 (default 2 layers x 64, 2 heads), built locally, BOS/EOS/pad = ``<|endoftext|>``.
  ``max_completion_length`` 40 (longest caption: 37 tokens + EOS).
- Budget: as in ``oracle_turing_test.py``: ``--pretrain-steps`` of MLE from one random init, shared, then
  ``--steps`` of each algorithm from that checkpoint at the same batch size and learning rate ("MLE" = MLE
  continued); cooperative trainers also train their companion (trainer defaults: CoT mediator = copy of the
  generator, ψ-MLE ratio model / GCN discriminator = generator backbone + zero one-logit head; GCN draws one
  sample per real row, ``num_candidates=1``, like the others).
- Metrics at temperature 1 (ψ-MLE Table 3 uses α = 1 for COCO): ``--samples`` unconditional samples; BLEU-n =
  mean sentence BLEU of each sample against the whole test set, Self-BLEU-n = of each sample against all other
  samples (:mod:`hfcoop.metrics`: nltk ``sentence_bleu``, uniform weights, smoothing method 1, Texygen); tokens =
  words and punctuation. NLL_test = per-token NLL (nats, EOS included) of all 10,000 test captions
  (:func:`hfcoop.metrics.reference_nll`). A "training data" row scores as many training captions the same way
  (the paper's reference row). The PNG adds a temperature sweep (BLEU-4 vs Self-BLEU-4) and NLL_test curves.

Usage
    python benchmarks/coco_quality.py --quick           # 2 CPU cores, ~20 min (see QUICK below)
    python benchmarks/coco_quality.py --device cuda --bf16

Results: ``benchmarks/results/coco_quality[_quick].md`` and ``.png``.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

import torch  # noqa: E402

ORDERS = (2, 3, 4, 5)
MAX_LEN = 40
FULL = dict(pretrain_steps=4000, steps=4000, samples=5000, sweep_samples=2000, eval_every=250, n_layer=2, n_embd=128,
            n_head=4, temperatures=[0.8, 0.9, 1.0, 1.1, 1.2])  # fmt: skip
QUICK = dict(pretrain_steps=600, steps=200, samples=2000, sweep_samples=1000, eval_every=100, n_layer=2, n_embd=64,
             n_head=2, temperatures=[0.8, 0.9, 1.0, 1.1])  # fmt: skip
PAPER = {  # ψ-MLE Table 3: BLEU-2..5, Self-BLEU-2..5
    "training data": ((0.68, 0.47, 0.30, 0.19), (0.86, 0.62, 0.38, 0.42)),
    "MLE": ((0.74, 0.52, 0.33, 0.21), (0.89, 0.72, 0.54, 0.38)),
    "ψ-MLE": ((0.75, 0.53, 0.36, 0.23), (0.89, 0.70, 0.53, 0.36)),
}


def read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def build_generator(
    path: str, texts: list[str], n_layer: int, n_embd: int, n_head: int, seed: int, dropout: float = 0.0
) -> str:
    from hfcoop.tiny import build_tiny_model

    return build_tiny_model(path, texts, vocab_size=20000, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                            n_positions=64, dropout=dropout, seed=seed)  # fmt: skip


def words_of(tokenizer):
    """Text -> its tokenizer words (lower-cased, words and punctuation split), OOV words kept: BLEU's tokens."""
    backend = tokenizer.backend_tokenizer

    def split(text: str) -> str:
        return " ".join(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))

    return split


@torch.no_grad()
def sample_captions(model, tokenizer, n: int, seed: int, temperature: float, batch_size: int = 500) -> list[str]:
    """``n`` unconditional samples from BOS (hfcoop's sampler, stops at EOS), as space-joined tokens."""
    from hfcoop.data import pad_left, start_token_id
    from hfcoop.sampling import build_generation_config, generation_mode, sample_completions

    config = build_generation_config(tokenizer, MAX_LEN, temperature)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: list[str] = []
    special = set(tokenizer.all_special_ids)
    with generation_mode(model) as g:
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            ids, mask = pad_left([[start_token_id(tokenizer)]] * rows, tokenizer.pad_token_id)
            completion, cmask = sample_completions(g, ids.to(device), mask.to(device), config)
            for row, m in zip(completion.tolist(), cmask.tolist()):
                toks = [t for t, keep in zip(row, m) if keep and t not in special]
                out.append(" ".join(tokenizer.convert_ids_to_tokens(toks)))
    return out


def quality(samples: list[str], references: list[str]) -> dict[str, float]:
    from hfcoop.metrics import self_bleu_score, sentence_bleu_score

    return {**sentence_bleu_score(samples, references, orders=ORDERS), **self_bleu_score(samples, orders=ORDERS)}


def main(argv: list[str] | None = None) -> None:
    p = common.argument_parser(__doc__, QUICK)
    p.add_argument("--samples", type=int, help="generated captions scored at T=1")
    p.add_argument("--sweep-samples", type=int, help="generated captions per other temperature")
    p.add_argument("--data", default=os.path.join(common.SHARED_DATA, "image_coco"))
    a = common.parse_arguments(p, argv, QUICK, FULL)
    t_start = time.perf_counter()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfcoop.metrics import reference_nll

    train_texts = read_lines(os.path.join(a.data, "image_coco.txt"))
    test_texts = read_lines(os.path.join(a.data, "test_coco.txt"))
    train_ds = Dataset.from_dict({"text": train_texts})
    curve_texts = test_texts[:1000]

    def curve_point(generator) -> dict[str, float]:
        return {"nll_test": reference_nll(generator, tokenizer, curve_texts, batch_size=250)["nll_per_token"]}

    shared, per_algorithm = common.training_settings(a, MAX_LEN)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        init = build_generator(os.path.join(tmp, "init"), train_texts + test_texts, a.n_layer, a.n_embd, a.n_head,
                               a.seed)  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(init)
        split = words_of(tokenizer)
        references = [split(t) for t in test_texts]
        rng = random.Random(a.seed)
        train_row = quality([split(t) for t in rng.sample(train_texts, a.samples)], references)

        gen_params = common.count_parameters(AutoModelForCausalLM.from_pretrained(init))
        pretrained, pre_seconds, pre_curve = init, 0.0, []
        if a.pretrain_steps:
            pretrained, pre_seconds, pre_curve = common.pretrain(
                init, os.path.join(tmp, "pretrained"), a.pretrain_steps, a.pretrain_lr, shared, train_ds, curve_point,
                a.eval_every,
            )  # fmt: skip
            last = pre_curve[-1] if pre_curve else ""
            print(f"MLE pretraining: {a.pretrain_steps} steps in {pre_seconds:.0f} s; {last}", flush=True)
        mediator = None  # a mediator of its own shape is pretrained like the generator
        if common.own_mediator(a):
            mediator = build_generator(os.path.join(tmp, "mediator_init"), train_texts + test_texts, seed=a.seed + 1,
                                       **common.mediator_shape(a))  # fmt: skip
            if a.pretrain_steps:
                mediator, seconds, _ = common.pretrain(mediator, os.path.join(tmp, "mediator"), a.pretrain_steps,
                                                       a.pretrain_lr, shared, train_ds)  # fmt: skip
                print(f"mediator MLE pretraining: {seconds:.0f} s", flush=True)

        for name in a.algorithms:
            cb = common.PeriodicEval(curve_point, a.eval_every, offset=a.pretrain_steps, at_start=False)
            config = common.make_config(name, dict(shared, output_dir=os.path.join(tmp, name), max_steps=a.steps,
                                                   learning_rate=a.lr), per_algorithm)  # fmt: skip
            companion = mediator if name == "CoT" else None
            trainer, seconds = common.train(name, pretrained, train_ds, config, [cb], companion=companion)
            generator = trainer.pair.generator.eval()
            nll = reference_nll(generator, tokenizer, test_texts, batch_size=250)["nll_per_token"]
            sweep = []
            for t in a.temperatures:
                n = a.samples if t == 1.0 else a.sweep_samples
                samples = sample_captions(generator, tokenizer, n, seed=1234, temperature=t)
                sweep.append({"T": t, "n": n, **quality(samples, references),
                              "length": sum(len(s.split()) for s in samples) / n})  # fmt: skip
                if t == 1.0:
                    examples = samples[:5]
            at_one = next(s for s in sweep if s["T"] == 1.0)
            results[name] = dict(
                seconds=seconds, s_per_step=seconds / a.steps, companion_params=common.count_parameters(trainer.pair.companion),
                nll_test=nll, at_one=at_one, sweep=sweep, curve=pre_curve + cb.history, examples=examples,
                logs=common.last_logged(trainer),
            )  # fmt: skip
            print(f"{name}: {a.steps} steps in {seconds:.0f} s; BLEU-2..5 "
                  + " ".join(f"{at_one[f'bleu-{n}']:.3f}" for n in ORDERS) + "; Self-BLEU-2..5 "
                  + " ".join(f"{at_one[f'self-bleu-{n}']:.3f}" for n in ORDERS) + f"; NLL_test {nll:.3f}", flush=True)  # fmt: skip
            del trainer, generator

    total = time.perf_counter() - t_start
    report(a, results, train_row, gen_params, pre_seconds, len(tokenizer), total)


def report(a, results, train_row, gen_params, pre_seconds, vocab, total) -> None:
    os.makedirs(a.out, exist_ok=True)
    stem = common.result_stem("coco_quality", a)
    headers = (["model", "params G (+companion)", "train s (s/step)"] + [f"BLEU-{n}" for n in ORDERS]
               + [f"Self-BLEU-{n}" for n in ORDERS] + ["NLL_test", "mean length"])  # fmt: skip

    def metric_cells(m: dict) -> list:
        return [m[f"bleu-{n}"] for n in ORDERS] + [m[f"self-bleu-{n}"] for n in ORDERS]

    rows = [[f"training data ({a.samples} captions)", "—", "—", *metric_cells(train_row), None, None]]
    for name, r in results.items():
        comp = f" (+{r['companion_params']:,})" if r["companion_params"] else ""
        rows.append([name, f"{gen_params:,}{comp}", f"{r['seconds']:.0f} ({r['s_per_step']:.2f})",
                     *metric_cells(r["at_one"]), r["nll_test"], r["at_one"]["length"]])  # fmt: skip
    for name, (bleu, self_bleu) in PAPER.items():
        rows.append([f"*paper ψ-MLE Tab. 3: {name}*", "—", "—", *bleu, *self_bleu, None, None])
    table = common.markdown_table(headers, rows)
    sweep_headers = ["model"] + [f"T={t:g}" for t in a.temperatures]
    sweep_rows = [[name] + [f"{s['bleu-4']:.3f} / {s['self-bleu-4']:.3f}" for s in r["sweep"]]
                  for name, r in results.items()]  # fmt: skip
    sweep_table = common.markdown_table(sweep_headers, sweep_rows)
    print("\n" + table + "\n\nTemperature sweep (BLEU-4 / Self-BLEU-4):\n" + sweep_table, flush=True)
    png = os.path.join(a.out, stem + ".png")
    plot(results, train_row, png, a)
    lines = [
        f"# Image COCO captions: BLEU / Self-BLEU / NLL_test, MLE vs CoT vs ψ-MLE vs GCN ({'--quick' if a.quick else 'full'})",
        "",
        f"`python benchmarks/coco_quality.py {' '.join(sys.argv[1:])}` — total {total / 60:.1f} min. "
        f"{common.environment_line(a.device, a.threads)}.",
        "",
        f"**Protocol.** Texygen COCO split (10,000 train / 10,000 test captions); word-level vocabulary of {vocab:,} "
        "tokens built from train + test captions (Texygen's convention); generator GPT-2 "
        f"{a.n_layer} x {a.n_embd} ({a.n_head} heads), {gen_params:,} parameters. Budget: {a.pretrain_steps} MLE "
        f"pretraining steps (lr {a.pretrain_lr}, {pre_seconds:.0f} s, shared), then {a.steps} steps of each algorithm "
        f"from that checkpoint; batch {a.batch_size}, Adam lr {a.lr} for generator and companion, constant schedule. "
        f"Metrics at T=1 on {a.samples} samples: BLEU-n against all 10,000 test captions and Self-BLEU-n among the "
        "samples (sentence BLEU, uniform weights, smoothing method 1, word/punctuation tokens; Texygen), "
        "NLL_test = nats per token (EOS included) of all test captions. Self-BLEU grows with the number of samples, "
        "so compare rows of one table (the training-data row uses as many captions)." + common.companion_protocol(a),
        "",
        table,
        "",
        "## Temperature sweep (BLEU-4 / Self-BLEU-4; " + f"{a.sweep_samples} samples off T=1)",
        "",
        sweep_table,
        "",
        f"![curves]({os.path.basename(png)})",
        "",
        "## Samples at T=1 (first 5)",
        "",
    ]
    for name, r in results.items():
        lines.append(f"- **{name}**: " + " / ".join(f"_{s}_" for s in r["examples"]))
    lines += [""] + common.statistics_lines(results)
    with open(os.path.join(a.out, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(a.out, stem + '.md')} and {png}; total {total / 60:.1f} min", flush=True)


def plot(results, train_row, path, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    names = ["training data", *results]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        m = train_row if name == "training data" else results[name]["at_one"]
        values = [m[f"bleu-{n}"] for n in ORDERS] + [m[f"self-bleu-{n}"] for n in ORDERS]
        ax.bar([j + i * width for j in range(len(values))], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(8)])
    ax.set_xticklabels([f"B{n}" for n in ORDERS] + [f"SB{n}" for n in ORDERS])
    ax.set_title("BLEU-n (higher better) / Self-BLEU-n (lower = more diverse), T=1")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, r in results.items():
        ax.plot([s["self-bleu-4"] for s in r["sweep"]], [s["bleu-4"] for s in r["sweep"]], marker="o", label=name)
        for s in r["sweep"]:
            ax.annotate(f"{s['T']:g}", (s["self-bleu-4"], s["bleu-4"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.scatter([train_row["self-bleu-4"]], [train_row["bleu-4"]], marker="*", s=120, color="k", label="training data")
    ax.set_xlabel("Self-BLEU-4 (lower = more diverse)")
    ax.set_ylabel("BLEU-4 vs test (quality)")
    ax.set_title("temperature sweep (labels: T)")
    ax.legend(fontsize=8)
    common.plot_training_curves(axes[2], results, "nll_test", a.pretrain_steps,
                                "NLL_test during training (1,000 test captions)")  # fmt: skip
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
