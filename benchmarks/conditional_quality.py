"""Conditional tasks (the design card's): question generation on SQuAD-QG and summarization on SciTLDR, MLE vs
CoT (stronger mediator) vs ψ-MLE vs GCN at equal compute, plus cooperative decoding with GCN's discriminator.

Protocol
- Data. ``qg``: ``../shared/data/squad_qg`` (Du et al. 2017 dev, 10,570 rows, 48 Wikipedia articles), split **by
  article** (seeded shuffle of the titles: 80% train / 10% validation / 10% test), prompt = ``"<sentence> answer:
  <answer> question:"``, completion = the question. ``sum``: ``../shared/data/scitldr`` (SciTLDR-A dev, 619 papers),
  split by paper the same way, prompt = the abstract's first ``--doc-words`` words + ``" tldr:"``, completion = the
  author's TLDR; every gold TLDR of a test paper is a reference.
- Tokens: a word-level tokenizer (lower-cased, words and punctuation) trained on the task's train split (an
  unseen test word becomes ``<unk>``); metrics compare these word strings.
- Models, per seed: a GPT-2 generator (``--n-layer`` x ``--n-embd``) MLE-pretrained on the task for
  ``--pretrain-steps``; CoT's mediator is its own GPT-2 twice as wide (CoT App.: a stronger mediator), pretrained the
  same way (``--mediator-n-embd 0`` gives CoT the trainer default, a copy of G). Then ``--steps`` of each algorithm
  from the pretrained generator, same batch, learning rate and step count ("MLE" = MLE continued). ψ-MLE's ratio
  model and GCN's discriminator: trainer defaults (generator backbone + zero head).
- Selection: every sweep (learning rate, mle_weight, candidates, mediator, ...) is scored on the **validation**
  split (``--eval-split validation``, the default); the settings chosen there are then run once with
  ``--eval-split test``, the only runs that read the test split. Each result file names its split.
- Metrics on ``--test-size`` prompts of that split: corpus BLEU-4 (sacrebleu, all references) and ROUGE-L F (best
  reference) of greedy outputs; Self-BLEU-4 among T=1 samples (one per prompt; lower = more diverse); NLL = nats per
  reference token (EOS included) given the prompt. Mean ± half the min-max spread over seeds.
- Decoding (GCN's generator and trained discriminator): greedy, beam (4), T=1 sampling, SIR (``--sir-candidates``
  samples per prompt, one kept ∝ D) and MCTS (``--mcts-simulations`` per token, children = the generator's top
  ``--mcts-top-k``; more simulations than children, else it is no search).

Usage
    python benchmarks/conditional_quality.py --quick       # smallest honest budget, see QUICK
    python benchmarks/conditional_quality.py --device cuda --bf16

Results: ``benchmarks/results/conditional_quality[_quick].md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

import torch  # noqa: E402

FULL = dict(pretrain_steps=3000, steps=1000, eval_every=0, n_layer=4, n_embd=256, n_head=4, temperatures=[1.0])
QUICK = dict(pretrain_steps=200, steps=60, eval_every=0, n_layer=2, n_embd=64, n_head=2, temperatures=[1.0])
# --quick as run for the committed table: --seeds 0 1 --test-size 64 --batch-size 16 --mcts-simulations 4
TASKS = {"qg": dict(prompt_len=64, completion_len=24), "sum": dict(prompt_len=96, completion_len=40)}


# ------------------------------------------------------------------------------------------------ data
def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def split_by(rows: list[dict], key: str, seed: int = 0) -> dict[str, list[dict]]:
    """80/10/10 train/validation/test split of the distinct ``key`` values (articles, papers), seeded."""
    groups = sorted({r[key] for r in rows})
    random.Random(seed).shuffle(groups)
    n = len(groups)
    cut = {"train": set(groups[: int(0.8 * n)]), "validation": set(groups[int(0.8 * n) : int(0.9 * n)])}
    out = {"train": [], "validation": [], "test": []}
    for r in rows:
        part = next((name for name, g in cut.items() if r[key] in g), "test")
        out[part].append(r)
    return out


def load_task(task: str, data_root: str, doc_words: int) -> dict[str, list[dict]]:
    """Rows ``{"prompt", "completion", "references"}`` per split."""
    if task == "qg":
        rows = read_jsonl(os.path.join(data_root, "squad_qg", "squad_qg_du2017_dev.jsonl"))
        splits = split_by(rows, "title")
        make = lambda r: {"prompt": f"{r['context']} answer: {r['answer']} question:", "completion": r["question"],  # noqa: E731
                          "references": [r["question"]]}  # fmt: skip
    else:
        rows = read_jsonl(os.path.join(data_root, "scitldr", "scitldr_a_dev.jsonl"))
        splits = split_by(rows, "id")
        make = lambda r: {"prompt": " ".join(r["document"].split()[:doc_words]) + " tldr:",  # noqa: E731
                          "completion": r["summary"], "references": r.get("summaries") or [r["summary"]]}  # fmt: skip
    return {name: [make(r) for r in part] for name, part in splits.items()}


# ------------------------------------------------------------------------------------------------ decoding
def words_of(tokenizer):
    backend = tokenizer.backend_tokenizer

    def split(text: str) -> str:
        return " ".join(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))

    return split


def prompt_batches(tokenizer, prompts: list[str], max_prompt: int, batch_size: int, device):
    from hfcoop.data import pad_left, start_token_id

    for start in range(0, len(prompts), batch_size):
        rows = [tokenizer(p)["input_ids"][-max_prompt:] or [start_token_id(tokenizer)] for p in prompts[start : start + batch_size]]
        ids, mask = pad_left(rows, tokenizer.pad_token_id)
        yield ids.to(device), mask.to(device)


def to_text(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    special = set(tokenizer.all_special_ids)
    return [" ".join(tokenizer.convert_ids_to_tokens([t for t, k in zip(r, m) if k and t not in special]))
            for r, m in zip(ids.tolist(), mask.tolist())]  # fmt: skip


@torch.no_grad()
def decode(method: str, model, tokenizer, prompts: list[str], max_prompt: int, max_new: int, seed: int,
           discriminator=None, scorer_inputs=None, sir_candidates: int = 8, mcts_simulations: int = 8,
           mcts_top_k: int = 4) -> list[str]:  # fmt: skip
    """Completions (word strings) of ``method``: greedy | beam | sample | sir | mcts."""
    from hfcoop.cooperative_decoding import mcts_decode, sample_and_resample
    from hfcoop.sampling import build_generation_config, generation_mode, sample_completions
    from hfcoop.scorers import SequenceScorer

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: list[str] = []
    config = build_generation_config(tokenizer, max_new, 1.0)
    with generation_mode(model) as g:
        for ids, mask in prompt_batches(tokenizer, prompts, max_prompt, 32, device):
            if method in ("greedy", "beam"):
                gen = g.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 num_beams=4 if method == "beam" else 1, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)  # fmt: skip
                comp = gen[:, ids.shape[1] :]
                ended = (comp == tokenizer.eos_token_id).int().cumsum(1)
                cmask = ((ended == 0) | ((ended == 1) & (comp == tokenizer.eos_token_id))).long()
            elif method == "sample":
                comp, cmask = sample_completions(g, ids, mask, config)
            else:
                score = SequenceScorer(discriminator, scorer_inputs)
                if method == "sir":
                    res = sample_and_resample(g, ids, mask, config, score, num_candidates=sir_candidates)
                    comp, cmask = res["completion_ids"], res["completion_mask"]
                else:
                    comp, cmask = mcts_decode(g, ids, mask, score, max_new_tokens=max_new,
                                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                              num_simulations=mcts_simulations, top_k=mcts_top_k, visit_temperature=0.0)  # fmt: skip
            out += to_text(tokenizer, comp, cmask)
    return out


def scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    from hfcoop.metrics import corpus_bleu_score, rouge_f_scores

    rouge = rouge_f_scores(predictions, references)
    return {"bleu4": corpus_bleu_score(predictions, references, tokenize="none")["bleu"],  # already 0-1
            "rougeL": rouge["rougeL"],
            "length": sum(len(p.split()) for p in predictions) / max(len(predictions), 1)}  # fmt: skip


def self_bleu4(samples: list[str]) -> float:
    from hfcoop.metrics import self_bleu_score

    return self_bleu_score(samples, orders=(4,))["self-bleu-4"]


# ------------------------------------------------------------------------------------------------ one task, one seed
def cached_pretraining(a, key: dict, tmp: str, build) -> tuple[str, float]:
    """``build(folder) -> seconds`` (a tokenizer + model, MLE-pretrained into ``folder``) once per ``key`` under
    ``--cache-dir``: sweeps over the algorithm phase reuse the same pretrained checkpoints and the same seconds."""
    if not a.cache_dir:
        folder = os.path.join(tmp, key["model"])
        return folder, build(folder)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = os.path.join(a.cache_dir, f"{key['task']}-{key['model']}-{digest}")
    marker = os.path.join(folder, "pretraining.json")
    if not os.path.exists(marker):
        seconds = build(folder)
        with open(marker, "w") as f:
            json.dump({**key, "seconds": seconds}, f)
    with open(marker) as f:
        return folder, json.load(f)["seconds"]


def pretrained_models(task: str, a, seed: int, texts: list[str], train_ds, shared: dict, tmp: str):
    """(generator, seconds, mediator or None): the task's word-level tokenizer and GPT-2 generator, MLE-pretrained;
    CoT's wider mediator pretrained the same way when ``--mediator-n-embd``."""
    from hfcoop.tiny import build_tiny_model

    lengths = TASKS[task]
    positions = lengths["prompt_len"] + lengths["completion_len"] + 8
    key = dict(task=task, seed=seed, vocab=a.vocab_size, n_layer=a.n_layer, n_head=a.n_head, positions=positions,
               steps=a.pretrain_steps, lr=a.pretrain_lr, batch=a.batch_size, doc_words=a.doc_words)  # fmt: skip

    def build(width: int, model_seed: int):
        def run(folder: str) -> float:
            init = build_tiny_model(os.path.join(folder, "init"), texts, vocab_size=a.vocab_size, n_layer=a.n_layer,
                                    n_embd=width, n_head=a.n_head, n_positions=positions, seed=model_seed)  # fmt: skip
            _, seconds, _ = common.pretrain(init, os.path.join(folder, "model"), a.pretrain_steps, a.pretrain_lr,
                                            shared, train_ds)  # fmt: skip
            return seconds

        return run

    folder, seconds = cached_pretraining(a, dict(key, model="generator", n_embd=a.n_embd), tmp, build(a.n_embd, seed))
    mediator = None
    if a.mediator_n_embd:
        mediator, _ = cached_pretraining(a, dict(key, model="mediator", n_embd=a.mediator_n_embd), tmp,
                                         build(a.mediator_n_embd, seed + 1))  # fmt: skip
        mediator = os.path.join(mediator, "model")
    return os.path.join(folder, "model"), seconds, mediator


