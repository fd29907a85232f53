"""Cooperative decoding: sampling from ``q(y) ∝ p_theta(y) · D(y)`` with a generator ``p`` and a discriminator ``D``.

- :func:`sample_and_resample` — sampling-importance-resampling (SIR): ``K`` candidates per prompt from ``p``,
  resampled ∝ ``D`` (or ∝ ``D / (1 - D)``). As ``K`` grows its output distribution tends to ``q``.
- :func:`mcts_decode` — Monte-Carlo tree search guided by ``p·D`` (SelfGAN, Scialom et al. 2021; PPL-MCTS,
  Chaffin et al. 2022): PUCT with the generator's top-k next-token probabilities as priors and the
  discriminator's score of the partial sequence as value, ``num_simulations`` per token, batched over prompts.
- :func:`cooperative_generate` — the public text-in/text-out entry point (models or paths in).

GCN (:class:`hfcoop.GCNTrainer`) uses the first two as its ``sampler``; both take any
:data:`~hfcoop.scorers.ScoreFn`, so a hand-written "perfect discriminator" works as well as a trained one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedModel

from .batching import pad_left, pad_right
from .data import start_token_id
from .sampling import build_generation_config, sample_completions
from .modeling import eos_token_ids, load_causal_lm, load_tokenizer, max_positions
from .scorers import ScoreFn, ScorerInputs, SequenceScorer, load_scorer
from .validation import check_mcts_simulations


def resample_log_weights(logits: torch.Tensor, weighting: str = "d") -> torch.Tensor:
    """Log resampling weights from discriminator logits: ``log D`` (``"d"``) or ``log D/(1-D) = logit``
    (``"ratio"``)."""
    if weighting not in ("d", "ratio"):
        raise ValueError(f"weighting must be 'd' or 'ratio', got {weighting!r}.")
    return F.logsigmoid(logits.float()) if weighting == "d" else logits.float()


def resample_indices(
    log_weights: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SIR step: for each row of ``(B, K)`` log-weights, ``num_samples`` candidate indices drawn
    ∝ ``exp(log_weights)`` (with replacement). Returns ``(B, num_samples)``."""
    if log_weights.dim() != 2:
        raise ValueError(f"resample_indices needs (prompts, candidates) log-weights, got {tuple(log_weights.shape)}.")
    if not torch.isfinite(log_weights).any(dim=1).all() or torch.isnan(log_weights).any():
        raise ValueError("resample_indices: non-finite log-weights (every candidate of a prompt has weight 0 or NaN).")
    probs = torch.softmax(log_weights.float(), dim=1)
    return torch.multinomial(probs, num_samples, replacement=True, generator=generator)


@torch.no_grad()
def sample_and_resample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    generation_config: GenerationConfig,
    score_fn: ScoreFn,
    num_candidates: int = 8,
    num_samples: int = 1,
    weighting: str = "d",
) -> dict[str, torch.Tensor]:
    """Sampling-importance-resampling from ``q ∝ p·D``: ``num_candidates`` samples per prompt from ``model``
    (already in :func:`~hfcoop.sampling.generation_mode`), ``num_samples`` of them kept per prompt ∝ ``D``.

    Returns ``completion_ids`` / ``completion_mask`` (``B * num_samples`` rows, prompt-major) and the candidates
    (``candidate_ids``, ``candidate_mask``, ``candidate_logits``: ``B * num_candidates`` rows) and ``indices``.
    """
    if num_candidates < 1 or num_samples < 1:
        raise ValueError("num_candidates and num_samples must be >= 1.")
    batch = prompt_ids.shape[0]
    cand_ids, cand_mask = sample_completions(model, prompt_ids, prompt_mask, generation_config, num_candidates)
    rep_ids = prompt_ids.repeat_interleave(num_candidates, 0)
    rep_mask = prompt_mask.repeat_interleave(num_candidates, 0)
    logits = score_fn(rep_ids, rep_mask, cand_ids, cand_mask).float()
    if logits.shape != (batch * num_candidates,):
        raise ValueError(f"score_fn returned shape {tuple(logits.shape)}, expected ({batch * num_candidates},).")
    indices = resample_indices(resample_log_weights(logits, weighting).view(batch, num_candidates), num_samples)
    rows = (indices + torch.arange(batch, device=indices.device).unsqueeze(1) * num_candidates).view(-1)
    return {
        "completion_ids": cand_ids[rows],
        "completion_mask": cand_mask[rows],
        "candidate_ids": cand_ids,
        "candidate_mask": cand_mask,
        "candidate_logits": logits,
        "indices": indices,
    }


