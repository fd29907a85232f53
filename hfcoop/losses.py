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
from torch.autograd.function import once_differentiable

from .batching import unpack_tokens


class _TokenLogprobs(torch.autograd.Function):
    """``gather - logsumexp`` with its gradient written out: ``d/dx = onehot(label) - softmax(x)``.

    Why: autograd's version of this backward makes ~5 full ``(B, T, V)`` float32 passes (a zero-filled
    gather-backward buffer, ``exp(x - lse)``, the product with the incoming gradient, the sum of the two branches)
    where 2 suffice; over the LM's vocabulary these passes were ~10% of a CoT step on CPU. The forward is the
    same two ops as before (same values); it keeps only the logits (alive anyway) and the labels."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        lse = torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(logits, labels)
        return x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, labels = ctx.saved_tensors
        # softmax(x) rather than exp(x - lse): the fused kernel is ~3x faster than sub + exp_ on CPU (same values up
        # to rounding).
        grad = torch.softmax(logits.float(), dim=-1).mul_(grad_out.neg().unsqueeze(-1))
        grad.scatter_add_(-1, labels.unsqueeze(-1), grad_out.unsqueeze(-1).to(grad.dtype))
        return grad.to(logits.dtype), None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for every position: ``(B, T, V), (B, T) -> (B, T)``, computed in float32.

    Uses ``gather - logsumexp`` so no ``(B, T, V)`` log-softmax copy is kept for the backward pass.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TokenLogprobs.apply(logits, labels)
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def packed_token_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`token_logprobs` of *packed* logits ``(N, V)`` (the masked-in positions of ``mask``, row-major: what the
    pair returns for ``lm_inputs(..., packed=True)``), back at ``(B, T)`` with 0 where ``mask`` is 0."""
    keep = mask.bool()
    return unpack_tokens(token_logprobs(logits, labels[keep]), mask)


