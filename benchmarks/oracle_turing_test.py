"""Synthetic Turing test (CoT Sec. 4.1 / Table 1; ψ-MLE Sec. 5.2 / Table 1, Fig. 1): MLE vs CoT vs ψ-MLE vs GCN.

Protocol
- Oracle: SeqGAN's fixed LSTM (:mod:`hfcoop.oracle`; vocabulary 5,000, hidden 32, length 20). Training data:
  10,000 oracle samples (seed 1); held-out data: another 10,000 (seed 2).
- Generator: a GPT-2 of about the oracle's size (3 layers x 48, 4 heads: 327k parameters vs the oracle's 333k),
  vocabulary = the oracle's ids 0..4999 + one BOS/EOS/pad id 5000, fed through a word-level
  ``PreTrainedTokenizerFast`` whose vocabulary maps "0".."4999" to the same ids (rows are space-joined ids in a
  ``text`` dataset). Real sequences are exactly 20 tokens (the EOS that hfcoop appends is cut by
  ``max_completion_length=20``).
- Budget: every generator starts from the same MLE-pretrained checkpoint (``--pretrain-steps`` of MLE from one
  random init, as SeqGAN / ψ-MLE do for their baselines), then runs ``--steps`` optimizer steps of its algorithm
  at the same batch size and learning rate ("MLE" = MLE continued). Cooperative trainers also train their
  companion in those steps (CoT mediator = a copy of the pretrained generator; ψ-MLE ratio model and GCN
  discriminator = the generator's backbone + a zero one-logit head, the trainers' defaults), each step drawing 64
  fresh samples (GCN with ``num_candidates=1`` so that it samples as many as the others). ``--scratch`` adds
  "CoT (scratch)": CoT from the random init for pretrain + algorithm steps (CoT claims not to need pretraining).
- Metrics (SeqGAN units: mean per-token NLL in nats over the 20 positions): NLL_oracle = the oracle's NLL of
  ``--eval-samples`` generator samples; NLL_test = the generator's NLL of the 10,000 held-out oracle samples.
  The evaluated model is the generator restricted to the 5,000 oracle tokens (its BOS/EOS logit dropped, so
  samples always have 20 tokens) at temperature T: p_T = softmax(logits[:5000] / T), for sampling and NLL_test
  alike (Caccia et al.'s temperature sweep, ψ-MLE Fig. 1). The table gives T = 1 (CoT Table 1) and the best
  NLL_oracle + NLL_test over the sweep (ψ-MLE Table 1); the PNG has the sweep curves and training curves.
  Temperatures other than 1 use ``--sweep-samples`` samples and as many held-out sequences.

Usage
    python benchmarks/oracle_turing_test.py --quick            # 2 CPU cores, <= 30 min (see QUICK below)
    python benchmarks/oracle_turing_test.py --device cuda --bf16 --scratch   # full budget, one GPU

Results: ``benchmarks/results/oracle_turing_test[_quick].md`` and ``.png``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

import torch  # noqa: E402

SEQ_LEN = 20
N_IDS = 5000
TRAIN_SEED, TEST_SEED, EVAL_SEED = 1, 2, 1234

# Full budget (GPU): SeqGAN pretrains ~120 epochs of 156 steps; here 32 epochs of MLE, then 32 of each algorithm.
FULL = dict(pretrain_steps=5000, steps=5000, eval_samples=10000, sweep_samples=10000, eval_every=250,
            temperatures=[0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5])  # fmt: skip
# Quick budget (2 shared CPU cores, one thread per run): 4.5 epochs of MLE pretraining + 2 epochs of each
# algorithm; T = 1 evaluated with 10,000 samples / all 10,000 held-out sequences, other temperatures with 2,000.
QUICK = dict(pretrain_steps=700, steps=300, eval_samples=10000, sweep_samples=2000, eval_every=100,
             temperatures=[0.7, 0.8, 0.9, 1.0, 1.1, 1.25])  # fmt: skip

PAPER_COT = {  # CoT Table 1: NLL_oracle, NLL_test final / best (training-time best), T = 1
    "MLE": (9.08, 8.97, 7.60), "CoT": (8.19, 8.03, 7.54),
}  # fmt: skip
PAPER_PSI = {  # ψ-MLE Table 1 (temperature sweep): best NLL_oracle, best NLL_test, best NLL_oracle + NLL_test
    "MLE": (5.53, 7.58, 16.28), "CoT": (6.20, 7.56, 16.32), "ψ-MLE": (5.09, 7.56, 15.98),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- model and data
def id_tokenizer(n_ids: int = N_IDS):
    """Word-level tokenizer: "0".."4999" -> ids 0..4999 (the oracle's own ids), "<|endoftext|>" -> 5000."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    vocab = {str(i): i for i in range(n_ids)} | {special: n_ids}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, pad_token=special, unk_token=special
    )