# ------------------------------------------------------------------------------------------------ MCTS
@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]  # the completion so far (prompt excluded)
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    value: float | None = None  # the discriminator's value of this (partial) sequence, once evaluated
    terminal: bool = False
    children: dict[int, "_Node"] = field(default_factory=dict)

    @property
    def expanded(self) -> bool:
        return self.value is not None

    def q(self, unvisited: float = 0.0) -> float:
        return self.value_sum / self.visits if self.visits else unvisited


MCTS_UNVISITED_VALUES = ("parent", "zero")


def _puct_child(node: _Node, c_puct: float, unvisited_value: str = "parent") -> _Node:
    # PUCT (Silver et al. 2017): Q + c · P · sqrt(N_parent) / (1 + N_child). An unvisited child's Q is its
    # parent's value D(prefix) ("parent", the default) or 0 ("zero", AlphaZero's choice for values in [-1, 1]).
    # With D in (0, 1), Q = 0 is the worst possible value: every visited child beats every unvisited one, so the
    # search keeps re-visiting its first children and the priors stop mattering (benchmarks/README, MCTS).
    init = (node.value or 0.0) if unvisited_value == "parent" else 0.0
    sqrt_n = math.sqrt(max(node.visits, 1))
    return max(node.children.values(), key=lambda c: c.q(init) + c_puct * c.prior * sqrt_n / (1 + c.visits))


