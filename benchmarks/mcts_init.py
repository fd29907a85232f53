"""MCTS: which value should an unvisited child start with? Measured against a known target.

Toy: a random 1-layer GPT-2 over 5 words + EOS (<unk> can be drawn too; completions of at most 3 tokens, 259 outcomes, all enumerable)
at temperature 0.5 (a non-flat prior), and a discriminator that scores any (partial) sequence as
``D = sigmoid(b + Σ_t s[token_t])`` (fixed random token scores), so prefixes get values the way a D trained on
whole sequences gives them. GCN's target is ``q ∝ p·D`` over complete outcomes, known exactly here. We decode
``--draws`` sequences with ``visit_temperature = 1`` (the trainer's default) and report the total variation
between the empirical output distribution and q (and p), for both initialisations and a flat D (D ≡ 1/2: then
q = p, the search must follow the generator).

    python benchmarks/mcts_init.py            # ~1-2 CPU minutes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfcoop.cooperative_decoding import mcts_decode
from hfcoop.tiny import build_tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ["a", "b", "c", "d", "e"]


def outcomes(eos: int, words: list[int], length: int) -> list[tuple[int, ...]]:
    out = []
    for n in range(length):
        out += [(*w, eos) for w in itertools.product(words, repeat=n)]
    return out + list(itertools.product(words, repeat=length))


@torch.no_grad()
def exact_p(model, bos: int, seqs: list[tuple[int, ...]], temperature: float, allowed: list[int]) -> torch.Tensor:
    """Sequence probabilities under the temperature-scaled generator restricted to ``allowed`` tokens (the
    MCTS children are exactly those: top_k covers them all)."""
    probs = []
    for s in seqs:
        lp = 0.0
        for t in range(len(s)):
            logits = model(input_ids=torch.tensor([[bos, *s[:t]]])).logits[0, -1].double() / temperature
            mask = torch.full_like(logits, float("-inf"))
            mask[allowed] = 0
            lp += float(torch.log_softmax(logits + mask, -1)[s[t]])
        probs.append(lp)
    p = torch.tensor(probs, dtype=torch.float64).exp()
    return p / p.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=1500)
    parser.add_argument("--simulations", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "mcts_init.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_model(tmp, [" ".join(WORDS)], vocab_size=10, n_layer=1, n_embd=16, n_head=2, n_positions=16,
                             seed=seed)  # fmt: skip
            model = AutoModelForCausalLM.from_pretrained(tmp).eval()
            tok = AutoTokenizer.from_pretrained(tmp)
        eos, bos = tok.eos_token_id, tok.bos_token_id
        words = [i for i in range(len(tok)) if i != eos]  # the 5 words and <unk>: every id can be drawn
        allowed = words + [eos]
        seqs = outcomes(eos, words, 3)
        temperature = 0.5
        p = exact_p(model, bos, seqs, temperature, allowed)
        g = torch.Generator().manual_seed(100 + seed)
        token_score = torch.randn(len(tok), generator=g) * 1.5
        for d_kind in ("flat", "tokens"):
            def d_logit(tokens: list[int]) -> float:
                return 0.0 if d_kind == "flat" else float(-0.5 + sum(token_score[t] for t in tokens))

            d = torch.sigmoid(torch.tensor([d_logit(list(s)) for s in seqs], dtype=torch.float64))
            q = p * d / (p * d).sum()

            def score(prompt_ids, prompt_mask, completion_ids, completion_mask):
                return torch.tensor([d_logit(c[m.bool()].tolist()) for c, m in zip(completion_ids, completion_mask)])

            for sims in args.simulations:
                for init in ("parent", "zero"):
                    torch.manual_seed(seed)
                    prompts = torch.full((args.draws, 1), bos)
                    ids, mask = mcts_decode(
                        model, prompts, torch.ones_like(prompts), score, max_new_tokens=3, eos_token_id=eos,
                        pad_token_id=tok.pad_token_id, num_simulations=sims, top_k=len(allowed), c_puct=1.0,
                        temperature=temperature, visit_temperature=1.0, unvisited_value=init,
                    )  # fmt: skip
                    counts = Counter(tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask))
                    emp = torch.tensor([counts.get(s, 0) for s in seqs], dtype=torch.float64) / args.draws
                    row = dict(seed=seed, d=d_kind, simulations=sims, init=init,
                               tv_to_q=0.5 * float((emp - q).abs().sum()), tv_p_to_q=0.5 * float((p - q).abs().sum()),
                               tv_to_p=0.5 * float((emp - p).abs().sum()),
                               outside=1.0 - float(emp.sum()))  # fmt: skip
                    floor = torch.bincount(torch.multinomial(q.float(), args.draws, replacement=True, generator=g),
                                           minlength=len(seqs)).double() / args.draws  # fmt: skip
                    row["tv_floor"] = 0.5 * float((floor - q).abs().sum())  # exact q samples, same count
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    # Summary: mean over seeds.
    lines = ["| D | simulations | init | TV(MCTS, q) | TV(MCTS, p) | TV(p, q) | TV(exact q samples, q) |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["d"], r["simulations"], r["init"]) for r in rows})
    for key in keys:
        sel = [r for r in rows if (r["d"], r["simulations"], r["init"]) == key]
        mean = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {mean('tv_to_q'):.3f} | {mean('tv_to_p'):.3f} | "
                     f"{mean('tv_p_to_q'):.3f} | {mean('tv_floor'):.3f} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows, "table": table}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
