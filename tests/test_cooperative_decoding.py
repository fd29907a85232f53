"""Cooperative decoding: MCTS guided by p·D (toy search problem, batching, EOS), sample-and-resample, and the
public `cooperative_generate` entry point."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from hfcoop import cooperative_generate, mcts_decode, sample_and_resample
from hfcoop.data import pad_left
from hfcoop.sampling import build_generation_config, sample_completions
from hfcoop.tiny import build_tiny_model

WORDS = ["a", "b", "c", "d", "e"]
# The search problem: each prompt has one target completion of 3 tokens among 7^3 = 343 outcomes.
TARGETS = {"a": "c e b", "b c": "d d a", "d": "e a c", "e e b": "b b d", "c": "a d e", "b": "e c c"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random 1-layer GPT-2 over 5 words + EOS/UNK: its samples are close to uniform, so plain sampling
    hits a given 3-token target with probability ~1/343."""
    path = build_tiny_model(str(tmp_path_factory.mktemp("mcts_toy")), [" ".join(WORDS)], vocab_size=10, n_layer=1,
                            n_embd=16, n_head=2, n_positions=16, seed=0)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return path, model, tok


def encode(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def perfect_discriminator(tok):
    """D = 1 on any prefix of the prompt's target completion, 0 elsewhere (a ScoreFn on generator ids)."""
    targets = {tuple(encode(tok, [p])[0]): tuple(encode(tok, [c])[0]) for p, c in TARGETS.items()}

    def score(prompt_ids, prompt_mask, completion_ids, completion_mask):
        out = []
        for p, pm, c, cm in zip(prompt_ids, prompt_mask, completion_ids, completion_mask):
            target = targets[tuple(p[pm.bool()].tolist())]
            done = tuple(c[cm.bool()].tolist())
            out.append(8.0 if target[: len(done)] == done else -8.0)
        return torch.tensor(out)

    return score, targets


def hits(tok, targets, prompt_ids, prompt_mask, ids, mask) -> torch.Tensor:
    return torch.tensor([
        tuple(c[m.bool()].tolist()) == targets[tuple(p[pm.bool()].tolist())]
        for p, pm, c, m in zip(prompt_ids, prompt_mask, ids, mask)
    ], dtype=torch.float)  # fmt: skip


def test_mcts_with_perfect_discriminator_beats_plain_sampling(toy):
    """MCTS (20 simulations per token, priors = the generator's probabilities, value = D of the prefix) finds
    the target of every prompt; plain sampling from the same generator finds it ~0.3% of the time (64 samples
    per prompt, so its measured rate is < 0.05 with overwhelming probability)."""
    _, model, tok = toy
    score, targets = perfect_discriminator(tok)
    prompt_ids, prompt_mask = pad_left(encode(tok, list(TARGETS)), tok.pad_token_id)
    ids, mask = mcts_decode(model, prompt_ids, prompt_mask, score, max_new_tokens=3, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, num_simulations=20, top_k=10, c_puct=1.0)  # fmt: skip
    mcts_rate = hits(tok, targets, prompt_ids, prompt_mask, ids, mask).mean()
    torch.manual_seed(0)
    config = build_generation_config(tok, 3)
    plain_ids, plain_mask = sample_completions(model, prompt_ids, prompt_mask, config, num_return_sequences=64)
    rep_ids, rep_mask = prompt_ids.repeat_interleave(64, 0), prompt_mask.repeat_interleave(64, 0)
    plain_rate = hits(tok, targets, rep_ids, rep_mask, plain_ids, plain_mask).mean()
    assert mcts_rate == 1.0
    assert plain_rate < 0.05


def test_mcts_is_batch_independent_and_honours_eos(toy):
    """Prompts of different lengths batched (left padding, position ids) decode as they do one at a time; a
    discriminator that only likes "EOS now" makes MCTS stop at once, with the EOS kept in the mask."""
    _, model, tok = toy
    score, _ = perfect_discriminator(tok)
    prompts = encode(tok, ["a", "b c", "e e b"])
    kw = dict(max_new_tokens=3, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_simulations=6,
              top_k=3, c_puct=2.0)  # fmt: skip
    batch_ids, batch_mask = mcts_decode(model, *pad_left(prompts, tok.pad_token_id), score, **kw)
    for i, p in enumerate(prompts):
        ids, mask = mcts_decode(model, *pad_left([p], tok.pad_token_id), score, **kw)
        width = ids.shape[1]
        assert batch_ids[i, :width].tolist() == ids[0].tolist() and batch_mask[i, :width].tolist() == mask[0].tolist()

    def likes_eos(prompt_ids, prompt_mask, completion_ids, completion_mask):
        ends = [c[m.bool()].tolist()[:1] == [tok.eos_token_id] for c, m in zip(completion_ids, completion_mask)]
        empty = completion_mask.sum(1) == 0
        return torch.where(torch.tensor(ends) | empty, 8.0, -8.0)

    kw.update(top_k=7, num_simulations=12)
    ids, mask = mcts_decode(model, *pad_left(prompts, tok.pad_token_id), likes_eos, **kw)
    assert ids[:, 0].tolist() == [tok.eos_token_id] * 3 and mask.sum(1).tolist() == [1, 1, 1]


def test_sample_and_resample_with_a_perfect_discriminator(toy):
    """SIR with 64 candidates per prompt keeps a target-prefixed candidate whenever one exists (D ≈ 0 elsewhere);
    a plain sample starts right ~1/7 of the time."""
    _, model, tok = toy
    score, targets = perfect_discriminator(tok)
    prompt_ids, prompt_mask = pad_left(encode(tok, list(TARGETS)), tok.pad_token_id)
    torch.manual_seed(0)
    config = build_generation_config(tok, 1)  # one token: D = 1 iff it is the target's first token
    out = sample_and_resample(model, prompt_ids, prompt_mask, config, score, num_candidates=64, num_samples=2)
    assert out["completion_ids"].shape[0] == 2 * len(TARGETS) and out["candidate_ids"].shape[0] == 64 * len(TARGETS)
    firsts = [targets[tuple(p[m.bool()].tolist())][0] for p, m in zip(prompt_ids, prompt_mask)]
    got = out["completion_ids"][:, 0].view(len(TARGETS), 2)
    assert all((row == f).all() for row, f in zip(got, firsts))
    plain = (out["candidate_ids"][:, 0].view(len(TARGETS), 64) == torch.tensor(firsts)[:, None]).float().mean()
    assert plain < 0.4


@pytest.mark.parametrize("method", ["resample", "mcts"])
def test_cooperative_generate_public_api(method, tiny_lm, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    torch.manual_seed(0)
    disc = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2,
                                                    n_positions=64, num_labels=1, pad_token_id=tok.pad_token_id,
                                                    bos_token_id=tok.bos_token_id,
                                                    eos_token_id=tok.eos_token_id))  # fmt: skip
    disc.save_pretrained(tmp_path / "disc")
    tok.save_pretrained(tmp_path / "disc")
    kw = dict(method=method, max_new_tokens=4, num_candidates=4, num_simulations=4, mcts_top_k=3)
    texts = cooperative_generate(tiny_lm, str(tmp_path / "disc"), ["a man riding", "a dog"], **kw)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    texts = cooperative_generate(tiny_lm, disc, None, num_samples=3, **kw)  # unconditional, model object
    assert len(texts) == 3
    with pytest.raises(ValueError, match="method"):
        cooperative_generate(tiny_lm, disc, ["a"], method="beam")