def run_seed(task: str, data: dict, a, seed: int, tmp: str) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hfcoop.metrics import reference_nll

    lengths = TASKS[task]
    train_ds = Dataset.from_dict({k: [r[k] for r in data["train"]] for k in ("prompt", "completion")})
    test = data[a.eval_split][: a.test_size]  # validation for every sweep; test once for the chosen settings
    texts = [r["prompt"] + " " + r["completion"] for r in data["train"]]
    a.seed = seed
    shared, per_algorithm = common.training_settings(a, lengths["completion_len"])
    shared["max_prompt_length"] = lengths["prompt_len"]
    per_algorithm["GCN"]["num_candidates"] = a.gcn_candidates  # prompt/completion data: ≥ 2 per prompt
    per_algorithm["GCN"]["mle_weight"] = a.gcn_mle_weight
    pretrained, pre_seconds, mediator = pretrained_models(task, a, seed, texts, train_ds, shared, tmp)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    split = words_of(tokenizer)
    references = [[split(x) for x in r["references"]] for r in test]
    prompts = [r["prompt"] for r in test]
    print(f"[{task} seed {seed}] pretraining {pre_seconds:.0f} s", flush=True)
    out: dict = {"algorithms": {}, "decoding": {}}
    for name in a.algorithms:
        config = common.make_config(name, dict(shared, output_dir=os.path.join(tmp, name), max_steps=a.steps,
                                               learning_rate=a.lr), per_algorithm)  # fmt: skip
        trainer, seconds = common.train(name, pretrained, train_ds, config, [], companion=mediator if name == "CoT" else None)
        g = trainer.pair.generator.eval()
        greedy = decode("greedy", g, tokenizer, prompts, lengths["prompt_len"], lengths["completion_len"], seed)
        samples = decode("sample", g, tokenizer, prompts, lengths["prompt_len"], lengths["completion_len"], seed)
        nll = reference_nll(g, tokenizer, [r["completion"] for r in test], prompts=prompts, batch_size=64,
                            max_prompt_length=lengths["prompt_len"])["nll_per_token"]  # fmt: skip
        row = {**scores(greedy, references), "self_bleu4": self_bleu4(samples), "nll": nll, "seconds": seconds,
               "logs": common.last_logged(trainer), "example": greedy[0]}  # fmt: skip
        out["algorithms"][name] = row
        print(f"[{task} seed {seed}] {name}: {a.steps} steps {seconds:.0f} s; BLEU-4 {row['bleu4']:.4f} ROUGE-L "
              f"{row['rougeL']:.4f} Self-BLEU-4 {row['self_bleu4']:.3f} NLL {nll:.3f}", flush=True)  # fmt: skip
        if name == "GCN" and a.decoding:
            for method in ("greedy", "beam", "sample", "sir", "mcts"):
                texts_out = {"greedy": greedy, "sample": samples}.get(method) or decode(
                    method, g, tokenizer, prompts, lengths["prompt_len"], lengths["completion_len"], seed,
                    trainer.pair.companion.eval(), trainer.scorer_inputs, a.sir_candidates, a.mcts_simulations,
                    a.mcts_top_k)  # fmt: skip
                out["decoding"][method] = scores(texts_out, references)
                print(f"[{task} seed {seed}] GCN decoding {method}: {out['decoding'][method]}", flush=True)
        del trainer, g
    out["pretrain_seconds"] = pre_seconds
    out["vocab"] = len(tokenizer)
    out["splits"] = {k: len(v) for k, v in data.items()}
    return out


