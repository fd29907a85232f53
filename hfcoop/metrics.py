"""Offline text-generation metrics for hfcoop.

Every metric is a local :class:`evaluate.Metric` subclass (no Hub download), backed
by a pure function that can also be called directly.  Protocols:

* ``CorpusBLEU`` / :func:`corpus_bleu_score` -- corpus-level BLEU from
  ``sacrebleu.corpus_bleu`` (default 13a tokenisation, 4-gram, no smoothing beyond
  sacrebleu's default ``exp``).  Each prediction may have one reference string or a
  list of references (lists may differ in length; missing slots are passed to
  sacrebleu as ``None``).  Score and precisions in 0..1 (sacrebleu's 0..100 divided by
  100, so that every score in a report shares one scale).
* ``SentenceBLEU`` / :func:`sentence_bleu_score` -- the CoT / psi-MLE / Texygen
  protocol for unconditional generation: every generated sentence is scored with
  sentence-level BLEU-n against the WHOLE reference set (all test sentences are its
  references), uniform weights 1/n over 1..n-grams, Chen & Cherry smoothing
  method 1 (a zero match count becomes epsilon=0.1, i.e. nltk's
  ``SmoothingFunction().method1``), brevity penalty with the closest reference
  length (ties -> shorter, nltk's ``closest_ref_length``), and a score of 0 when no
  unigram matches (as nltk).  Tokens are ``str.split()``.  Scores are averaged over
  the generated sentences; values in 0..1.  This equals averaging
  ``nltk.translate.bleu_score.sentence_bleu(refs, hyp, (1/n,)*n,
  smoothing_function=SmoothingFunction().method1)``, but the per-n-gram maximum
  counts over the reference set are precomputed once, so scoring is
  O(|hypothesis|) per sentence instead of O(|reference set|).
* ``SelfBLEU`` / :func:`self_bleu_score` -- Texygen Self-BLEU: every generated
  sentence is scored as above against all OTHER generated sentences (excluded by
  index, so duplicates elsewhere in the set still count), averaged.  The top-2
  counts per n-gram (and the multiset of lengths) let the sentence itself be
  excluded in O(1).  Lower is more diverse.
* ``Rouge`` / :func:`rouge_f_scores` -- ROUGE-1/2/L F-measure from
  ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"],
  use_stemmer=True)``, averaged over (prediction, reference) pairs; with several
  references per prediction ``score_multi`` (best reference) is used.  0..1.
* ``DistinctN`` / :func:`distinct_n` -- distinct-n = unique n-grams / total n-grams,
  pooled over all predictions (n-grams never cross sentence boundaries),
  whitespace tokens; 0.0 when there are no n-grams.
* ``ReferenceNLL`` / :func:`reference_nll` -- negative log-likelihood (nats) of
  reference texts under a causal LM.  Unconditional: ``[bos] + text + [eos]``
  (bos falls back to eos), every token after bos is scored.  Conditional:
  ``[bos] + prompt + completion + [eos]`` with prompt and completion tokenised
  separately and only completion (+ eos) tokens scored.  Reports the
  token-weighted mean (``nll_per_token``), the mean over sequences of the summed
  token NLL (``nll_per_sequence``), ``perplexity`` = exp(nll_per_token) and
  ``num_tokens``.

:func:`compute_generation_metrics` bundles the task-specific sets and :func:`load`
maps short names to the Metric classes.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import evaluate
import sacrebleu
from rouge_score import rouge_scorer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CorpusBLEU",
    "SentenceBLEU",
    "SelfBLEU",
    "Rouge",
    "DistinctN",
    "ReferenceNLL",
    "corpus_bleu_score",
    "sentence_bleu_score",
    "self_bleu_score",
    "rouge_f_scores",
    "distinct_n",
    "reference_nll",
    "compute_generation_metrics",
    "load",
    "DEFAULT_BLEU_ORDERS",
    "SMOOTHING_EPSILON",
]

NGram = tuple[str, ...]
DEFAULT_BLEU_ORDERS: tuple[int, ...] = (2, 3, 4, 5)
SMOOTHING_EPSILON = 0.1  # nltk SmoothingFunction(epsilon=0.1).method1


# --------------------------------------------------------------------------- helpers
def _tokenize(text: str) -> list[str]:
    """Whitespace tokenisation used by the BLEU-n and distinct-n protocols."""
    return text.split()


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[NGram]:
    """All contiguous n-grams of ``tokens`` (empty if ``len(tokens) < n``)."""
    return zip(*(tokens[i:] for i in range(n)))


def _resolve_orders(orders: Sequence[int] | None, max_order: int | None) -> tuple[int, ...]:
    """``max_order`` wins and yields 2..n (or (1,) for n == 1); else ``orders``."""
    if max_order is not None:
        if max_order < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        resolved = tuple(range(min(2, max_order), max_order + 1))
    else:
        resolved = tuple(orders) if orders is not None else DEFAULT_BLEU_ORDERS
    if not resolved or any(int(n) != n or n < 1 for n in resolved):
        raise ValueError(f"BLEU orders must be positive integers, got {resolved!r}")
    return tuple(int(n) for n in resolved)


def _subsample(n_items: int, max_samples: int | None, seed: int) -> list[int]:
    """Deterministic subset of indices (sorted) of size ``max_samples``."""
    if max_samples is None or max_samples >= n_items:
        return list(range(n_items))
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    return sorted(random.Random(seed).sample(range(n_items), max_samples))


def _closest_length(sorted_lengths: Sequence[int], hyp_len: int, available: Callable[[int], bool]) -> int:
    """Closest available reference length to ``hyp_len``; ties go to the shorter one."""
    idx = bisect_left(sorted_lengths, hyp_len)
    candidates: list[int] = []
    j = idx - 1  # nearest shorter usable length
    while j >= 0 and not available(sorted_lengths[j]):
        j -= 1
    if j >= 0:
        candidates.append(sorted_lengths[j])
    j = idx  # nearest usable length >= hyp_len
    while j < len(sorted_lengths) and not available(sorted_lengths[j]):
        j += 1
    if j < len(sorted_lengths):
        candidates.append(sorted_lengths[j])
    if not candidates:
        raise ValueError("empty reference set")
    return min(candidates, key=lambda length: (abs(length - hyp_len), length))


def _smoothed_bleu(
    matches: Sequence[int], totals: Sequence[int], hyp_len: int, ref_len: int, order: int
) -> float:
    """nltk-equivalent sentence BLEU-``order`` from clipped match counts.

    ``matches[k]``/``totals[k]`` are the clipped matches and max(1, #hyp n-grams) of
    order k+1.  Uniform weights, smoothing method 1, closest-ref brevity penalty.
    """
    if matches[0] == 0:  # nltk returns 0 when nothing matches at unigram level
        return 0.0
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    weight = 1 / order
    log_p = (
        weight * math.log((m if m > 0 else SMOOTHING_EPSILON) / t)
        for m, t in zip(matches[:order], totals[:order])
    )
    return bp * math.exp(math.fsum(log_p))


def _clipped_counts(
    tokens: Sequence[str], max_order: int, max_ref_count: Callable[[int, NGram], int]
) -> tuple[list[int], list[int]]:
    """Clipped n-gram matches and denominators (min 1) for orders 1..max_order."""
    matches: list[int] = []
    totals: list[int] = []
    for n in range(1, max_order + 1):
        counts = Counter(_ngrams(tokens, n))
        matches.append(sum(min(c, max_ref_count(n, g)) for g, c in counts.items()))
        totals.append(max(1, len(tokens) - n + 1))
    return matches, totals


# --------------------------------------------------------------------------- pure metrics
def corpus_bleu_score(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
) -> dict[str, Any]:
    """Corpus BLEU via ``sacrebleu.corpus_bleu``.

    ``references[i]`` is one reference string or a list of reference strings for
    ``predictions[i]``.  Returns ``bleu`` (0..1: sacrebleu's score / 100), ``precisions`` (1..4-gram, 0..1),
    ``brevity_penalty``, ``sys_len`` and ``ref_len``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("every prediction needs at least one reference")
    n_streams = max((len(r) for r in refs), default=1)
    # sacrebleu wants one stream per reference slot; shorter lists are padded with None.
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_streams)]
    result = sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize, lowercase=lowercase)
    return {
        "bleu": float(result.score) / 100,
        "precisions": [float(p) / 100 for p in result.precisions],
        "brevity_penalty": float(result.bp),
        "sys_len": int(result.sys_len),
        "ref_len": int(result.ref_len),
    }


