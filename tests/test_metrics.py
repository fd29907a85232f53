"""Tests for hfcoop.metrics (offline; references: nltk, sacrebleu, rouge_score, hand values)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import itertools
import math
import random
import time

import evaluate
import pytest
import sacrebleu
import torch
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu
from rouge_score import rouge_scorer

from hfcoop.metrics import (
    CorpusBLEU,
    DistinctN,
    ReferenceNLL,
    Rouge,
    SelfBLEU,
    SentenceBLEU,
    compute_generation_metrics,
    corpus_bleu_score,
    distinct_n,
    load,
    reference_nll,
    rouge_f_scores,
    self_bleu_score,
    sentence_bleu_score,
)

SMOOTH = SmoothingFunction().method1


def nltk_set_bleu(hyps, refs, n):
    """Texygen protocol written with nltk: every hyp vs. the whole reference set."""
    ref_toks = [r.split() for r in refs]
    w = (1 / n,) * n
    return sum(nltk_sentence_bleu(ref_toks, h.split(), w, smoothing_function=SMOOTH) for h in hyps) / len(hyps)


def nltk_self_bleu(sents, n):
    w = (1 / n,) * n
    total = 0.0
    for i, h in enumerate(sents):
        others = [s.split() for j, s in enumerate(sents) if j != i]
        total += nltk_sentence_bleu(others, h.split(), w, smoothing_function=SMOOTH)
    return total / len(sents)


# ----------------------------------------------------------------------------- SentenceBLEU
def test_sentence_bleu_hand_computed():
    refs = ["the cat sat on the mat"]
    # hyp1 "the cat sat": p1 = 3/3, p2 = 2/2, |h|=3 < |r|=6 -> BP = exp(1 - 6/3) = e^-1 -> BLEU-2 = e^-1
    # hyp2 "the dog sat on the mat": p1 = 5/6 (dog misses), p2 = 3/5 (sat on, on the, the mat),
    #   |h| = |r| -> BP = 1 -> BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2)
    got = sentence_bleu_score(["the cat sat", "the dog sat on the mat"], refs, orders=(2,))
    assert got == {"bleu-2": pytest.approx((math.exp(-1) + math.sqrt(0.5)) / 2, abs=1e-12)}


def test_sentence_bleu_smoothing_hand_computed():
    # "a b c" vs "a c b": p1 = 3/3, bigrams {a b, b c} vs {a c, c b}: 0 matches -> (0 + 0.1)/2
    got = sentence_bleu_score(["a b c"], ["a c b"], orders=(2,))["bleu-2"]
    assert got == pytest.approx(math.sqrt(0.05), abs=1e-12)
    # no unigram match at all -> 0 (nltk convention), not the smoothed value
    assert sentence_bleu_score(["x y"], ["a b"], orders=(2,))["bleu-2"] == 0.0


def test_sentence_bleu_closest_ref_length_ties_to_shorter():
    # |h| = 4, refs of length 3 and 5 are equally close -> shorter (3) -> BP = 1, all n-grams match.
    # (Ties to the longer one would give exp(1 - 5/4).)
    got = sentence_bleu_score(["a b c d"], ["a b c", "a b c d e"], orders=(2,))["bleu-2"]
    assert got == pytest.approx(1.0, abs=1e-12)
    assert got == pytest.approx(nltk_set_bleu(["a b c d"], ["a b c", "a b c d e"], 2), abs=1e-12)


@pytest.mark.parametrize(
    "hyps, refs",
    [
        (["the cat is on the mat"], ["the cat is on the mat", "there is a cat on the mat"]),
        (["the the the the the the the"], ["the cat is on the mat", "there is a cat on the mat"]),
        (["a b c d e f g h i j"], ["a b", "c d e"]),  # long hyp, short refs
        (["a"], ["a b c d e f g", "a c"]),  # short hyp, brevity penalty, orders > length
        (["b a c d", "d c b a", "q r s"], ["a b c d", "a b", "x y z w v"]),  # zero bigram/trigram matches
        ([""], ["a b"]),  # empty hypothesis
    ],
)
def test_sentence_bleu_matches_nltk_hand_cases(hyps, refs):
    got = sentence_bleu_score(hyps, refs, orders=(1, 2, 3, 4, 5))
    for n in range(1, 6):
        assert got[f"bleu-{n}"] == pytest.approx(nltk_set_bleu(hyps, refs, n), abs=1e-9), n


def test_sentence_bleu_matches_nltk_random():
    rng = random.Random(0)
    vocab = "a b c d e f".split()

    def sent():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9)))

    for _ in range(15):
        hyps = [sent() for _ in range(5)]
        refs = [sent() for _ in range(6)]
        got = sentence_bleu_score(hyps, refs, max_order=5)
        assert set(got) == {"bleu-2", "bleu-3", "bleu-4", "bleu-5"}
        for n in range(2, 6):
            assert got[f"bleu-{n}"] == pytest.approx(nltk_set_bleu(hyps, refs, n), abs=1e-9)


def test_sentence_bleu_max_samples_is_deterministic_subset():
    hyps = ["a b c", "a c b", "b b b", "c a b d", "d d", "a b c d"]
    refs = ["a b c d", "b c", "d a b"]
    sub = sentence_bleu_score(hyps, refs, orders=(2,), max_samples=3, seed=7)["bleu-2"]
    assert sub == sentence_bleu_score(hyps, refs, orders=(2,), max_samples=3, seed=7)["bleu-2"]
    subsets = {round(nltk_set_bleu(list(c), refs, 2), 12) for c in itertools.combinations(hyps, 3)}
    assert round(sub, 12) in subsets
    full = sentence_bleu_score(hyps, refs, orders=(2,), max_samples=100)["bleu-2"]
    assert full == pytest.approx(nltk_set_bleu(hyps, refs, 2), abs=1e-12)


def test_sentence_bleu_is_fast_on_large_reference_set():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(1000)]

    def sent():
        return " ".join(rng.choice(vocab[: rng.choice([50, 1000])]) for _ in range(rng.randint(10, 25)))

    refs = [sent() for _ in range(10_000)]
    hyps = [sent() for _ in range(1_000)]
    start = time.perf_counter()
    got = sentence_bleu_score(hyps, refs)
    assert time.perf_counter() - start < 10
    assert 0 < got["bleu-5"] < got["bleu-4"] < got["bleu-3"] < got["bleu-2"] <= 1


def test_sentence_bleu_metric_add_batch_pools_reference_set():
    hyps = ["a b c", "a b", "c b a d"]
    refs = ["a c b", "x y", "a b d", "c b"]
    metric = SentenceBLEU()
    metric.add_batch(predictions=hyps[:2], references=refs[:3])  # lengths need not match
    metric.add_batch(predictions=hyps[2:])
    got = metric.compute(references=refs[3:], orders=(2, 4))
    assert got == pytest.approx({"bleu-2": nltk_set_bleu(hyps, refs, 2), "bleu-4": nltk_set_bleu(hyps, refs, 4)})
    # pool is reset after compute
    again = metric.compute(predictions=["a b"], references=["a b"], max_order=3)
    assert again == pytest.approx({"bleu-2": 1.0, "bleu-3": 0.1 ** (1 / 3)})


# ----------------------------------------------------------------------------- SelfBLEU
def test_self_bleu_hand_computed():
    # s0 vs {a b, c d}: perfect -> 1; s1 likewise (duplicate at another index counts); s2 vs {a b, a b}: 0
    assert self_bleu_score(["a b", "a b", "c d"], orders=(2,)) == {"self-bleu-2": pytest.approx(2 / 3)}
    # the sentence itself is excluded: two disjoint sentences -> 0
    assert self_bleu_score(["a b c", "x y z"], orders=(2,))["self-bleu-2"] == 0.0


@pytest.mark.parametrize(
    "sents",
    [
        ["a b c d", "a b c d", "a b", "d c b a e f"],  # duplicates: top-2 counts must be used
        ["a a a b", "a a b", "a b b b b b", "c"],  # repeated n-grams (clipping), length mismatch
        ["a b c", "c b a", "b a c", "a c b"],  # zero higher-order matches (smoothing)
        ["x", "x y z w", "x y", "x y z w v u"],  # closest length of the others
    ],
)
def test_self_bleu_matches_nltk_hand_cases(sents):
    got = self_bleu_score(sents, orders=(1, 2, 3, 4, 5))
    for n in range(1, 6):
        assert got[f"self-bleu-{n}"] == pytest.approx(nltk_self_bleu(sents, n), abs=1e-9), n


def test_self_bleu_matches_nltk_random():
    rng = random.Random(3)
    vocab = "a b c d e".split()
    for _ in range(10):
        sents = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(7)]
        got = SelfBLEU().compute(predictions=sents, max_order=4)
        for n in (2, 3, 4):
            assert got[f"self-bleu-{n}"] == pytest.approx(nltk_self_bleu(sents, n), abs=1e-9)


def test_self_bleu_requires_two_sentences():
    with pytest.raises(ValueError):
        self_bleu_score(["only one"])


# ----------------------------------------------------------------------------- CorpusBLEU
PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi"]
REFS_A = ["the cat sat on a mat", "the quick brown fox jumped", "hello there general kenobi"]
REFS_B = ["a cat was sitting on the mat", "a fast brown fox jumps", "hi there"]


def test_corpus_bleu_matches_sacrebleu_single_and_multi_reference():
    direct = sacrebleu.corpus_bleu(PREDS, [REFS_A])
    got = CorpusBLEU().compute(predictions=PREDS, references=REFS_A)
    assert got["bleu"] == pytest.approx(direct.score / 100, abs=1e-9)
    assert got["precisions"] == pytest.approx([p / 100 for p in direct.precisions])
    assert got["brevity_penalty"] == pytest.approx(direct.bp)

    direct2 = sacrebleu.corpus_bleu(PREDS, [REFS_A, REFS_B])
    got2 = corpus_bleu_score(PREDS, [[a, b] for a, b in zip(REFS_A, REFS_B)])
    assert got2["bleu"] == pytest.approx(direct2.score / 100, abs=1e-9)
    assert got2["bleu"] != pytest.approx(got["bleu"])


def test_corpus_bleu_variable_number_of_references():
    # Repeating a reference never changes BLEU, so padding the short list by repetition is a reference value.
    refs = [[REFS_A[0], REFS_B[0]], [REFS_A[1]], [REFS_A[2], REFS_B[2]]]
    direct = sacrebleu.corpus_bleu(PREDS, [REFS_A, [REFS_B[0], REFS_A[1], REFS_B[2]]])
    assert corpus_bleu_score(PREDS, refs)["bleu"] == pytest.approx(direct.score / 100, abs=1e-9)
    assert CorpusBLEU().compute(predictions=PREDS, references=refs)["bleu"] == pytest.approx(direct.score / 100, abs=1e-9)


def test_corpus_bleu_add_batch_then_compute():
    metric = CorpusBLEU()
    metric.add_batch(predictions=PREDS[:2], references=[[r] for r in REFS_A[:2]])
    metric.add_batch(predictions=PREDS[2:], references=[[r] for r in REFS_A[2:]])
    assert metric.compute()["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS_A]).score / 100, abs=1e-9)


# ----------------------------------------------------------------------------- Rouge / DistinctN
def test_rouge_matches_rouge_score():
    preds = ["the cats are running fast", "police killed the gunman", "nothing in common"]
    refs = ["a cat runs fast", "the gunman was shot dead by police", "totally different words"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {k: sum(scorer.score(r, p)[k].fmeasure for p, r in zip(preds, refs)) / 3 for k in ("rouge1", "rouge2", "rougeL")}
    got = Rouge().compute(predictions=preds, references=refs)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got["rouge1"] > 0  # stemming makes cats/cat and running/runs match
    multi = rouge_f_scores(preds[:1], [[refs[1], refs[0]]])
    assert multi["rouge1"] == pytest.approx(scorer.score(refs[0], preds[0])["rouge1"].fmeasure)


def test_distinct_n_hand_computed():
    # unigrams: a b a | a b -> 5 total, {a, b} -> 2/5; bigrams: (a b)(b a) | (a b) -> 2/3; trigrams: (a b a) -> 1/1
    expected = {"distinct-1": 2 / 5, "distinct-2": 2 / 3, "distinct-3": 1.0}
    assert distinct_n(["a b a", "a b"]) == pytest.approx(expected)
    metric = DistinctN()
    metric.add_batch(predictions=["a b a"])
    metric.add_batch(predictions=["a b"])
    assert metric.compute() == pytest.approx(expected)
    assert distinct_n(["a", ""], orders=(2,)) == {"distinct-2": 0.0}


# ----------------------------------------------------------------------------- combine / load / helper
def test_evaluate_combine_two_metrics():
    combined = evaluate.combine([CorpusBLEU(), Rouge()])
    got = combined.compute(predictions=PREDS, references=REFS_A)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS_A]).score / 100, abs=1e-9)
    assert got["rouge1"] == pytest.approx(rouge_f_scores(PREDS, REFS_A)["rouge1"], abs=1e-12)
    assert {"rouge2", "rougeL", "brevity_penalty"} <= set(got)


def test_load_names_and_error():
    expected = {
        "bleu": CorpusBLEU,
        "sentence_bleu": SentenceBLEU,
        "self_bleu": SelfBLEU,
        "rouge": Rouge,
        "distinct": DistinctN,
        "reference_nll": ReferenceNLL,
    }
    for name, cls in expected.items():
        assert type(load(name)) is cls
    with pytest.raises(ValueError, match="sentence_bleu") as err:
        load("meteor")
    assert all(name in str(err.value) for name in expected)


def test_compute_generation_metrics():
    gens = ["a b c d", "a b c", "b c d e f", "a a b"]
    refs = ["a b c d e", "b c d", "c d e f"]
    uncond = compute_generation_metrics(gens, refs, task="unconditional")
    assert set(uncond) == {f"bleu-{n}" for n in range(2, 6)} | {f"self-bleu-{n}" for n in range(2, 6)} | {
        "distinct-1", "distinct-2", "distinct-3"
    }
    assert uncond["bleu-3"] == pytest.approx(nltk_set_bleu(gens, refs, 3), abs=1e-9)
    assert uncond["self-bleu-4"] == pytest.approx(nltk_self_bleu(gens, 4), abs=1e-9)
    cond = compute_generation_metrics(PREDS, REFS_A, task="conditional")
    assert set(cond) == {"bleu", "rouge1", "rouge2", "rougeL", "distinct-1", "distinct-2", "distinct-3"}
    assert cond["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS_A]).score / 100, abs=1e-9)
    with pytest.raises(ValueError):
        compute_generation_metrics(PREDS, REFS_A, task="translation")


# ----------------------------------------------------------------------------- ReferenceNLL
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang", "question what is this"]


@pytest.fixture(scope="module")
def tiny_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "[UNK]"]))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]"
    )
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tok), n_positions=64)
    return GPT2LMHeadModel(config), tok


def manual_nll(model, ids, first_scored):
    """Summed NLL of ids[first_scored:], each given its prefix, via log_softmax on one unpadded row."""
    model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return -sum(logp[j - 1, ids[j]].item() for j in range(first_scored, len(ids))), len(ids) - first_scored


def test_reference_nll_unconditional_matches_manual(tiny_lm):
    model, tok = tiny_lm
    assert tok.pad_token_id is None  # exercises the eos-as-pad fallback
    vocab = tok.get_vocab()
    eos = vocab["<|endoftext|>"]
    texts = ["the cat sat on the mat", "the bird", "a dog ran in the park the end"]  # "end" -> [UNK]
    sums, counts = [], []
    for text in texts:
        ids = [eos] + [vocab.get(w, vocab["[UNK]"]) for w in text.split()] + [eos]
        s, c = manual_nll(model, ids, 1)
        sums.append(s)
        counts.append(c)
    model.train()
    got = reference_nll(model, tok, texts, batch_size=2)  # 2 batches, padded rows
    assert model.training  # mode restored
    assert got["nll_per_token"] == pytest.approx(sum(sums) / sum(counts), abs=1e-5)
    assert got["nll_per_sequence"] == pytest.approx(sum(sums) / len(texts), abs=1e-5)
    assert got["num_tokens"] == sum(counts)
    assert got["perplexity"] == pytest.approx(math.exp(got["nll_per_token"]), rel=1e-9)

    metric = ReferenceNLL().compute(references=texts, model=model, tokenizer=tok, batch_size=3)
    assert metric["nll_per_token"] == pytest.approx(got["nll_per_token"], abs=1e-5)


def test_reference_nll_prompts_score_completion_only(tiny_lm):
    model, tok = tiny_lm
    vocab = tok.get_vocab()
    eos = vocab["<|endoftext|>"]
    prompts = ["question what is this", "the"]
    texts = ["the cat", "bird sang on the mat"]
    sums, counts = [], []
    for prompt, text in zip(prompts, texts):
        p = [vocab[w] for w in prompt.split()]
        ids = [eos] + p + [vocab[w] for w in text.split()] + [eos]
        s, c = manual_nll(model, ids, 1 + len(p))
        sums.append(s)
        counts.append(c)
    got = reference_nll(model, tok, texts, prompts=prompts, batch_size=16)
    assert got["num_tokens"] == sum(counts) == 3 + 6
    assert got["nll_per_token"] == pytest.approx(sum(sums) / sum(counts), abs=1e-5)
    assert got["nll_per_sequence"] == pytest.approx(sum(sums) / 2, abs=1e-5)

    # add_bos=False: the first text token has no context and is not scored
    no_bos = reference_nll(model, tok, ["the cat sat"], add_bos=False)
    ids = [vocab[w] for w in "the cat sat".split()] + [eos]
    s, c = manual_nll(model, ids, 1)
    assert no_bos["num_tokens"] == c == 3
    assert no_bos["nll_per_sequence"] == pytest.approx(s, abs=1e-5)