# ------------------------------------------------------------------------------------------------ report
def mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.4f}"
    return f"{m:.4f} ± {(max(values) - min(values)) / 2:.4f}"


def report(a, results: dict, total: float) -> None:
    os.makedirs(a.out, exist_ok=True)
    stem = common.result_stem("conditional_quality", a) + ("_validation" if a.eval_split == "validation" else "")
    lines = [f"# Conditional tasks: question generation (SQuAD-QG) and summarization (SciTLDR) "
             f"({'--quick' if a.quick else 'full'})", "",
             f"`python benchmarks/conditional_quality.py {' '.join(sys.argv[1:])}` — total {total / 60:.1f} min. "
             f"{common.environment_line(a.device, a.threads)}.", "",
             f"**Protocol** (module docstring): seeds {a.seeds}; generator GPT-2 {a.n_layer} x {a.n_embd}; "
             f"{a.pretrain_steps} MLE pretraining steps (lr {a.pretrain_lr}), then {a.steps} steps per algorithm "
             f"(batch {a.batch_size}, Adam lr {a.lr}); CoT mediator width {a.mediator_n_embd or 'copy of G'}; GCN "
             f"{a.gcn_candidates} samples per prompt, mle_weight {a.gcn_mle_weight}; scored on {a.test_size} prompts of the **{a.eval_split}** split. Mean ± half the min-max spread over "
             "seeds. BLEU-4 (corpus, 0-1) and ROUGE-L of greedy outputs; Self-BLEU-4 of T=1 samples; NLL per "
             "reference token.", ""]  # fmt: skip
    for task, per_seed in results.items():
        first = per_seed[0]
        lines += [f"## {task} (splits by {'article' if task == 'qg' else 'paper'}: {first['splits']}, vocabulary "
                  f"{first['vocab']})", ""]  # fmt: skip
        headers = ["algorithm", "BLEU-4", "ROUGE-L", "Self-BLEU-4", "NLL", "mean length", "train s"]
        rows = []
        for name in a.algorithms:
            vals = lambda k: [s["algorithms"][name][k] for s in per_seed if name in s["algorithms"]]  # noqa: E731
            rows.append([name, mean_spread(vals("bleu4")), mean_spread(vals("rougeL")), mean_spread(vals("self_bleu4")),
                         mean_spread(vals("nll")), mean_spread(vals("length")), mean_spread(vals("seconds"))])  # fmt: skip
        lines += [common.markdown_table(headers, rows), ""]
        if first["decoding"]:
            lines += ["Decoding with GCN's generator and trained discriminator:", ""]
            drows = [[m, mean_spread([s["decoding"][m]["bleu4"] for s in per_seed]),
                      mean_spread([s["decoding"][m]["rougeL"] for s in per_seed]),
                      mean_spread([s["decoding"][m]["length"] for s in per_seed])] for m in first["decoding"]]  # fmt: skip
            lines += [common.markdown_table(["decoding", "BLEU-4", "ROUGE-L", "mean length"], drows), ""]
        lines += ["Trainer statistics (seed " + str(a.seeds[0]) + ", last logged):", ""]
        for name, r in first["algorithms"].items():
            if r["logs"]:
                lines.append(f"- **{name}**: " + ", ".join(f"`{k}` {v:.3g}" for k, v in sorted(r["logs"].items())))
        lines += ["", "Greedy output for the first test prompt: " + "; ".join(
            f"**{n}**: _{r['example']}_" for n, r in first["algorithms"].items()), ""]  # fmt: skip
    png = os.path.join(a.out, stem + ".png")
    plot(a, results, png)
    lines += [f"![results]({os.path.basename(png)})", ""]
    with open(os.path.join(a.out, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, stem + ".json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, list, bool))},
                   "results": results}, f, indent=1, default=str)  # fmt: skip
    print("\n".join(lines), flush=True)