def sentence_bleu_score(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    orders: Sequence[int] | None = DEFAULT_BLEU_ORDERS,
    max_order: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean sentence BLEU-n of each prediction against the whole reference set.

    Texygen/CoT protocol (see module docstring); identical to averaging nltk's
    ``sentence_bleu(all_refs, hyp, (1/n,)*n, smoothing_function=method1)``.
    ``max_order=n`` reports orders 2..n, otherwise ``orders``.  ``max_samples``
    scores a deterministic (``seed``) subset of predictions.  Keys ``bleu-n``,
    values in 0..1.
    """
    wanted = _resolve_orders(orders, max_order)
    if not references:
        raise ValueError("sentence BLEU needs a non-empty reference set")
    if not predictions:
        raise ValueError("no predictions to score")
    top = max(wanted)
    ref_tokens = [_tokenize(r) for r in references]
    # Max count of every n-gram over the reference set == nltk's per-hypothesis clipping.
    max_counts: list[dict[NGram, int]] = [{} for _ in range(top)]
    for toks in ref_tokens:
        for n in range(1, top + 1):
            table = max_counts[n - 1]
            for gram, count in Counter(_ngrams(toks, n)).items():
                if count > table.get(gram, 0):
                    table[gram] = count
    lengths = sorted({len(t) for t in ref_tokens})

    def lookup(n: int, gram: NGram) -> int:
        return max_counts[n - 1].get(gram, 0)

    sums = dict.fromkeys(wanted, 0.0)
    chosen = _subsample(len(predictions), max_samples, seed)
    for i in chosen:
        hyp = _tokenize(predictions[i])
        matches, totals = _clipped_counts(hyp, top, lookup)
        ref_len = _closest_length(lengths, len(hyp), lambda _length: True)
        for n in wanted:
            sums[n] += _smoothed_bleu(matches, totals, len(hyp), ref_len, n)
    return {f"bleu-{n}": sums[n] / len(chosen) for n in wanted}


def _ngram_owners(
    tokens: list[list[str]], top: int
) -> tuple[list[dict[NGram, list[int]]], list[list[Counter[NGram]]]]:
    """Per order n: for each n-gram [highest count in one sentence, that sentence's index, second highest count
    (in another sentence)], and each sentence's n-gram counts; Self-BLEU clips a sentence's counts against all the
    others' without rebuilding the reference table per sentence."""
    best: list[dict[NGram, list[int]]] = [{} for _ in range(top)]
    per_sentence: list[list[Counter[NGram]]] = []
    for idx, toks in enumerate(tokens):
        sentence_counts = []
        for n in range(1, top + 1):
            counts = Counter(_ngrams(toks, n))
            sentence_counts.append(counts)
            table = best[n - 1]
            for gram, c in counts.items():
                entry = table.get(gram)
                if entry is None:
                    table[gram] = [c, idx, 0]
                elif c > entry[0]:
                    entry[2], entry[0], entry[1] = entry[0], c, idx
                elif c > entry[2]:
                    entry[2] = c
        per_sentence.append(sentence_counts)
    return best, per_sentence


def self_bleu_score(
    predictions: Sequence[str],
    *,
    orders: Sequence[int] | None = DEFAULT_BLEU_ORDERS,
    max_order: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Texygen Self-BLEU: each prediction vs. all OTHER predictions, averaged.

    Same sentence-BLEU definition as :func:`sentence_bleu_score`; the excluded
    sentence is removed by index.  ``max_samples`` subsamples the scored
    sentences (their references remain all other predictions).  Keys
    ``self-bleu-n``, values in 0..1.
    """
    wanted = _resolve_orders(orders, max_order)
    if len(predictions) < 2:
        raise ValueError("Self-BLEU needs at least two predictions")
    top = max(wanted)
    tokens = [_tokenize(p) for p in predictions]
    best, per_sentence = _ngram_owners(tokens, top)
    length_counts = Counter(len(t) for t in tokens)
    lengths = sorted(length_counts)

    sums = dict.fromkeys(wanted, 0.0)
    chosen = _subsample(len(predictions), max_samples, seed)
    for i in chosen:
        hyp_len = len(tokens[i])
        matches: list[int] = []
        totals: list[int] = []
        for n in range(1, top + 1):
            table = best[n - 1]
            m = 0
            for gram, c in per_sentence[i][n - 1].items():
                top1, owner, top2 = table[gram]
                m += min(c, top2 if owner == i else top1)
            matches.append(m)
            totals.append(max(1, hyp_len - n + 1))
        ref_len = _closest_length(
            lengths, hyp_len, lambda length: length_counts[length] - (length == hyp_len) > 0
        )
        for n in wanted:
            sums[n] += _smoothed_bleu(matches, totals, hyp_len, ref_len, n)
    return {f"self-bleu-{n}": sums[n] / len(chosen) for n in wanted}


def rouge_f_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    use_stemmer: bool = True,
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over aligned pairs (rouge_score, Porter stemmer).

    A list of references uses ``RougeScorer.score_multi`` (best reference per type).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    sums = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references):
        if isinstance(ref, str):
            scores = scorer.score(ref, pred)
        else:
            scores = scorer.score_multi(list(ref), pred)
        for t in types:
            sums[t] += scores[t].fmeasure
    return {t: sums[t] / len(predictions) for t in types}


def distinct_n(predictions: Sequence[str], orders: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
    """Distinct-n: unique / total whitespace n-grams pooled over all predictions."""
    result: dict[str, float] = {}
    for n in orders:
        pooled: Counter[NGram] = Counter()
        for text in predictions:
            pooled.update(_ngrams(_tokenize(text), n))
        total = sum(pooled.values())
        result[f"distinct-{n}"] = len(pooled) / total if total else 0.0
    return result


def reference_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    add_bos: bool = True,
    append_eos: bool = True,
    max_prompt_length: int | None = None,
) -> dict[str, float]:
    """NLL (nats) of ``texts`` under a causal LM, optionally conditioned on ``prompts``.

    Prompts keep their last ``max_prompt_length`` tokens; a sequence longer than the model's
    position limit (``modeling.max_positions``) loses its oldest prompt tokens, then the end of its text.

    Sequence = ``[bos]? + prompt + text + [eos]?`` (bos falls back to eos; prompt and
    text tokenised separately without special tokens).  Scored targets: every
    text/eos token that has a left context (the first token is unscored when
    ``add_bos=False`` and the prompt is empty).  Batches are right-padded with the
    pad token (eos, then 0, if the tokenizer has none) and masked.
    Returns ``nll_per_token`` (token-weighted mean), ``nll_per_sequence`` (mean of
    per-sequence sums), ``perplexity`` and ``num_tokens``.
    """
    if not texts:
        raise ValueError("no texts to score")
    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts but {len(texts)} texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bos_id, eos_id, pad_id = _special_ids(tokenizer, add_bos, append_eos)
    sequences = _scored_sequences(model, tokenizer, texts, prompts, bos_id if add_bos else None,
                                  eos_id if append_eos else None, max_prompt_length)  # fmt: skip
    total_nll, total_tokens = _summed_nll(model, sequences, batch_size, pad_id)
    nll_per_token = total_nll / total_tokens if total_tokens else float("nan")
    return {
        "nll_per_token": nll_per_token,
        "nll_per_sequence": total_nll / len(sequences),
        "perplexity": math.exp(nll_per_token) if total_tokens else float("nan"),
        "num_tokens": float(total_tokens),
    }


def _special_ids(tokenizer: PreTrainedTokenizerBase, add_bos: bool, append_eos: bool) -> tuple[Any, Any, int]:
    """(bos, eos, pad) ids for :func:`reference_nll`: bos falls back to eos, pad to eos then 0 (masked out)."""
    eos_id = tokenizer.eos_token_id
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id
    if add_bos and bos_id is None:
        raise ValueError("add_bos=True but the tokenizer has neither a bos nor an eos token")
    if append_eos and eos_id is None:
        raise ValueError("append_eos=True but the tokenizer has no eos token")
    if tokenizer.pad_token_id is not None:
        return bos_id, eos_id, tokenizer.pad_token_id
    return bos_id, eos_id, eos_id if eos_id is not None else 0  # value irrelevant: masked out


def _scored_sequences(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    prompts: Sequence[str] | None,
    bos_id: int | None,
    eos_id: int | None,
    max_prompt_length: int | None,
) -> list[tuple[list[int], int]]:
    """``(ids, index of the first scored token)`` per text: ``[bos]? + prompt + text + [eos]?``, cut to fit the
    model's positions (the prompt's oldest tokens first, then the text's tail)."""
    from .modeling import max_positions  # here, so importing metrics loads no model code

    text_ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if prompts is not None:
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = [[] for _ in texts]
    sequences: list[tuple[list[int], int]] = []
    room = (max_positions(model) or 10**9) - int(bos_id is not None) - int(eos_id is not None)
    for p_ids, t_ids in zip(prompt_ids, text_ids):
        if max_prompt_length is not None:
            p_ids = p_ids[-max_prompt_length:] if max_prompt_length > 0 else []
        t_ids = t_ids[: max(room - 1, 1)]
        p_ids = p_ids[max(0, len(p_ids) - (room - len(t_ids))) :]
        prefix = ([bos_id] if bos_id is not None else []) + list(p_ids)
        ids = prefix + list(t_ids) + ([eos_id] if eos_id is not None else [])
        sequences.append((ids, max(1, len(prefix))))
    return sequences


def _summed_nll(
    model: PreTrainedModel, sequences: list[tuple[list[int], int]], batch_size: int, pad_id: int
) -> tuple[float, int]:
    """(summed NLL of the scored tokens, their count), in eval mode, in right-padded batches of similar length."""
    import torch

    from .batching import pad_right  # here, so importing metrics loads no torch code

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k][0]))  # less padding
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = [sequences[k] for k in order[start : start + batch_size]]
                width = max(len(ids) for ids, _ in batch)
                if width < 2:
                    continue  # nothing can be predicted
                input_ids, attention = pad_right([ids for ids, _ in batch], pad_id)
                first = torch.tensor([first for _, first in batch]).unsqueeze(1)
                scored = attention.bool() & (torch.arange(width).unsqueeze(0) >= first)
                input_ids, attention, scored = input_ids.to(device), attention.to(device), scored.to(device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits
                log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                token_nll = -log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                mask = scored[:, 1:]
                total_nll += float(token_nll.masked_fill(~mask, 0.0).double().sum())
                total_tokens += int(mask.sum())
    finally:
        model.train(was_training)
    return total_nll, total_tokens


# --------------------------------------------------------------------------- evaluate.Metric wrappers
_STRING = datasets.Value("string")
_PRED_ONLY = datasets.Features({"predictions": _STRING})
_ALIGNED = [
    datasets.Features({"predictions": _STRING, "references": datasets.Sequence(_STRING)}),
    datasets.Features({"predictions": _STRING, "references": _STRING}),
]
_BLEU_CITATION = """@inproceedings{papineni2002bleu,
  title={Bleu: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL}, year={2002}}"""
_TEXYGEN_CITATION = """@inproceedings{zhu2018texygen,
  title={Texygen: A Benchmarking Platform for Text Generation Models},
  author={Zhu, Yaoming and Lu, Sidi and Zheng, Lei and Guo, Jiaxian and Zhang, Weinan and Wang, Jun and Yu, Yong},
  booktitle={SIGIR}, year={2018}}
@inproceedings{chen2014smoothing,
  title={A Systematic Comparison of Smoothing Techniques for Sentence-Level BLEU},
  author={Chen, Boxing and Cherry, Colin}, booktitle={WMT}, year={2014}}"""


class CorpusBLEU(evaluate.Metric):
    """Corpus BLEU (sacrebleu); references: one string or a list per prediction."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Corpus-level BLEU computed with sacrebleu.corpus_bleu (score 0..1: sacrebleu's / 100).",
            citation=_BLEU_CITATION
            + "\n@inproceedings{post2018call, title={A Call for Clarity in Reporting BLEU Scores},"
            " author={Post, Matt}, booktitle={WMT}, year={2018}}",
            inputs_description="predictions: list[str]; references: list[str] or list[list[str]]; "
            "kwargs: tokenize='13a', lowercase=False.",
            features=_ALIGNED,
        )

    def _compute(
        self, predictions: list[str], references: list, tokenize: str = "13a", lowercase: bool = False
    ) -> dict[str, Any]:
        return corpus_bleu_score(predictions, references, tokenize=tokenize, lowercase=lowercase)


class _ReferenceSetMetric(evaluate.Metric):
    """Metric whose references are an unaligned pool (any length), not per-prediction.

    Only predictions go through evaluate's arrow storage; references passed to
    ``add_batch``/``compute`` are pooled in memory (single-process) and handed to
    ``_compute`` as ``reference_set``.
    """

    def _pool(self) -> list[str]:
        return self.__dict__.setdefault("_hfcoop_reference_pool", [])

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:  # type: ignore[override]
        """Store a batch of predictions; ``references`` (any length) join the reference pool."""
        if references is not None:
            self._pool().extend(references)
        super().add_batch(predictions=predictions, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs) -> dict[str, Any] | None:  # type: ignore[override]
        """Score all stored predictions against the pooled reference set, then reset the pool."""
        # evaluate appends inputs_description to this docstring on every instantiation.
        pool = self._pool()
        if references is not None:
            pool.extend(references)
        reference_set = list(pool)
        pool.clear()
        return super().compute(predictions=predictions, reference_set=reference_set, **kwargs)


class SentenceBLEU(_ReferenceSetMetric):
    """Texygen/CoT BLEU-n of each prediction vs. the whole reference set (0..1)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean smoothed (Chen & Cherry method 1) sentence BLEU-n of each generated "
            "sentence against the whole reference set, as in Texygen/CoT (values 0..1).",
            citation=_TEXYGEN_CITATION,
            inputs_description="predictions: list[str]; references: list[str] reference SET "
            "(not aligned, any length); kwargs: orders=(2,3,4,5), max_order=None, "
            "max_samples=None, seed=0.",
            features=_PRED_ONLY,
        )

    def _compute(
        self,
        predictions: list[str],
        reference_set: list[str],
        orders: Sequence[int] | None = DEFAULT_BLEU_ORDERS,
        max_order: int | None = None,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        return sentence_bleu_score(
            predictions, reference_set, orders=orders, max_order=max_order, max_samples=max_samples, seed=seed
        )


class SelfBLEU(evaluate.Metric):
    """Texygen Self-BLEU-n of the predictions (0..1; lower = more diverse)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Self-BLEU: mean smoothed sentence BLEU-n of each generated sentence "
            "against all other generated sentences (Texygen).",
            citation=_TEXYGEN_CITATION,
            inputs_description="predictions: list[str]; references are ignored; kwargs: "
            "orders=(2,3,4,5), max_order=None, max_samples=None, seed=0.",
            features=_PRED_ONLY,
        )

    def _compute(
        self,
        predictions: list[str],
        orders: Sequence[int] | None = DEFAULT_BLEU_ORDERS,
        max_order: int | None = None,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        return self_bleu_score(predictions, orders=orders, max_order=max_order, max_samples=max_samples, seed=seed)


class Rouge(evaluate.Metric):
    """Mean ROUGE-1/2/L F-measure (rouge_score, stemmed)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="ROUGE-1/2/L F-measure via rouge_score with the Porter stemmer, averaged over pairs.",
            citation="""@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}""",
            inputs_description="predictions: list[str]; references: list[str] or list[list[str]] (aligned).",
            features=_ALIGNED,
        )

    def _compute(self, predictions: list[str], references: list, use_stemmer: bool = True) -> dict[str, float]:
        return rouge_f_scores(predictions, references, use_stemmer=use_stemmer)


