"""An exactly enumerable toy: 4 word tokens + EOS, completions of at most 3 tokens.

Every outcome (a token string that ends at its first EOS, or runs 3 tokens without one) can be listed, so
sequence probabilities of a model, JSD and total variation are exact, not estimated.
"""

from __future__ import annotations

import itertools
import math
import random

import torch
from datasets import Dataset

from hfcoop.tiny import build_tiny_model

P_DATA = {"a b": 0.4, "b a": 0.3, "c c": 0.2, "a": 0.1}
MAX_LEN = 3


def build_toy_model(path: str, seed: int = 0) -> str:
    return build_tiny_model(path, list(P_DATA), vocab_size=10, n_layer=1, n_embd=32, n_head=2, n_positions=8, seed=seed)


def toy_dataset(n: int = 1024, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    texts = [t for t, p in P_DATA.items() for _ in range(round(p * n))]
    rng.shuffle(texts)
    return Dataset.from_dict({"text": texts})


def outcomes(tokenizer) -> list[tuple[int, ...]]:
    eos = tokenizer.eos_token_id
    words = [i for i in range(len(tokenizer)) if i != eos]
    out = []
    for length in range(MAX_LEN):
        out += [(*w, eos) for w in itertools.product(words, repeat=length)]
    out += list(itertools.product(words, repeat=MAX_LEN))
    return out


def data_distribution(tokenizer) -> torch.Tensor:
    """p_data over :func:`outcomes` (exact)."""
    index = {o: i for i, o in enumerate(outcomes(tokenizer))}
    p = torch.zeros(len(index), dtype=torch.float64)
    for text, prob in P_DATA.items():
        ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)
        p[index[ids]] += prob
    return p


@torch.no_grad()
def model_distribution(model, tokenizer) -> torch.Tensor:
    """The model's exact probability of every outcome (they sum to 1)."""
    seqs = outcomes(tokenizer)
    bos = tokenizer.bos_token_id
    ids = torch.tensor([[bos, *s, *([tokenizer.pad_token_id] * (MAX_LEN - len(s)))] for s in seqs])
    mask = torch.tensor([[1] * (len(s) + 1) + [0] * (MAX_LEN - len(s)) for s in seqs])
    model.eval()
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.double(), -1)
    token_lp = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
    return token_lp.sum(-1).exp()


def jsd(p: torch.Tensor, q: torch.Tensor) -> float:
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * (a[nz] / b[nz]).log()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


LN2 = math.log(2)