def plot(a, results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(results), figsize=(6 * len(results), 3.8), squeeze=False)
    for t, (task, per_seed) in enumerate(results.items()):
        for j, key in enumerate(("bleu4", "rougeL")):
            ax = axes[0][2 * t + j]
            for i, name in enumerate(a.algorithms):
                vals = [s["algorithms"][name][key] for s in per_seed]
                ax.bar(i, sum(vals) / len(vals), yerr=(max(vals) - min(vals)) / 2 if len(vals) > 1 else 0, capsize=4)
            ax.set_xticks(range(len(a.algorithms)))
            ax.set_xticklabels(a.algorithms)
            ax.set_title(f"{task}: test {key} (greedy)")
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    p = common.argument_parser(__doc__, QUICK)
    p.add_argument("--tasks", nargs="+", default=["qg", "sum"], choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--test-size", type=int, default=200, help="test prompts scored")
    p.add_argument("--doc-words", type=int, default=80, help="abstract words kept in a summarization prompt")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--gcn-candidates", type=int, default=2)
    p.add_argument("--gcn-mle-weight", type=float, default=0.0, help="GCN mle_weight λ (0: pure GCN)")
    p.add_argument("--sir-candidates", type=int, default=8)
    p.add_argument("--mcts-simulations", type=int, default=8)
    p.add_argument("--mcts-top-k", type=int, default=4, help="MCTS children per node (< --mcts-simulations)")
    p.add_argument("--eval-split", default="validation", choices=["validation", "test"],
                   help="split scored: validation for every sweep, test once for the settings chosen there")
    p.add_argument("--no-decoding", dest="decoding", action="store_false", help="skip the cooperative decoding rows")
    p.add_argument("--data", default=common.SHARED_DATA)
    p.add_argument("--cache-dir", default="", help="keep the MLE-pretrained models here and reuse them in later runs "
                   "with the same pretraining settings (sweeps of the algorithm phase); delete it when MLE changes")
    a = common.parse_arguments(p, argv, QUICK, FULL)
    if a.mediator_n_embd is None:
        a.mediator_n_embd = 2 * a.n_embd
    start = time.perf_counter()
    results: dict[str, list[dict]] = {}
    data_of = {task: load_task(task, a.data, a.doc_words) for task in a.tasks}
    for seed in a.seeds:  # seed-major: an interrupted run has every task's first seeds
        for task, data in data_of.items():
            with tempfile.TemporaryDirectory() as tmp:
                results.setdefault(task, []).append(run_seed(task, data, a, seed, tmp))
            report(a, results, time.perf_counter() - start)  # after every seed: an interrupted run keeps its tables


if __name__ == "__main__":
    main()