class DistinctN(evaluate.Metric):
    """Distinct-n of the predictions (references ignored)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Distinct-n: unique n-grams / total n-grams over all predictions (whitespace tokens).",
            citation="""@inproceedings{li2016diversity,
  title={A Diversity-Promoting Objective Function for Neural Conversation Models},
  author={Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle={NAACL}, year={2016}}""",
            inputs_description="predictions: list[str]; kwargs: orders=(1,2,3).",
            features=_PRED_ONLY,
        )

    def _compute(self, predictions: list[str], orders: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
        return distinct_n(predictions, orders)


class ReferenceNLL(evaluate.Metric):
    """NLL of reference texts under a causal LM.

    ``compute(references=texts, model=model, tokenizer=tokenizer, prompts=None,
    batch_size=16, add_bos=True, append_eos=True)``; predictions are ignored.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Negative log-likelihood (nats) of reference texts under a causal language model: "
            "per token (token-weighted) and per sequence (mean of summed NLL).",
            citation="",
            inputs_description="references: list[str]; kwargs: model, tokenizer, prompts=None, "
            "batch_size=16, add_bos=True, append_eos=True.",
            features=datasets.Features({"references": _STRING}),
        )

    def _compute(
        self,
        references: list[str],
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        prompts: Sequence[str] | None = None,
        batch_size: int = 16,
        add_bos: bool = True,
        append_eos: bool = True,
    ) -> dict[str, float]:
        if model is None or tokenizer is None:
            raise ValueError("ReferenceNLL.compute needs model=... and tokenizer=...")
        return reference_nll(
            model, tokenizer, references, prompts=prompts, batch_size=batch_size,
            add_bos=add_bos, append_eos=append_eos,
        )