# ---------------------------------------------------------------- the generator's prior inside MCTS
def first_token_probs(model, tok, temperature):
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([[tok.bos_token_id]])).logits[0, -1] / temperature, -1)


def test_mcts_with_a_flat_discriminator_follows_the_generator(toy):
    """D ≡ 1/2 carries no information, so q ∝ p·D = p: MCTS sampling ∝ visits must reproduce the generator's
    next-token law. Unvisited children start at their parent's value; with Q = 0 instead (the old choice) every
    visited child outranked every unvisited one and the search piled its visits on the first children (measured
    TV 0.63 vs 0.075 here, sampling floor ~0.05)."""
    _, model, tok = toy
    temperature = 0.5  # a non-flat prior (max/min probability ~2)
    p = first_token_probs(model, tok, temperature)
    flat = lambda prompt_ids, prompt_mask, ids, mask: torch.zeros(ids.shape[0])  # noqa: E731
    torch.manual_seed(0)
    prompts = torch.full((400, 1), tok.bos_token_id)
    ids, _ = mcts_decode(model, prompts, torch.ones_like(prompts), flat, max_new_tokens=1,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_simulations=16,
                         top_k=len(tok), temperature=temperature, visit_temperature=1.0)  # fmt: skip
    empirical = torch.bincount(ids[:, 0], minlength=len(tok)).float() / ids.shape[0]
    assert 0.5 * float((empirical - p).abs().sum()) < 0.15, (empirical, p)


def test_mcts_honours_top_k_and_top_p(toy, tmp_path):
    """top_k / top_p filter the children like they filter samples: a D that loves the generator's least likely
    token cannot pull MCTS outside the generator's top tokens."""
    _, model, tok = toy
    p = first_token_probs(model, tok, 1.0)
    worst = int(p.argmin())
    loves_worst = lambda prompt_ids, prompt_mask, ids, mask: torch.where(ids[:, :1].eq(worst).any(1), 8.0, -8.0)  # noqa: E731
    prompts = torch.full((4, 1), tok.bos_token_id)
    kw = dict(max_new_tokens=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_simulations=12,
              top_k=len(tok))  # fmt: skip
    ids, _ = mcts_decode(model, prompts, torch.ones_like(prompts), loves_worst, **kw)
    assert ids[:, 0].eq(worst).all()  # unfiltered, D wins
    top2 = set(p.topk(2).indices.tolist())
    ids, _ = mcts_decode(model, prompts, torch.ones_like(prompts), loves_worst, filter_top_k=2, **kw)
    assert set(ids[:, 0].tolist()) <= top2
    nucleus = {int(p.argmax())}  # top_p below the largest probability keeps the top token alone
    ids, _ = mcts_decode(model, prompts, torch.ones_like(prompts), loves_worst, top_p=float(p.max()) / 2, **kw)
    assert set(ids[:, 0].tolist()) == nucleus


