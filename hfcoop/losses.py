"""Pure loss functions, one per equation of the papers.

Shapes: ``B`` sequences, ``T`` completion positions, ``V`` vocabulary. ``mask`` is a ``(B, T)`` 0/1 tensor that
is 1 on the completion tokens that count (up to and including the first EOS). Every function returns the
paper's quantity averaged over sequences (a sum over a sequence's tokens, then a mean over sequences), so
the value of a batch is the mean of the values of its halves: gradient accumulation and data parallelism
are then exact without any token-count bookkeeping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for every position: ``(B, T, V), (B, T) -> (B, T)``, computed in float32.

    Uses ``gather - logsumexp`` so no ``(B, T, V)`` log-softmax copy is kept for the backward pass.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence negative log-likelihood ``-sum_t log p(x_t | s_t)``: ``(B, T) -> (B,)``."""
    return -(logprobs * mask).sum(dim=-1)


def mle_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maximum likelihood, CoT Eq. (1): ``E_{s~p_data}[-log G(s)]``, estimated on a batch of real sequences."""
    return sequence_nll(logprobs, mask).mean()


def mediator_loss(
    real_logprobs: torch.Tensor, real_mask: torch.Tensor, gen_logprobs: torch.Tensor, gen_mask: torch.Tensor
) -> torch.Tensor:
    """Mediator objective, CoT Eq. (9) (the "balanced NLL"):

    ``J_m(phi) = 1/2 ( E_{s~G}[-log M(s)] + E_{s~p_data}[-log M(s)] )``.

    Its minimiser is ``M* = (p_data + G) / 2`` (Lemma 1), which is why the two halves get equal weight even
    when the batches differ in size.
    """
    return 0.5 * (mle_loss(gen_logprobs, gen_mask) + mle_loss(real_logprobs, real_mask))


def _kl_chunk(gen_logits: torch.Tensor, med_logits: torch.Tensor) -> torch.Tensor:
    gen_logp = F.log_softmax(gen_logits.float(), dim=-1)
    med_logp = F.log_softmax(med_logits.float(), dim=-1)
    return (gen_logp.exp() * (gen_logp - med_logp)).sum(-1)


def per_token_kl(gen_logits: torch.Tensor, med_logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Full-vocabulary ``KL(pi_g(s_t) || pi_m(s_t))`` at every position: ``(B, T, V) x2 -> (B, T)``.

    With ``chunk_size`` the positions are processed ``chunk_size`` at a time under activation checkpointing,
    so the float32 softmax temporaries stay ``O(chunk_size * V)`` instead of ``O(B * T * V)`` in the forward
    *and* the backward pass; the result is identical.
    """
    b, t, v = gen_logits.shape
    g, m = gen_logits.reshape(b * t, v), med_logits.reshape(b * t, v)
    if chunk_size is None or chunk_size >= b * t:
        return _kl_chunk(g, m).view(b, t)
    pieces = []
    for start in range(0, b * t, chunk_size):
        gs, ms = g[start : start + chunk_size], m[start : start + chunk_size]
        if torch.is_grad_enabled() and gs.requires_grad:
            pieces.append(checkpoint(_kl_chunk, gs, ms, use_reentrant=False))
        else:
            pieces.append(_kl_chunk(gs, ms))
    return torch.cat(pieces).view(b, t)


def cot_generator_loss(
    kl: torch.Tensor, mask: torch.Tensor, gen_logprobs: torch.Tensor | None = None, gamma: float = 0.0
) -> torch.Tensor:
    """Generator objective of CoT, Eq. (14), with the optional REINFORCE term of Sec. 3.1.3.

    The per-step objective ``L(s_t) = pi_g(s_t)^T (log pi_m(s_t) - log pi_g(s_t)) = -KL_t`` is maximised;
    as a loss (minimised) this is, per sequence,

    ``sum_t KL_t  +  gamma * sum_t stop_grad(KL_t) * log G(s_t)``

    where ``log G(s_t) = sum_{tau < t} log pi_g(x_tau | s_tau)`` is the log-probability of the prefix before
    position ``t`` (the prompt has probability 1). The gradient of ``sum_t KL_t`` equals Eq. (14) because
    ``pi_g^T grad log pi_g = grad sum(pi_g) = 0``. ``gamma = 0`` is the paper's recommended setting.

    Args:
        kl: ``(B, T)`` per-token ``KL(pi_g || pi_m)`` with gradient through the generator (`per_token_kl`).
        mask: ``(B, T)`` completion mask.
        gen_logprobs: ``(B, T)`` log-probabilities of the sampled tokens under the generator (needed if gamma > 0).
        gamma: weight of the REINFORCE term, in [0, 1].
    """
    kl = kl * mask
    loss = kl.sum(-1)
    if gamma:
        if gen_logprobs is None:
            raise ValueError("cot_generator_loss: gamma > 0 needs gen_logprobs")
        lp = gen_logprobs * mask
        prefix_logprob = torch.cumsum(lp, dim=-1) - lp  # exclusive prefix sum: log G(s_t)
        loss = loss + gamma * (kl.detach() * prefix_logprob).sum(-1)
    return loss.mean()
