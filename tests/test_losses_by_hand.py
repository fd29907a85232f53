"""Pure loss helpers against hand-computed values: edge cases, defaults and error messages that the algorithm tests
do not reach (written to kill the survivors of the mutation run, benchmarks/results/mutation.md)."""

import math

import pytest
import torch

from hfcoop.losses import (
    bregman_f,
    density_ratio_loss,
    gcn_log_weights,
    genere_gamma_scores,
    genere_gamma_update,
    genere_mixture_proportions,
    importance_weights,
    mixture_to_data_log_ratio,
    weighted_nll_loss,
)


def test_mixture_to_data_ratio_at_the_ends():
    log_r = torch.tensor([0.3, -1.2])
    torch.testing.assert_close(mixture_to_data_log_ratio(log_r, 0.0), log_r)  # p_mix = p_theta: r itself
    torch.testing.assert_close(mixture_to_data_log_ratio(log_r, 1.0), torch.zeros(2))  # p_mix = p_data: ratio 1
    inside = mixture_to_data_log_ratio(log_r, 0.5)  # r / (r/2 + 1/2), by hand
    torch.testing.assert_close(inside, (log_r.exp() / (0.5 * log_r.exp() + 0.5)).log())


def test_importance_weights_edge_cases_by_hand():
    # One sample, no self-normalisation: c = 1/1, w = r.
    torch.testing.assert_close(importance_weights(torch.tensor([0.5]), self_normalize=False), torch.tensor([math.exp(0.5)]))
    # Float64 in, float64 out (every intermediate keeps the input's dtype).
    w64 = importance_weights(torch.tensor([0.1, 0.2], dtype=torch.float64), groups=torch.tensor([0, 1]))
    assert w64.dtype == torch.float64
    # Large log-weights: per-group max subtraction keeps them finite; each group normalised to 1/num_groups.
    big = importance_weights(torch.tensor([800.0, 801.0, 5.0]), groups=torch.tensor([0, 0, 1]))
    e = 1 / (1 + math.e)
    torch.testing.assert_close(big, torch.tensor([e / 2, (1 - e) / 2, 0.5]))
    with pytest.raises(ValueError, match=r"importance_weights: \(3,\) sample weights for \(2,\) log-weights"):
        importance_weights(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"importance_weights: \(3,\) group ids for \(2,\) log-weights"):
        importance_weights(torch.zeros(2), groups=torch.zeros(3, dtype=torch.long))


def test_weighted_nll_and_density_ratio_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"weighted_nll_loss: \(3,\) weights for \(2,\) sequences \(one weight per"):
        weighted_nll_loss(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"denominator: weights of shape \(3,\) for scores of shape \(2,\)"):
        density_ratio_loss(torch.zeros(2), torch.zeros(2), "logistic", None, torch.ones(3))
    with pytest.raises(ValueError, match=r"numerator: weights of shape \(3,\) for scores of shape \(2,\)"):
        density_ratio_loss(torch.zeros(2), torch.zeros(2), "logistic", torch.ones(3), None)
    with pytest.raises(ValueError, match=r"bregman_f must be one of .*got 'kl'"):
        bregman_f(torch.ones(1), "kl")