def sequence_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence negative log-likelihood ``-sum_t log p(x_t | s_t)``: ``(B, T) -> (B,)``."""
    return -(logprobs * mask).sum(dim=-1)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the masked-in tokens, ``(B, T) -> ()`` (0 when there are none): the per-token
    statistics that are logged (NLL, KL per token). Losses are per-sequence sums instead, see
    :func:`scale_to_token_budget`."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def scale_to_token_budget(token_sum_loss: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """The one loss normalisation: a loss that is a mean over sequences of per-sequence *token sums* (NLL, KL, the
    mediator's balanced NLL), divided by the constant completion budget ``max_completion_length``.

    Why a constant rather than the batch's token count: a mean of means over equal micro-batches is the global
    mean, so gradient accumulation and data parallelism stay exact without token-count bookkeeping (there is none
    for sampled sequences), while the scale stays per token, as learning rates tuned on token means expect. Each
    trainer applies it to its token-sum terms only; a per-sequence objective (ψ-MLE's Bregman loss, GCN's
    discriminator loss) is already on a per-example scale and enters the step's loss as it is.
    """
    return token_sum_loss / max_completion_length


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


class _PerTokenKL(torch.autograd.Function):
    """``_kl_chunk`` over ``(N, V)`` rows, ``chunk_size`` rows at a time, with its gradient written out:
    ``dKL/dg = p_g * (log p_g - log p_m - KL)`` and ``dKL/dm = p_m - p_g``.

    Why: autograd's backward through log_softmax/exp/sub/mul makes ~6 full float32 passes per model and keeps
    three ``(N, V)`` tensors; this makes 2-3 and keeps two. Same forward ops as ``_kl_chunk`` (same values). When
    the rows span several chunks only the inputs are kept and each chunk is recomputed in the backward pass,
    which is what the activation checkpointing used here before did (memory stays ``O(chunk_size * V)``)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, m: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        n = g.shape[0]
        step = max(n if chunk_size is None or chunk_size >= n else int(chunk_size), 1)
        need_g, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.step, ctx.dtypes = step, (g.dtype, m.dtype)
        kl = torch.empty(n, dtype=torch.float32, device=g.device)
        for start in range(0, n, step):
            gen_logp = F.log_softmax(g[start : start + step].float(), dim=-1)
            med_logp = F.log_softmax(m[start : start + step].float(), dim=-1)
            p_g, diff = gen_logp.exp(), gen_logp - med_logp
            kl[start : start + step] = (p_g * diff).sum(-1)
        if step >= n > 0:  # one chunk: keep what the gradient needs, no recomputation
            ctx.save_for_backward(p_g, diff if need_g else None, med_logp if need_m else None, kl)
            ctx.recompute = False
        else:
            ctx.save_for_backward(g, m, kl)
            ctx.recompute = True
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kl: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        need_g, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_dtype, m_dtype = ctx.dtypes

        def chunk_grads(p_g, diff, med_logp, kl, go):
            go = go.unsqueeze(-1)
            dg = (diff - kl.unsqueeze(-1)).mul_(p_g).mul_(go) if need_g else None
            dm = med_logp.exp().sub_(p_g).mul_(go) if need_m else None
            return dg, dm

        if not ctx.recompute:
            p_g, diff, med_logp, kl = ctx.saved_tensors
            dg, dm = chunk_grads(p_g, diff, med_logp, kl, grad_kl.float())
            return (dg.to(g_dtype) if dg is not None else None), (dm.to(m_dtype) if dm is not None else None), None
        g, m, kl = ctx.saved_tensors
        grad_g = torch.empty_like(g) if need_g else None
        grad_m = torch.empty_like(m) if need_m else None
        for start in range(0, g.shape[0], ctx.step):
            rows = slice(start, start + ctx.step)
            gen_logp = F.log_softmax(g[rows].float(), dim=-1)
            med_logp = F.log_softmax(m[rows].float(), dim=-1)
            dg, dm = chunk_grads(gen_logp.exp(), gen_logp - med_logp, med_logp, kl[rows], grad_kl[rows].float())
            if need_g:
                grad_g[rows] = dg
            if need_m:
                grad_m[rows] = dm
        return grad_g, grad_m, None


def per_token_kl(gen_logits: torch.Tensor, med_logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Full-vocabulary ``KL(pi_g(s_t) || pi_m(s_t))`` at every position: ``(B, T, V) x2 -> (B, T)``.

    With ``chunk_size`` the positions are processed ``chunk_size`` at a time and recomputed chunk by chunk in the
    backward pass, so the float32 softmax temporaries stay ``O(chunk_size * V)`` instead of ``O(B * T * V)`` in
    the forward *and* the backward pass; the result is identical.
    """
    b, t, v = gen_logits.shape
    g, m = gen_logits.reshape(b * t, v), med_logits.reshape(b * t, v)
    if torch.is_grad_enabled() and (g.requires_grad or m.requires_grad):
        return _PerTokenKL.apply(g, m, chunk_size).view(b, t)
    if chunk_size is None or chunk_size >= b * t:
        return _kl_chunk(g, m).view(b, t)
    pieces = [_kl_chunk(g[s : s + chunk_size], m[s : s + chunk_size]) for s in range(0, b * t, chunk_size)]
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


# --------------------------------------------------------------------------------------------------------------
# GENERE (Generative Regularization), black-box variant: Algorithm 2 with the mixture generator of Sec. 3.1.
# The generator's loss is `mle_loss` on the real/generated mixture; these functions drive gamma and mu.
# --------------------------------------------------------------------------------------------------------------


def genere_sampling_probs(gamma: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """GENERE Sec. 3.1: the base-generator probabilities of one draw, ``softmax(gamma + delta)``: ``(K,) -> (K,)``
    (or ``(R, K)`` for ``R`` draws)."""
    return torch.softmax(gamma + delta, dim=-1)


def genere_gamma_scores(
    logprobs: torch.Tensor, baseline: torch.Tensor | float, delta: torch.Tensor, perturbation_std: float = 1.0
) -> torch.Tensor:
    """Per-sample REINFORCE estimates of ``grad_gamma E_{P_gamma}[log p_theta(y|x)]``, GENERE Alg. 2 line 8:
    ``(R,), (R, K) -> (R, K)``.

    With ``z = gamma + delta``, ``delta ~ N(0, sigma^2 I)`` the black box's seed (Eq. 4), the score of the
    Gaussian is ``grad_gamma log N(z; gamma, sigma^2 I) = delta / sigma^2``, so

    ``grad_gamma E[log p_theta(y|x)] = E[(log p_theta(y|x) - mu) * delta / sigma^2]``

    for any baseline ``mu`` that does not depend on ``delta`` (it only lowers the variance). GENERE minimises
    ``L(theta, gamma) = -(1 + lambda) E_{P~_gamma}[log p_theta(y|x)] - ...`` (Eq. 3), i.e. *ascends* this
    gradient: the caller adds ``eta_gamma * mean(scores)`` to gamma (:func:`genere_gamma_update`). With
    ``sigma = 1`` a row's score is exactly the paper's ``(log p_theta(y|x) - mu) * delta`` (whose printed
    minus sign contradicts the stated intent of Sec. 3.2/3.5; see :mod:`hfcoop.trainers.genere`).

    Args:
        logprobs: ``(R,)`` detached ``log p_theta(y|x)`` of R generated rows (sums over completion tokens).
        baseline: ``mu``, the running mean log-likelihood.
        delta: ``(R, K)`` the Gaussian perturbations each row was generated with.
        perturbation_std: ``sigma``.
    """
    advantages = (logprobs.to(delta.dtype) - baseline).unsqueeze(-1)
    return advantages * delta / perturbation_std**2


def genere_gamma_update(
    gamma: torch.Tensor, score_sum: torch.Tensor, count: int | float, learning_rate: float, shrinkage: float = 1.0
) -> torch.Tensor:
    """GENERE Alg. 2 line 8 with the sign of Sec. 3.2/3.5: ``gamma <- shrinkage * (gamma + eta_gamma * mean score)``.

    ``score_sum`` is the sum of :func:`genere_gamma_scores` over the ``count`` generated rows of one optimizer
    step (a mean keeps ``eta_gamma`` independent of batch size and lambda). ``count = 0`` leaves gamma unchanged
    (but still shrunk). ``shrinkage`` < 1 pulls gamma toward the uniform mixture (the paper's "shrinkage
    parameter", 0.99 in Sec. 3.2; 1.0 disables it).
    """
    if count:
        gamma = gamma + learning_rate * score_sum / count
    return gamma * shrinkage


def genere_length_scale(normalization: str, length_sum: torch.Tensor | float, rows: torch.Tensor | float) -> float:
    """The factor that turns a row's per-token log-likelihood ``log p_theta(y|x) / |y|`` into its reward: the mean
    ``|y|`` over *all* rows of the optimizer step (every micro-batch and process), so rewards keep the summed
    log-likelihood's scale (for which the paper's eta_gamma is tuned) while the ranking is per token; one constant
    per step, so the update does not depend on how the step's rows are split. ``"sum"``: 1 (the rows already hold
    the paper's summed log-likelihood)."""
    if normalization == "sum":
        return 1.0
    return float(length_sum) / max(float(rows), 1.0)


def genere_baseline_update(baseline: torch.Tensor, logprob_mean: torch.Tensor, smoothing: float) -> torch.Tensor:
    """GENERE Alg. 2 line 11, once per optimizer step: ``mu <- alpha * mu + (1 - alpha) * mean log p_theta(y|x)``
    over the step's rows, real and generated (``mu`` tracks the log-likelihood under the mixture P~_gamma)."""
    return smoothing * baseline + (1.0 - smoothing) * logprob_mean


def genere_mixture_proportions(
    gamma: torch.Tensor, perturbation_std: float = 1.0, num_samples: int = 4096, seed: int = 0
) -> torch.Tensor:
    """GENERE Sec. 3.1: ``pi_k = E_{delta ~ N(0, sigma^2 I)}[softmax_k(gamma + delta)]``, by Monte Carlo.

    ``ceil(num_samples / K)`` draws come from a private generator seeded with ``seed`` (common random numbers),
    each used with its K cyclic shifts (same distribution, as the coordinates of delta are i.i.d.), so about
    ``num_samples`` perturbations in all. The estimate is unbiased, a deterministic smooth function of gamma, sums
    to 1, is exactly uniform when gamma is, and touches no global RNG; its standard error is at most
    ``0.5 / sqrt(num_samples / K)`` (0.017 for 4096 draws and K = 5; far less in practice). ``sigma = 0`` gives
    ``softmax(gamma)``.
    """
    if perturbation_std == 0:
        return torch.softmax(gamma, dim=-1)
    k = gamma.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(-(-num_samples // k), k, generator=generator, dtype=gamma.dtype) * perturbation_std
    delta = torch.cat([base.roll(shift, dims=-1) for shift in range(k)])
    return torch.softmax(gamma + delta, dim=-1).mean(0)


# ----------------------------------------------------------------------------------------------------------------
# ψ-MLE (Bregman density-ratio estimation + importance-weighted MLE) and GCN (discriminator-weighted MLE).
# Sequence-level quantities: ``log_ratio`` / ``logits`` are ``(N,)`` per-sequence scores, ``seq_logprobs`` are
# ``(N,)`` per-sequence sums ``log p_theta(s) = sum_t log pi(x_t | s_t)``.
# ----------------------------------------------------------------------------------------------------------------

BREGMAN_FUNCTIONS = ("logistic", "squared", "softplus")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32 (exponentials of log-ratios); float32/float64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def _check_bregman(name: str) -> None:
    if name not in BREGMAN_FUNCTIONS:
        raise ValueError(f"bregman_f must be one of {BREGMAN_FUNCTIONS}, got {name!r}.")


def bregman_f(t: torch.Tensor, name: str = "logistic") -> torch.Tensor:
    """The convex functions ``f(t)`` of ψ-MLE Table 4 (left column), for ``t > 0``:

    - ``"logistic"``: ``t log t - (1 + t) log(1 + t)`` (the paper's default, Sec. 5.1.1),
    - ``"squared"``:  ``(t - 1)^2 / 2``,
    - ``"softplus"``: ``ln(1 + e^t)``.
    """
    _check_bregman(name)
    if name == "logistic":
        return torch.xlogy(t, t) - torch.xlogy(1 + t, 1 + t)
    if name == "squared":
        return 0.5 * (t - 1) ** 2
    return F.softplus(t)


def _sample_mean(values: torch.Tensor, weights: torch.Tensor | None, what: str) -> torch.Tensor:
    if weights is None:
        return values.mean()
    if weights.shape != values.shape:
        raise ValueError(f"{what}: weights of shape {tuple(weights.shape)} for scores of shape {tuple(values.shape)}.")
    return (weights * values).sum() / weights.sum()


def density_ratio_loss(
    log_ratio_num: torch.Tensor,
    log_ratio_den: torch.Tensor,
    bregman: str = "logistic",
    num_weights: torch.Tensor | None = None,
    den_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bregman density-ratio objective, ψ-MLE Eq. (11) with the closed forms of Table 4.

    Up to the constant ``E_den[f(r*)]`` (independent of ψ), Eq. (11) ``BD_f(r* || r_ψ)`` with ``r* = p_num / p_den``
    equals (Eq. 16)

    ``L(ψ) = E_{x~p_den}[f'(r_ψ(x)) r_ψ(x) - f(r_ψ(x))] - E_{x~p_num}[f'(r_ψ(x))]``,

    minimised exactly at ``r_ψ = p_num / p_den``. With ``r = exp(s)`` (``s`` = ``log_ratio``) Table 4 reads

    - logistic: ``E_den[log(1 + r)] - E_num[log(r / (1 + r))] = E_den[softplus(s)] + E_num[softplus(-s)]``
      (Table 4 prints ``-log(1 + r)`` in the first term; ``f'(t) t - f(t) = +log(1 + t)``, and with the printed
      sign the objective is unbounded below, so the sign is a typo. This is the logistic-regression loss of
      a classifier ``sigmoid(s)`` of num (label 1) vs den (label 0));
    - squared:  ``1/2 E_den[r^2 - 1] - E_num[r - 1]``;
    - softplus: ``E_den[sigmoid(r) r - ln(1 + e^r)] - E_num[sigmoid(r)]``.

    Args:
        log_ratio_num: ``(N,)`` log-ratios ``s`` on samples of the numerator ``p_num`` (``p_data``).
        log_ratio_den: ``(M,)`` log-ratios on samples of the denominator ``p_den`` (``p_mix`` or ``p_theta``).
        bregman: ``"logistic"``, ``"squared"`` or ``"softplus"``.
        num_weights, den_weights: optional per-sample weights of the two expectations (normalised here), e.g. the
            mixture proportions when ``p_den = m p_data + (1 - m) p_theta`` is estimated from both batches.
    """
    _check_bregman(bregman)
    s_num, s_den = _upcast(log_ratio_num), _upcast(log_ratio_den)
    if bregman == "logistic":
        den_term, num_term = F.softplus(s_den), -F.softplus(-s_num)
    elif bregman == "squared":
        den_term, num_term = 0.5 * (torch.exp(2 * s_den) - 1), torch.exp(s_num) - 1
    else:
        r_den, r_num = torch.exp(s_den), torch.exp(s_num)
        den_term, num_term = torch.sigmoid(r_den) * r_den - F.softplus(r_den), torch.sigmoid(r_num)
    return _sample_mean(den_term, den_weights, "denominator") - _sample_mean(num_term, num_weights, "numerator")


def mixture_to_data_log_ratio(log_ratio_model: torch.Tensor, mixture_weight: float) -> torch.Tensor:
    """``log(p_data / p_mix)`` from ``s = log(p_data / p_theta)``, with ``p_mix = m p_data + (1 - m) p_theta`` (Eq. 5):

    ``p_data / p_mix = r / (m r + 1 - m)``. Used when the estimator learns Algorithm 1's target ``p_data / p_theta``
    but the generator trains on mixture samples, whose exact importance weight is ``p_data / p_mix`` (Eq. 8).
    """
    import math

    m = float(mixture_weight)
    if m <= 0.0:
        return log_ratio_model
    if m >= 1.0:
        return torch.zeros_like(log_ratio_model)
    return log_ratio_model - torch.logaddexp(log_ratio_model + math.log(m), torch.full_like(log_ratio_model, math.log1p(-m)))


def importance_weights(
    log_weights: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    alpha: float = 1.0,
    self_normalize: bool = True,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Variance-reduced importance weights, ψ-MLE Eq. (18) (self-normalisation) and Eq. (19) (flattening).

    Raw weight of sample ``i``: ``c_i w_i^alpha`` with ``w_i = exp(log_weights_i)`` and ``c_i`` = ``sample_weights``
    (how much sample ``i`` counts in the plain estimate, e.g. mixture proportions; default ``1/N``).

    - ``self_normalize``: divided by their sum within each group (Eq. 18; GCN slides: ``w_i / sum_j w_j``);
      the result sums to 1 over all samples (each of ``G`` groups gets mass ``1/G``), computed as a softmax in
      log space so large ratios cannot overflow.
    - otherwise: the unnormalised ``c_i w_i^alpha`` (Eq. 19 with ``alpha``; ``alpha = 1`` is Eq. 7).

    ``alpha = 0`` gives uniform weights, ``alpha = 1`` the plain ratios. Returns ``(N,)`` weights.
    """
    n = log_weights.shape[0]
    log_w = alpha * _upcast(log_weights)
    if sample_weights is None:
        sample_weights = torch.full_like(log_w, 1.0 / max(n, 1))
    elif sample_weights.shape != log_w.shape:
        raise ValueError(
            f"importance_weights: {tuple(sample_weights.shape)} sample weights for {tuple(log_w.shape)} log-weights."
        )
    if not self_normalize:
        return sample_weights.to(log_w.dtype) * torch.exp(log_w)
    logits = log_w + torch.log(sample_weights.to(log_w.dtype))
    if groups is None:
        return torch.softmax(logits, dim=0)
    if groups.shape != log_w.shape:
        raise ValueError(f"importance_weights: {tuple(groups.shape)} group ids for {tuple(log_w.shape)} log-weights.")
    group_index, num_groups = _group_index(groups)
    group_max = torch.full((num_groups,), float("-inf"), device=logits.device, dtype=logits.dtype).scatter_reduce(
        0, group_index, logits, reduce="amax"
    )
    shifted = torch.exp(logits - group_max[group_index])
    return shifted / _group_sum(shifted, group_index, num_groups)[group_index] / num_groups


def _group_index(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Group ids -> (dense index 0..G-1 per element, G)."""
    _, index = torch.unique(groups, return_inverse=True)
    return index, int(index.max()) + 1


def _group_sum(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    return torch.zeros(num_groups, device=values.device, dtype=values.dtype).index_add(0, index, values)


def baseline_weights(weights: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Weights minus their group's mean: a REINFORCE baseline for the GCN update on samples of ``p_theta``.

    ``sum_i w_i ∇log p(y_i) = sum_i (w_i - w̄) ∇log p(y_i) + w̄ sum_i ∇log p(y_i)``. For weights self-normalised
    per group (:func:`importance_weights`) ``w̄`` is a constant (1 / samples in the group / groups), so the last
    term has expectation exactly 0 when the ``y_i`` are exact ``p_theta`` samples (score-function identity
    ``E_p[∇log p] = 0``). Dropping it keeps the expected update of the slides' step 4 and removes its noise, which
    with an uninformative D (all ``w`` equal) is the whole update — Adam turns that zero-mean noise into lr-sized
    steps. ``groups``: per-prompt means (conditional data); None: one mean.
    """
    if groups is None:
        return weights - weights.mean()
    index, num_groups = _group_index(groups)
    means = _group_sum(weights, index, num_groups) / _group_sum(torch.ones_like(weights), index, num_groups)
    return weights - means[index]


def weighted_nll_loss(seq_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Importance-weighted MLE, ψ-MLE Eq. (7)/(18) and the GCN update (slides, step 4):

    ``-sum_i w_i log p_theta(y_i)``, with weights that sum to 1 for a weighted mean over sequences (self-normalised)
    or the plain importance-sampling estimate otherwise. ``weights`` are constants (detached here).
    """
    if seq_logprobs.shape != weights.shape:
        raise ValueError(
            f"weighted_nll_loss: {tuple(weights.shape)} weights for {tuple(seq_logprobs.shape)} sequences "
            "(one weight per sequence)."
        )
    return -(weights.detach() * seq_logprobs).sum()


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` as a fraction of ``N`` (1: uniform, 1/N: one sample)."""
    w = _upcast(weights.detach())
    return w.sum() ** 2 / (w.pow(2).sum() * w.numel()).clamp(min=1e-30)


def discriminator_loss(real_logits: torch.Tensor, generated_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator objective (GCN slides step 2; GAN, Goodfellow et al. 2014, Eq. 1), balanced between classes:

    ``1/2 (E_{y~p_data}[-log D(y)] + E_{y~p_theta}[-log(1 - D(y))])`` with ``D = sigmoid(logit)``.
    Its optimum is ``D* = p_data / (p_data + p_theta)``, so ``D* / (1 - D*) = p_data / p_theta``.
    """
    return 0.5 * (F.softplus(-real_logits.float()).mean() + F.softplus(generated_logits.float()).mean())


GCN_WEIGHTINGS = ("d", "ratio")
GCN_SAMPLERS = ("model", "resample", "mcts")


def gcn_log_weights(logits: torch.Tensor, weighting: str = "d", sampler: str = "model") -> torch.Tensor:
    """Log importance weights ``log q(y)/q̂(y)`` (up to a constant) of the GCN update (slides, step 4).

    Target ``q ∝ p_theta · D`` (``weighting="d"``) or ``q ∝ p_theta · D / (1 - D)`` (``"ratio"``, which is
    ``p_data`` at the optimal discriminator). For the proposal ``q̂``:

    - ``"model"`` (``q̂ = p_theta``): ``w = D(y) = sigmoid(logit)`` (log: ``logsigmoid(logit)``), or ``D/(1-D)``
      (log: ``logit``) — the slides' ``q̂ = p`` case;
    - ``"resample"`` (sampling-importance-resampling ∝ the same target) and ``"mcts"`` (search guided by
      ``p·D``): the sampler already tilts toward ``q``, so ``w = 1`` (SIR is exact as the candidate count grows;
      the MCTS density is intractable and is treated as ``q``).

    Self-normalise the result with :func:`importance_weights`.
    """
    if weighting not in GCN_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {GCN_WEIGHTINGS}, got {weighting!r}.")
    if sampler not in GCN_SAMPLERS:
        raise ValueError(f"sampler must be one of {GCN_SAMPLERS}, got {sampler!r}.")
    if sampler != "model":
        return torch.zeros_like(_upcast(logits))
    logits = _upcast(logits)
    return F.logsigmoid(logits) if weighting == "d" else logits