def build_generator(path: str, n_layer: int, n_embd: int, n_head: int, seed: int, dropout: float = 0.0) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = id_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=0.0, bos_token_id=N_IDS, eos_token_id=N_IDS, pad_token_id=N_IDS,
    )  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def as_text_dataset(sequences: torch.Tensor):
    from datasets import Dataset

    return Dataset.from_dict({"text": [" ".join(map(str, row)) for row in sequences.tolist()]})


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def generator_sample(model, n: int, seed: int, temperature: float = 1.0, batch_size: int = 1000) -> torch.Tensor:
    """``n`` sequences of 20 oracle ids from p_T (BOS/EOS logit dropped), KV-cached, seeded per 1000-row chunk."""
    from transformers import DynamicCache

    from hfcoop.oracle import inverse_cdf_sample

    device = next(model.parameters()).device
    out = []
    for k, start in enumerate(range(0, n, batch_size)):
        rows = min(batch_size, n - start)
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
        ids = torch.full((rows, 1), N_IDS, dtype=torch.long, device=device)
        cache, tokens = DynamicCache(config=model.config), []
        for t in range(SEQ_LEN):
            pos = torch.full((rows, 1), t, dtype=torch.long, device=device)
            logits = model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).logits[:, -1]
            probs = torch.softmax(logits[:, :N_IDS].float() / temperature, dim=-1)
            ids = inverse_cdf_sample(probs, gen)[:, None]
            tokens.append(ids)
        out.append(torch.cat(tokens, dim=1).cpu())
    return torch.cat(out)


@torch.no_grad()
def generator_nll(model, sequences: torch.Tensor, temperatures: list[float], batch_size: int = 250) -> dict[float, float]:
    """Per-token NLL (mean over the 20 positions and the sequences) of ``sequences`` under p_T, for every T."""
    device = next(model.parameters()).device
    totals = dict.fromkeys(temperatures, 0.0)
    for chunk in sequences.split(batch_size):
        chunk = chunk.to(device)
        ids = torch.cat([torch.full_like(chunk[:, :1], N_IDS), chunk], dim=1)
        logits = model(input_ids=ids).logits[:, :-1, :N_IDS].float()
        for t in temperatures:
            logp = torch.log_softmax(logits / t, dim=-1).gather(-1, chunk[..., None]).squeeze(-1)
            totals[t] -= float(logp.double().mean(1).sum())
    return {t: v / len(sequences) for t, v in totals.items()}