def test_weighted_sample_means_divide_by_the_weights_sum():
    """Eq. 11 with weights that do not sum to 1 (unnormalised counts): each expectation is a weighted mean."""
    num, den = torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0, math.log(2.0)])
    loss = density_ratio_loss(num, den, "logistic", torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
    den_term = (math.log(2.0) + math.log(3.0)) / 2  # log(1 + r) at r = 1, 2, equal weights
    num_term = (1 * math.log(1 / 2) + 3 * math.log(3 / 4)) / 4  # log(r / (1 + r)) at r = 1, 3, weights 1:3
    assert loss.item() == pytest.approx(den_term - num_term, abs=1e-6)


def test_defaults_are_the_papers():
    t = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(bregman_f(t), bregman_f(t, "logistic"))
    logits = torch.tensor([0.3, -0.4])
    torch.testing.assert_close(gcn_log_weights(logits), gcn_log_weights(logits, "d", "model"))
    torch.testing.assert_close(importance_weights(logits), importance_weights(logits, alpha=1.0))
    delta = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    scores = genere_gamma_scores(torch.tensor([-2.0]), -3.0, delta)  # sigma = 1: (log p - mu) * delta
    torch.testing.assert_close(scores, torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    gamma = torch.tensor([0.2, -0.2], dtype=torch.float64)
    torch.testing.assert_close(genere_mixture_proportions(gamma), genere_mixture_proportions(gamma, 1.0, 4096, 0))


def test_genere_shrinkage_and_proportions_by_hand():
    gamma = torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(genere_gamma_update(gamma, torch.tensor([2.0, 0.0], dtype=torch.float64), 4, 0.5, 0.5),
                               torch.tensor([0.625, -0.5], dtype=torch.float64))  # 0.5 * (gamma + 0.5 * (2, 0) / 4)
    # sigma = 0: no perturbation, pi = softmax(gamma) exactly, also for a batch of gammas (softmax over the last dim)
    torch.testing.assert_close(genere_mixture_proportions(gamma, 0.0), torch.softmax(gamma, -1))
    batch = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(genere_mixture_proportions(batch, 0.0), torch.softmax(batch, -1))
    # sigma > 1 spreads the draws: pi moves toward uniform (E softmax(gamma + delta) shrinks the gap)
    pi1, pi3 = genere_mixture_proportions(gamma, 1.0), genere_mixture_proportions(gamma, 3.0)
    assert pi1.dtype == torch.float64 and 0.5 < float(pi3[0]) < float(pi1[0]) < float(torch.softmax(gamma, -1)[0])


def test_effective_sample_size_baseline_and_sampling_probs_by_hand():
    from hfcoop.losses import effective_sample_size, genere_baseline_update, genere_sampling_probs

    # Kish ESS / n = (sum w)^2 / (n sum w^2): equal weights 1, one heavy weight (1, 1, 1, 5): 64 / (4 * 28)
    assert effective_sample_size(torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([1.0, 1.0, 1.0, 5.0])).item() == pytest.approx(64 / 112)
    assert effective_sample_size(torch.zeros(3)).item() == 0.0  # no mass: 0, not NaN
    # mu <- alpha mu + (1 - alpha) mean: alpha = 0.9, mu = -10, mean -5 -> -9.5
    mu = genere_baseline_update(torch.tensor(-10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64), 0.9)
    assert mu.item() == pytest.approx(-9.5)
    # softmax(gamma + delta): gamma = (0, ln 2), delta = (ln 3, 0) -> (3, 2) / 5; batched draws softmax per row
    probs = genere_sampling_probs(torch.tensor([0.0, math.log(2.0)]), torch.tensor([math.log(3.0), 0.0]))
    torch.testing.assert_close(probs, torch.tensor([0.6, 0.4]))
    rows = genere_sampling_probs(torch.zeros(2), torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]]))
    torch.testing.assert_close(rows, torch.tensor([[0.5, 0.5], [0.8, 0.2]]))


def test_small_or_integer_weights_and_unknown_samplers():
    from hfcoop.losses import effective_sample_size

    assert effective_sample_size(torch.tensor([1e-3, 1e-3])).item() == pytest.approx(1.0)  # scale-free, even tiny
    assert effective_sample_size(torch.tensor([1, 1, 1, 5])).item() == pytest.approx(64 / 112)  # integer counts
    half = effective_sample_size(torch.tensor([1.0, 1.0, 1.0, 5.0], dtype=torch.float16))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(64 / 112)  # computed in float32
    with pytest.raises(ValueError, match=r"^sampler must be one of .*got 'beam'\.$"):
        gcn_log_weights(torch.zeros(2), "d", "beam")