def test_cooperative_generate_and_gcn_pass_top_k_top_p_to_mcts(toy, tmp_path, monkeypatch):
    import hfcoop.cooperative_decoding as decoding
    import hfcoop.trainers.gcn as gcn_module
    from datasets import Dataset
    from hfcoop import GCNConfig, GCNTrainer

    path, model, tok = toy
    seen = []
    real = decoding.mcts_decode

    def spy(*a, **k):
        seen.append(k)
        return real(*a, **k)

    monkeypatch.setattr(decoding, "mcts_decode", spy)
    monkeypatch.setattr(gcn_module, "mcts_decode", spy)
    flat = lambda prompt_ids, prompt_mask, ids, mask: torch.zeros(ids.shape[0])  # noqa: E731
    cooperative_generate(model, flat, ["a"], tokenizer=tok, method="mcts", max_new_tokens=2, top_k=3, top_p=0.9,
                         num_simulations=4, mcts_top_k=3)  # fmt: skip
    assert (seen[-1]["filter_top_k"], seen[-1]["top_p"]) == (3, 0.9)
    data = Dataset.from_dict({"prompt": ["a", "b"] * 4, "completion": ["c e", "d"] * 4})
    # 2 steps: D's, then the generator's, whose proposals come from MCTS (the papers' order)
    args = GCNConfig(output_dir=str(tmp_path / "gcn"), max_steps=2, per_device_train_batch_size=2, sampler="mcts",
                     num_simulations=4, mcts_top_k=3, max_completion_length=2, top_k=4, top_p=0.8,
                     report_to="none", save_strategy="no", disable_tqdm=True)  # fmt: skip
    GCNTrainer(path, train_dataset=data, args=args).train()
    assert (seen[-1]["filter_top_k"], seen[-1]["top_p"]) == (4, 0.8)


def test_mcts_follows_d_not_the_prior_and_refuses_too_few_simulations(toy):
    """D prefers one token that the prior ranks third: with top_k + 1 simulations (each child valued once) the pick
    moves from the prior's favourite to D's. Fewer simulations ignore D (1: uniform among the top-k, 2: greedy on
    the prior), so they are refused with the reason."""
    _, model, tok = toy
    prompt_ids, prompt_mask = pad_left(encode(tok, ["a"]), tok.pad_token_id)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=prompt_ids, attention_mask=prompt_mask).logits[0, -1], -1)
    ranked = probs.argsort(descending=True).tolist()
    favourite, preferred = ranked[0], ranked[2]

    def prefers(prompt_ids, prompt_mask, completion_ids, completion_mask):
        first = [c[m.bool()].tolist()[:1] == [preferred] for c, m in zip(completion_ids, completion_mask)]
        return torch.where(torch.tensor(first), 8.0, -8.0)

    flat = lambda prompt_ids, prompt_mask, ids, mask: torch.zeros(ids.shape[0])  # noqa: E731
    kw = dict(max_new_tokens=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, top_k=3, c_puct=1.0)
    for sims in (4, 12):
        ids, _ = mcts_decode(model, prompt_ids, prompt_mask, prefers, num_simulations=sims, **kw)
        assert ids[0, 0].item() == preferred != favourite
        ids, _ = mcts_decode(model, prompt_ids, prompt_mask, flat, num_simulations=sims, **kw)
        assert ids[0, 0].item() == favourite  # an indifferent D leaves the prior's choice
    for sims in (1, 2, 3):
        with pytest.raises(ValueError, match="is not a search.*num_simulations >= 4"):
            mcts_decode(model, prompt_ids, prompt_mask, prefers, num_simulations=sims, **kw)


def test_gcn_config_refuses_an_mcts_that_does_not_search(tmp_path):
    from hfcoop import GCNConfig

    with pytest.raises(ValueError, match="num_simulations=4 and mcts_top_k=4 is not a search"):
        GCNConfig(output_dir=str(tmp_path), sampler="mcts", num_simulations=4, mcts_top_k=4)
    GCNConfig(output_dir=str(tmp_path), sampler="mcts")  # the defaults search
    GCNConfig(output_dir=str(tmp_path), sampler="model", num_simulations=1)  # not used without MCTS