def evaluate(model, oracle, test: torch.Tensor, temperatures: list[float], eval_samples: int, sweep_samples: int):
    """NLL_oracle / NLL_test at every temperature: T = 1 with ``eval_samples`` samples and all held-out sequences,
    the other temperatures with ``sweep_samples`` samples and the first ``sweep_samples`` held-out sequences."""
    others = [t for t in temperatures if t != 1.0]
    nll_test = {**generator_nll(model, test[:sweep_samples], others), **generator_nll(model, test, [1.0])}
    sweep = []
    for t in temperatures:
        n = eval_samples if t == 1.0 else sweep_samples
        samples = generator_sample(model, n, EVAL_SEED, t)
        sweep.append({"T": t, "nll_oracle": float(oracle.nll(samples).mean()), "nll_test": nll_test[t], "n": n})
    return sweep


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = common.argument_parser(__doc__, QUICK)
    p.set_defaults(n_layer=3, n_embd=48, n_head=4)
    p.add_argument("--scratch", action="store_true", help="also CoT from the random init (pretrain + steps)")
    p.add_argument("--eval-samples", type=int)
    p.add_argument("--sweep-samples", type=int)
    p.add_argument("--oracle", default=None, help="oracle .npz (default: ../shared/data/oracle_lstm/...)")
    a = common.parse_arguments(p, argv, QUICK, FULL)
    t_start = time.perf_counter()

    from transformers import AutoModelForCausalLM

    from hfcoop.oracle import OracleLSTM

    oracle = OracleLSTM.from_npz(a.oracle, device=a.device)
    train_seqs, test_seqs = oracle.sample(10000, TRAIN_SEED), oracle.sample(10000, TEST_SEED)
    oracle_train, oracle_test = float(oracle.nll(train_seqs).mean()), float(oracle.nll(test_seqs).mean())
    train_seqs, test_seqs = train_seqs.cpu(), test_seqs.cpu()
    print(f"oracle: {oracle.num_parameters():,} parameters; NLL of its own samples: train {oracle_train:.3f}, "
          f"held-out {oracle_test:.3f} (entropy rate; SeqGAN: 5.750)", flush=True)  # fmt: skip
    train_ds = as_text_dataset(train_seqs)
    curve_test = test_seqs[:2000]

    def curve_point(generator) -> dict[str, float]:
        samples = generator_sample(generator, 1000, EVAL_SEED + 1)
        return {"nll_oracle": float(oracle.nll(samples.to(oracle.embedding.device)).mean()),
                "nll_test": generator_nll(generator, curve_test, [1.0])[1.0]}  # fmt: skip

    shared, per_algorithm = common.training_settings(a, SEQ_LEN)

    def pretrain(start: str, out: str, curve: bool = True) -> tuple[str, float, list[dict]]:
        return common.pretrain(start, out, a.pretrain_steps, a.pretrain_lr, shared, train_ds,
                               curve_point if curve else None, a.eval_every)  # fmt: skip

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        init = build_generator(os.path.join(tmp, "init"), a.n_layer, a.n_embd, a.n_head, a.seed)
        gen_params = common.count_parameters(AutoModelForCausalLM.from_pretrained(init))
        # ---- phase 1: one MLE pretraining shared by every algorithm
        pretrained, pre_seconds, pre_curve = init, 0.0, []
        if a.pretrain_steps:
            pretrained, pre_seconds, pre_curve = pretrain(init, os.path.join(tmp, "pretrained"))
            last = pre_curve[-1] if pre_curve else ""
            print(f"MLE pretraining: {a.pretrain_steps} steps in {pre_seconds:.0f} s; {last}", flush=True)
        # A mediator of its own shape is pretrained the same way (it cannot start as a copy of the generator).
        mediator_init = mediator = None
        if common.own_mediator(a):
            mediator_init = build_generator(os.path.join(tmp, "mediator_init"), seed=a.seed + 1, **common.mediator_shape(a))
            mediator = mediator_init
            if a.pretrain_steps:
                mediator, seconds, _ = pretrain(mediator_init, os.path.join(tmp, "mediator"), curve=False)
                print(f"mediator MLE pretraining: {seconds:.0f} s", flush=True)

        # ---- phase 2: each algorithm from the pretrained generator, same steps / batch / lr
        runs = [(name, pretrained, a.steps, a.pretrain_steps) for name in a.algorithms]
        if a.scratch:
            runs.append(("CoT (scratch)", init, a.pretrain_steps + a.steps, 0))
        for name, start, steps, offset in runs:
            cb = common.PeriodicEval(curve_point, a.eval_every, offset=offset, at_start=offset == 0)
            config = common.make_config(name, dict(shared, output_dir=os.path.join(tmp, name.replace(" ", "_")),
                                                   max_steps=steps, learning_rate=a.lr), per_algorithm)  # fmt: skip
            companion = None
            if name.startswith("CoT") and mediator:
                companion = mediator_init if start == init else mediator
            trainer, seconds = common.train(name, start, train_ds, config, [cb], companion=companion)
            generator = trainer.pair.generator
            generator.eval()
            sweep = evaluate(generator, oracle, test_seqs, a.temperatures, a.eval_samples, a.sweep_samples)
            at_one = next(r for r in sweep if r["T"] == 1.0)
            best = min(sweep, key=lambda r: r["nll_oracle"] + r["nll_test"])
            results[name] = dict(
                steps=steps, seconds=seconds, s_per_step=seconds / steps, params=gen_params,
                companion_params=common.count_parameters(trainer.pair.companion), sweep=sweep, at_one=at_one,
                best=best, curve=(pre_curve if offset else []) + cb.history, logs=common.last_logged(trainer),
            )  # fmt: skip
            print(f"{name}: {steps} steps in {seconds:.0f} s ({seconds / steps:.2f} s/step); T=1: NLL_oracle "
                  f"{at_one['nll_oracle']:.3f}, NLL_test {at_one['nll_test']:.3f}; best sum {best['nll_oracle'] + best['nll_test']:.3f} "
                  f"at T={best['T']:g}", flush=True)  # fmt: skip
            del trainer, generator

    total = time.perf_counter() - t_start
    report(a, results, oracle, oracle_train, oracle_test, pre_seconds, gen_params, total)