def filter_probs(probs: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``(N, V)`` probabilities restricted to the top-``top_k`` tokens and the ``top_p`` nucleus (the sampling
    filters of ``generate``), renormalised; 0 / 1.0 switch a filter off."""
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token: keep while it is < top_p
        kept = before < top_p * probs.sum(-1, keepdim=True)
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, kept)
        probs = probs.masked_fill(~keep, 0.0)
    return probs / probs.sum(-1, keepdim=True)


@torch.no_grad()
def _next_token_probs(
    model: nn.Module, prompts: list[list[int]], completions: list[tuple[int, ...]], pad_id: int, temperature: float
) -> torch.Tensor:
    """``(N, V)`` next-token distributions after each prompt + partial completion (left-padded batch)."""
    ids, mask = pad_left([p + list(c) for p, c in zip(prompts, completions)], pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits[:, -1]
    return torch.softmax(logits.float() / temperature, dim=-1)


@torch.no_grad()
def mcts_decode(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    score_fn: ScoreFn,
    *,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    pad_token_id: int,
    num_simulations: int = 16,
    top_k: int = 10,
    c_puct: float = 1.0,
    temperature: float = 1.0,
    visit_temperature: float = 0.0,
    filter_top_k: int = 0,
    top_p: float = 1.0,
    unvisited_value: str = "parent",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token MCTS guided by ``p·D``, batched over prompts; returns right-padded ``(ids, mask)``.

    For each new token, ``num_simulations`` simulations run from the current prefix (the root): select children
    by PUCT down to a leaf, evaluate the leaf in one batched pass over all prompts (the generator's next-token
    probabilities at ``temperature``, filtered by ``filter_top_k`` / ``top_p`` as sampling would be, then the
    top-``top_k`` of them renormalised, become the children's priors; ``D = sigmoid(score_fn(...))`` of the partial
    sequence is the value), back the value up the path. Unvisited children count their parent's value as Q
    (``unvisited_value="parent"``) or 0 (``"zero"``). The next token is the
    most visited child (``visit_temperature = 0``; ties to the higher value) or drawn
    ∝ ``visits^(1/visit_temperature)``; its subtree is kept. A sequence ends at EOS or after ``max_new_tokens``
    tokens (terminal nodes are valued as complete texts).

    ``model`` must already be in eval mode (see :func:`~hfcoop.sampling.generation_mode`).
    """
    if num_simulations < 1 or top_k < 1 or max_new_tokens < 1:
        raise ValueError("mcts_decode needs num_simulations >= 1, top_k >= 1 and max_new_tokens >= 1.")
    check_mcts_simulations(num_simulations, min(top_k, getattr(getattr(model, "config", None), "vocab_size", top_k)))
    if unvisited_value not in MCTS_UNVISITED_VALUES:
        raise ValueError(f"unvisited_value must be one of {MCTS_UNVISITED_VALUES}, got {unvisited_value!r}.")
    search = _MCTSSearch(model, prompt_ids, prompt_mask, score_fn, max_new_tokens, eos_token_id, pad_token_id,
                         top_k, c_puct, temperature, filter_top_k, top_p, unvisited_value)  # fmt: skip
    for _ in range(max_new_tokens):
        active = [b for b in range(len(search.roots)) if not search.roots[b].terminal]
        if not active:
            break
        for _ in range(num_simulations):
            search.simulate(active)
        for b in active:
            search.advance(b, visit_temperature)
    ids, _ = pad_right([list(r.tokens) for r in search.roots], pad_token_id, prompt_ids.device, min_width=1)
    # Every sequence stops at its first EOS or at max_new_tokens, so its length is its mask.
    return ids, _length_mask(search.roots, ids)


class _MCTSSearch:
    """The trees of :func:`mcts_decode`, one per prompt, and the three steps of a simulation over them."""

    def __init__(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, score_fn: ScoreFn,
                 max_new_tokens: int, eos_token_id: int | list[int], pad_token_id: int, top_k: int, c_puct: float,
                 temperature: float, filter_top_k: int, top_p: float, unvisited_value: str) -> None:  # fmt: skip
        self.model, self.prompt_ids, self.prompt_mask, self.score_fn = model, prompt_ids, prompt_mask, score_fn
        self.max_new_tokens, self.pad_token_id, self.top_k, self.c_puct = max_new_tokens, pad_token_id, top_k, c_puct
        self.temperature, self.filter_top_k, self.top_p = temperature, filter_top_k, top_p
        self.unvisited_value = unvisited_value
        self.eos_ids = set(torch.as_tensor(eos_token_id).view(-1).tolist())
        self.prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]
        self.roots = [_Node(tokens=()) for _ in range(prompt_ids.shape[0])]

    def is_terminal(self, tokens: tuple[int, ...]) -> bool:
        return len(tokens) >= self.max_new_tokens or (bool(tokens) and tokens[-1] in self.eos_ids)

    def simulate(self, active: list[int]) -> None:
        """Select by PUCT down to a leaf in each active tree, evaluate the new leaves in one batch, back up."""
        paths, new_leaves = {}, []
        for b in active:
            node, path = self.roots[b], [self.roots[b]]
            while node.expanded and node.children:
                node = _puct_child(node, self.c_puct, self.unvisited_value)
                path.append(node)
            paths[b] = path
            if not node.expanded:
                new_leaves.append((b, node))
        if new_leaves:
            self.evaluate(new_leaves)
        for b in active:  # backup (terminal leaves re-use their cached value)
            leaf_value = paths[b][-1].value
            for node in paths[b]:
                node.visits += 1
                node.value_sum += leaf_value

    def evaluate(self, leaves: list[tuple[int, _Node]]) -> None:
        """Values (and priors for non-terminal leaves) of new leaves, one batched forward of each model."""
        rows = [b for b, _ in leaves]
        comp_ids, comp_mask = pad_right([list(n.tokens) for _, n in leaves], self.pad_token_id, self.prompt_ids.device,
                                        min_width=1)  # fmt: skip
        logits = self.score_fn(self.prompt_ids[rows], self.prompt_mask[rows], comp_ids, comp_mask).float()
        values = torch.sigmoid(logits).tolist()
        open_leaves = [(i, n) for i, (_, n) in enumerate(leaves) if not n.terminal]
        if open_leaves:
            self.expand([rows[i] for i, _ in open_leaves], [n for _, n in open_leaves])
        for (_, node), v in zip(leaves, values):
            node.value = v

    def expand(self, rows: list[int], nodes: list[_Node]) -> None:
        """Children of ``nodes``: the generator's filtered top-``top_k`` next tokens, renormalised, as priors."""
        probs = _next_token_probs(self.model, [self.prompts[r] for r in rows], [n.tokens for n in nodes],
                                  self.pad_token_id, self.temperature)  # fmt: skip
        probs = filter_probs(probs, self.filter_top_k, self.top_p)
        child_p, child_i = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
        child_p = child_p / child_p.sum(-1, keepdim=True)
        for node, ps, ts in zip(nodes, child_p.tolist(), child_i.tolist()):
            for p, t in zip(ps, ts):
                if p <= 0:  # filtered out by top_k / top_p
                    continue
                child_tokens = node.tokens + (t,)
                node.children[t] = _Node(tokens=child_tokens, prior=p, terminal=self.is_terminal(child_tokens))

    def advance(self, b: int, visit_temperature: float) -> None:
        """Tree ``b`` moves its root to the chosen next token (its subtree is kept)."""
        children = list(self.roots[b].children.values())
        visits = torch.tensor([c.visits for c in children], dtype=torch.float64)
        if visit_temperature > 0:
            choice = int(torch.multinomial((visits ** (1.0 / visit_temperature)).clamp(min=1e-300), 1))
        else:  # most visited; ties (few simulations) go to the better value
            choice = max(range(len(children)), key=lambda i: (children[i].visits, children[i].q(), children[i].prior))
        self.roots[b] = children[choice]


def _length_mask(roots: list[_Node], ids: torch.Tensor) -> torch.Tensor:
    lengths = torch.tensor([len(r.tokens) for r in roots], device=ids.device)
    return (torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)).long()


