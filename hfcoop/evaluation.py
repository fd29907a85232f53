"""Quality of a generator on an evaluation set: sample, then score with :mod:`hfcoop.metrics`.

Protocol. Unconditional data: ``num_samples`` sequences are sampled from BOS and scored by sentence BLEU-2..5
against the whole evaluation set (Texygen), Self-BLEU and distinct-n; NLL_test is the generator's per-token
NLL of the evaluation texts. Conditional data: one completion is sampled per evaluation prompt (first
``num_samples`` rows) and scored against its reference by corpus BLEU and ROUGE; NLL is that of the reference
completions given their prompts. References are round-tripped through the generator's tokenizer so that
BLEU compares like-tokenised text (a word-level tokenizer splits "wheel." into "wheel .").
Conversational data is rendered by the chat template exactly as training renders it
(:func:`hfcoop.data.render_conversation`): samples continue the rendered prompt, references are the assistant's
words (the template's special tokens stripped), NLL scores the rendered completion with its end-of-turn token.
"""

from __future__ import annotations

from typing import Any

import torch

from .batching import pad_left
from .data import detect_format, render_conversational_dataset, start_token_id
from .modeling import eos_token_ids, max_positions
from .metrics import compute_generation_metrics, reference_nll
from .sampling import build_generation_config, generation_mode, sample_completions
from .validation import length_budget_problem, require


def _normalise(tokenizer: Any, texts: list[str]) -> list[str]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@torch.no_grad()
def sample_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[str] | None,
    num_samples: int,
    max_new_tokens: int,
    max_prompt_length: int | None = None,
    batch_size: int = 32,
    temperature: float = 1.0,
    add_special_tokens: bool = True,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[str]:
    """Decoded samples: ``num_samples`` unconditional ones, or one per prompt when prompts are given
    (``add_special_tokens=False`` for prompts rendered by a chat template, which carry their own)."""
    config = build_generation_config(tokenizer, max_new_tokens, temperature, top_k, top_p,
                                     eos_token_ids=eos_token_ids(tokenizer, model))  # fmt: skip
    device = next(model.parameters()).device
    if max_prompt_length is None:  # as many prompt tokens as fit next to the completion
        max_prompt_length = (max_positions(model) or 10**9) - max_new_tokens
    texts: list[str] = []
    with generation_mode(model) as g:
        for start in range(0, len(prompts) if prompts is not None else num_samples, batch_size):
            if prompts is None:
                n = min(batch_size, num_samples - start)
                ids = [[start_token_id(tokenizer)]] * n
            else:
                ids = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"][-max_prompt_length:]
                       for p in prompts[start : start + batch_size]]  # fmt: skip
            prompt_ids, prompt_mask = pad_left(ids, tokenizer.pad_token_id)
            out, _ = sample_completions(g, prompt_ids.to(device), prompt_mask.to(device), config)
            texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return texts


def generation_quality(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    num_samples: int = 200,
    max_new_tokens: int = 32,
    max_prompt_length: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    temperature: float = 1.0,
    with_nll: bool = True,
    top_k: int = 0,
    top_p: float = 1.0,
) -> dict[str, float]:
    """Sample-based metrics plus reference NLL (``with_nll``), as in the module docstring (seeded, restores RNG).
    Samples are drawn with ``temperature`` / ``top_k`` / ``top_p`` (a trained run's: what its export samples with)."""
    fmt = detect_format(dataset.column_names, "evaluation dataset", dataset[0] if len(dataset) else None)
    require(len(dataset) > 0, "the evaluation dataset is empty: give it at least one row.")
    require(num_samples >= 1 and batch_size >= 1, f"num_samples ({num_samples}) and batch_size ({batch_size}) must "
                                                  "be at least 1.")  # fmt: skip
    require(fmt != "text" or num_samples >= 2, f"num_samples ({num_samples}) must be at least 2 for unconditional "
                                               "data: Self-BLEU compares the samples with each other.")  # fmt: skip
    # Before any sample: a budget beyond the model's positions fails deep in its forward ("index out of range").
    problem = length_budget_problem(max_positions(model), 1 if fmt == "text" else max_prompt_length, max_new_tokens,
                                    "max_prompt_length", "max_new_tokens")  # fmt: skip
    require(problem is None, str(problem))
    chat = fmt == "conversational"
    if chat:
        dataset = render_conversational_dataset(dataset, tokenizer, eos_token_ids(tokenizer, model))
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if fmt == "text":
            references = _normalise(tokenizer, list(dataset["text"]))
            samples = sample_texts(model, tokenizer, None, num_samples, max_new_tokens, batch_size=batch_size,
                                   temperature=temperature, top_k=top_k, top_p=top_p)  # fmt: skip
            metrics = compute_generation_metrics(samples, references, task="unconditional", seed=seed)
            if with_nll:
                nll = reference_nll(model, tokenizer, list(dataset["text"])[:2000], batch_size=batch_size)
        else:
            rows = dataset.select(range(min(num_samples, len(dataset))))
            prompts = list(rows["prompt"])
            samples = sample_texts(model, tokenizer, prompts, len(prompts), max_new_tokens, max_prompt_length,
                                   batch_size, temperature, add_special_tokens=not chat, top_k=top_k, top_p=top_p)  # fmt: skip
            references = _normalise(tokenizer, list(rows["completion"]))
            metrics = compute_generation_metrics(samples, references, task="conditional")
            # Score as training tokenises (hfcoop.data.tokenize_row): the prompt gets BOS only if the tokenizer adds it.
            # Rendered chat rows carry their own special tokens, and their completion its end-of-turn token.
            adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
            if with_nll:
                nll = reference_nll(model, tokenizer, list(rows["completion"]), prompts=prompts, batch_size=batch_size,
                                    max_prompt_length=max_prompt_length, add_bos=adds_bos and not chat,
                                    append_eos=not chat)  # fmt: skip
    finally:
        torch.random.set_rng_state(rng_state)
    if with_nll:
        metrics["nll_per_token"] = nll["nll_per_token"]
    return {k: float(v) for k, v in metrics.items()}