# ----------------------------------------------------------------------------------------------- report
def report(a, results, oracle, oracle_train, oracle_test, pre_seconds, gen_params, total) -> None:
    os.makedirs(a.out, exist_ok=True)
    stem = common.result_stem("oracle_turing_test", a)
    headers = ["model", "params G (+companion)", "steps", "train s (s/step)", "NLL_oracle T=1", "NLL_test T=1",
               "best NLL_oracle+NLL_test (T)", "paper CoT T1: NLL_oracle / NLL_test", "paper ψ-MLE T1: best sum"]  # fmt: skip
    rows = [["oracle itself (entropy rate)", f"{oracle.num_parameters():,}", "—", "—", oracle_train, oracle_test,
             f"{oracle_train + oracle_test:.3f}", "5.75 (SeqGAN)", "—"]]  # fmt: skip
    for name, r in results.items():
        base = name.split(" ")[0]
        cot = PAPER_COT.get(base) if name == base else None
        psi = PAPER_PSI.get(base) if name == base else None
        pre = f"{a.pretrain_steps} MLE + " if a.pretrain_steps and name != "CoT (scratch)" else ""
        rows.append([
            name, f"{r['params']:,}" + (f" (+{r['companion_params']:,})" if r["companion_params"] else ""),
            f"{pre}{r['steps']}", f"{r['seconds']:.0f} ({r['s_per_step']:.2f})", r["at_one"]["nll_oracle"],
            r["at_one"]["nll_test"], f"{r['best']['nll_oracle'] + r['best']['nll_test']:.3f} ({r['best']['T']:g})",
            f"{cot[0]} / {cot[1]}" if cot else "—", f"{psi[2]}" if psi else "—",
        ])  # fmt: skip
    table = common.markdown_table(headers, rows)
    sweep_headers = ["model"] + [f"T={t:g}" for t in a.temperatures]
    sweep_rows = [[name] + [f"{s['nll_oracle']:.2f} / {s['nll_test']:.2f}" for s in r["sweep"]] for name, r in results.items()]
    sweep_table = common.markdown_table(sweep_headers, sweep_rows)
    print("\n" + table + "\n\nTemperature sweep (NLL_oracle / NLL_test):\n" + sweep_table, flush=True)

    png = os.path.join(a.out, stem + ".png")
    plot(results, oracle_train, oracle_test, png, a)
    mode = "--quick" if a.quick else "full"
    lines = [
        f"# Synthetic Turing test (oracle LSTM): MLE vs CoT vs ψ-MLE vs GCN ({mode})",
        "",
        f"`python benchmarks/oracle_turing_test.py {' '.join(sys.argv[1:])}` — total {total / 60:.1f} min. "
        f"{common.environment_line(a.device, a.threads)}.",
        "",
        "**Protocol.** SeqGAN oracle LSTM (333,320 parameters); 10,000 training and 10,000 held-out oracle samples "
        f"(seeds {TRAIN_SEED}, {TEST_SEED}). Generator: GPT-2 {a.n_layer} layers x {a.n_embd} ({a.n_head} heads), "
        f"{gen_params:,} parameters, vocabulary = 5,000 oracle ids + BOS/EOS. Budget: {a.pretrain_steps} MLE "
        f"pretraining steps (lr {a.pretrain_lr}, {pre_seconds:.0f} s, shared by all), then {a.steps} steps of each "
        f"algorithm from that checkpoint; batch {a.batch_size}, Adam lr {a.lr} (generator and companion), constant "
        "schedule, no weight decay. Cooperative trainers train their companion in the same steps and draw "
        f"{a.batch_size} generator samples per step. 'CoT (scratch)': CoT from the random init for "
        f"{a.pretrain_steps + a.steps} steps. NLL in SeqGAN units (nats per token, mean over the 20 positions); "
        f"T=1: NLL_oracle from {a.eval_samples} samples, NLL_test on all 10,000 held-out samples; other "
        f"temperatures: {a.sweep_samples} samples and the first {a.sweep_samples} held-out samples; the evaluated model is the generator restricted to the 5,000 oracle ids at "
        "temperature T." + common.companion_protocol(a),
        "",
        table,
        "",
        "Paper anchors: CoT Table 1 (LSTM generator, T=1): MLE 9.08 / 8.97 (best NLL_test during training 7.60), "
        "CoT 8.19 / 8.03 (7.54). ψ-MLE Table 1 (temperature sweep, best NLL_oracle / best NLL_test / best "
        "NLL_oracle + NLL_test): MLE 5.53 / 7.58 / 16.28, CoT 6.20 / 7.56 / 16.32, ψ-MLE 5.09 / 7.56 / 15.98. "
        "GCN reports no synthetic-oracle result. The papers train ~20-100x longer than the quick budget.",
        "",
        "## Temperature sweep (NLL_oracle / NLL_test)",
        "",
        sweep_table,
        "",
        f"![curves]({os.path.basename(png)})",
        "",
    ]
    lines += common.statistics_lines(results)
    with open(os.path.join(a.out, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(a.out, stem + '.md')} and {png}; total {total / 60:.1f} min", flush=True)


def plot(results, oracle_train, oracle_test, path, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for name, r in results.items():
        xs, ys = [s["nll_oracle"] for s in r["sweep"]], [s["nll_test"] for s in r["sweep"]]
        ax.plot(xs, ys, marker="o", label=name)
        for s in r["sweep"]:
            ax.annotate(f"{s['T']:g}", (s["nll_oracle"], s["nll_test"]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
    ax.scatter([oracle_train], [oracle_test], marker="*", s=120, color="k", label="oracle (entropy rate)")
    ax.set_xlabel("NLL_oracle (quality, lower is better)")
    ax.set_ylabel("NLL_test (coverage, lower is better)")
    ax.set_title("temperature sweep (labels: T)")
    ax.legend(fontsize=8)
    for ax, key in zip(axes[1:], ("nll_oracle", "nll_test")):
        common.plot_training_curves(ax, results, key, a.pretrain_steps,
                                    f"{key} during training (T=1; 1,000 samples / 2,000 held-out)")  # fmt: skip
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