# --------------------------------------------------------------------------- entry points
_METRICS: dict[str, type[evaluate.Metric]] = {
    "bleu": CorpusBLEU,
    "sentence_bleu": SentenceBLEU,
    "self_bleu": SelfBLEU,
    "rouge": Rouge,
    "distinct": DistinctN,
    "reference_nll": ReferenceNLL,
}


def load(name: str, **kwargs: Any) -> evaluate.Metric:
    """Instantiate a local metric by short name (kwargs go to ``evaluate.Metric``)."""
    try:
        cls = _METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid names: {', '.join(sorted(_METRICS))}") from None
    return cls(**kwargs)


def compute_generation_metrics(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    task: str,
    max_samples: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Flat dict of the standard metrics for a generation task.

    * ``"unconditional"``: ``references`` is the (unaligned) test-sentence set;
      returns ``bleu-2..5`` (Texygen vs. the set), ``self-bleu-2..5`` and
      ``distinct-1..3``.  ``max_samples``/``seed`` subsample scored sentences.
    * ``"conditional"`` (summarisation, question generation; references aligned
      1:1, each a string or list of strings): corpus ``bleu`` (sacrebleu, 0..1),
      ``rouge1/2/L`` and ``distinct-1..3``.
    """
    if task == "unconditional":
        return {
            **sentence_bleu_score(predictions, references, max_samples=max_samples, seed=seed),  # type: ignore[arg-type]
            **self_bleu_score(predictions, max_samples=max_samples, seed=seed),
            **distinct_n(predictions),
        }
    if task == "conditional":
        return {
            "bleu": corpus_bleu_score(predictions, references)["bleu"],
            **rouge_f_scores(predictions, references),
            **distinct_n(predictions),
        }
    raise ValueError(f"unknown task {task!r}; expected 'unconditional' or 'conditional'")