# ------------------------------------------------------------------------------------------------ public API
@torch.no_grad()
def cooperative_generate(
    model: str | PreTrainedModel,
    discriminator: str | nn.Module | ScoreFn,
    prompts: list[str] | None = None,
    *,
    num_samples: int = 1,
    tokenizer: Any = None,
    discriminator_tokenizer: Any = None,
    method: Literal["resample", "mcts"] = "resample",
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    weighting: str = "d",
    num_candidates: int = 8,
    num_simulations: int = 16,
    mcts_top_k: int = 10,
    c_puct: float = 1.0,
    visit_temperature: float = 0.0,
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> list[str]:
    """Texts decoded cooperatively by a generator and a discriminator (e.g. those a :class:`~hfcoop.GCNTrainer`
    exported with ``save_companion``).

    Args:
        model: the generator (causal LM or path/Hub id).
        discriminator: a one-logit sequence classifier, its path/Hub id, or a :data:`~hfcoop.scorers.ScoreFn`.
        prompts: conditional prompts; None for ``num_samples`` unconditional texts (started from BOS).
        method: ``"resample"`` (SIR over ``num_candidates`` samples, ∝ ``D`` or ``D/(1-D)`` per ``weighting``) or
            ``"mcts"`` (PUCT over the generator's top-``mcts_top_k`` tokens, ``num_simulations`` per token).
        temperature / top_k / top_p: the generator's sampling distribution (candidates and MCTS priors).
        add_special_tokens: False for prompts already rendered by a chat template (its BOS etc. not added twice).
    Returns:
        one completion text per prompt (or ``num_samples`` texts).
    """
    if method not in ("resample", "mcts"):
        raise ValueError(f"method must be 'resample' or 'mcts', got {method!r}.")
    model_id = model if isinstance(model, str) else getattr(model.config, "_name_or_path", None)
    tokenizer = load_tokenizer(tokenizer, model_id)
    generator = load_causal_lm(model)
    score_fn = _discriminator_score_fn(discriminator, generator, tokenizer, discriminator_tokenizer)
    keep = (max_positions(generator) or 10**9) - max_new_tokens
    rows = prompt_rows(tokenizer, prompts, num_samples, keep, add_special_tokens)
    eos_ids = eos_token_ids(tokenizer, generator)
    if method == "resample":
        config = build_generation_config(tokenizer, max_new_tokens, temperature, top_k, top_p, eos_ids)

        def complete(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = sample_and_resample(generator, ids, mask, config, score_fn, num_candidates, 1, weighting)
            return out["completion_ids"], out["completion_mask"]
    else:

        def complete(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return mcts_decode(
                generator, ids, mask, score_fn, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id, num_simulations=num_simulations, top_k=mcts_top_k,
                c_puct=c_puct, temperature=temperature, visit_temperature=visit_temperature, filter_top_k=top_k,
                top_p=top_p,
            )  # fmt: skip

    return _complete_rows(generator, tokenizer, rows, batch_size, complete)


def _complete_rows(
    generator: nn.Module, tokenizer: Any, rows: list[list[int]], batch_size: int, complete: Any
) -> list[str]:
    """Decoded completions of prompt token ``rows``, ``batch_size`` at a time, by ``complete(ids, mask)`` (left-padded
    prompts in, right-padded completions out) with the generator in eval mode."""
    was_training = generator.training
    generator.eval()
    texts: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_left(rows[start : start + batch_size], tokenizer.pad_token_id, generator.device)
            comp_ids, comp_mask = complete(ids, mask)
            texts += [
                tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(comp_ids, comp_mask)
            ]
    finally:
        generator.train(was_training)
    return texts


def _discriminator_score_fn(discriminator: Any, generator: nn.Module, tokenizer: Any, scorer_tokenizer: Any) -> ScoreFn:
    """A :data:`ScoreFn` as given, or one over the scorer that ``discriminator`` names / is."""
    if callable(discriminator) and not isinstance(discriminator, (str, nn.Module)):
        return discriminator
    scorer, scorer_tok = load_scorer(
        discriminator, generator, tokenizer, name="discriminator", tokenizer=scorer_tokenizer
    )
    if isinstance(discriminator, str):
        scorer = scorer.to(generator.device)
    return SequenceScorer(
        scorer, ScorerInputs(tokenizer, scorer_tok, max_positions(scorer), eos_token_ids(tokenizer, generator))
    )


def prompt_rows(
    tokenizer: Any, prompts: list[str] | None, num_samples: int, keep: int, add_special_tokens: bool = True
) -> list[list[int]]:
    """Prompt token rows: each prompt's newest ``keep`` tokens (so prompt + completion fit the generator's
    positions), or ``num_samples`` BOS-only rows for unconditional texts. ``add_special_tokens=False`` for prompts
    already rendered by a chat template. Plain sampling in ``hfcoop generate`` uses it too."""
    if prompts is None:
        return [[start_token_id(tokenizer)] for _ in range(num_samples)]
    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"][-keep:] for p in prompts]
    return [row or [start_token_id(tokenizer)] for row in rows]
