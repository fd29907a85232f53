"""CoT's pure losses against hand-computed values (Eq. 9, Eq. 14, the REINFORCE term of Sec. 3.1.3)."""

import math

import pytest

import torch

from hfcoop.losses import cot_generator_loss, mediator_loss, per_token_kl, token_logprobs


def test_token_logprobs_matches_log_softmax():
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(logits, labels), expected)


def test_kl_by_hand_two_tokens():
    # pi_g = (0.5, 0.5), pi_m = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    gen = torch.log(torch.tensor([[[0.5, 0.5]]]))
    med = torch.log(torch.tensor([[[0.25, 0.75]]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert abs(per_token_kl(gen, med).item() - expected) < 1e-6


def test_generator_loss_masks_and_averages_sequences():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # per-sequence sums over unmasked positions: 0.3 and 0.4 -> mean 0.35
    assert abs(cot_generator_loss(kl, mask).item() - 0.35) < 1e-6


def test_generator_loss_reinforce_term_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3]])
    lp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1]])
    gamma = 0.5
    # prefix log-probs log G(s_t): 0, -1, -3 ; REINFORCE term = gamma * sum_t KL_t * logG(s_t)
    expected = 0.6 + gamma * (0.1 * 0 + 0.2 * -1 + 0.3 * -3)
    loss = cot_generator_loss(kl, mask, lp, gamma)
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    # d/d lp_tau = gamma * sum_{t > tau} KL_t : (0.5, 0.3, 0) * gamma
    torch.testing.assert_close(lp.grad, torch.tensor([[0.5, 0.3, 0.0]]) * gamma)


def test_eq14_gradient_equals_autograd_of_kl():
    """grad of sum KL(pi_g||pi_m) equals Eq. (14): sum_v grad pi_g (log pi_m - log pi_g), with a minus sign."""
    torch.manual_seed(0)
    gen_logits = torch.randn(2, 4, 6, requires_grad=True)
    med_logits = torch.randn(2, 4, 6)
    per_token_kl(gen_logits, med_logits).sum().backward()
    autograd = gen_logits.grad.clone()
    gen_logits.grad = None
    pi_g = torch.softmax(gen_logits, -1)
    advantage = (torch.log_softmax(med_logits, -1) - torch.log_softmax(gen_logits, -1)).detach()
    (-(pi_g * advantage).sum()).backward()  # maximise J => minimise -J
    torch.testing.assert_close(autograd, gen_logits.grad)


def test_chunked_kl_equals_unchunked_values_and_gradients():
    torch.manual_seed(1)
    gen = torch.randn(3, 5, 11, requires_grad=True)
    med = torch.randn(3, 5, 11)
    full = per_token_kl(gen, med)
    (g_full,) = torch.autograd.grad(full.sum(), gen)
    chunked = per_token_kl(gen, med, chunk_size=4)
    (g_chunk,) = torch.autograd.grad(chunked.sum(), gen)
    torch.testing.assert_close(full, chunked)
    torch.testing.assert_close(g_full, g_chunk)


def test_mediator_loss_is_balanced_nll():
    real_lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    real_mask = torch.tensor([[1, 1], [1, 0]])
    gen_lp = torch.tensor([[-3.0, -1.0]])
    gen_mask = torch.tensor([[1, 1]])
    # real NLLs 3 and 0.5 -> 1.75 ; generated NLL 4 ; balanced: (1.75 + 4) / 2
    assert abs(mediator_loss(real_lp, real_mask, gen_lp, gen_mask).item() - 2.875) < 1e-6


# ---------------------------------------------------------------- the shared reductions, by hand (mutation testing)
def test_packed_logprobs_masked_mean_and_token_budget_by_hand():
    from hfcoop.losses import masked_token_mean, packed_token_logprobs, scale_to_token_budget, sequence_nll

    # Two rows, vocabulary 3; the mask keeps 2 + 1 tokens, whose logits are packed row-major.
    labels = torch.tensor([[2, 0, 1], [1, 2, 2]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    packed = torch.tensor([[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0], [0.0, math.log(4.0), 0.0]])
    lp = packed_token_logprobs(packed, labels, mask)
    expected = torch.tensor([[math.log(2 / 4), math.log(3 / 5), 0.0], [math.log(4 / 6), 0.0, 0.0]])
    torch.testing.assert_close(lp, expected)
    assert masked_token_mean(lp, mask).item() == pytest.approx(float(expected.sum()) / 3)
    assert masked_token_mean(lp, torch.zeros_like(mask)).item() == 0.0  # no token: 0, not NaN
    assert masked_token_mean(lp, torch.tensor([[0, 1, 0], [0, 0, 0]])).item() == pytest.approx(math.log(3 / 5))
    torch.testing.assert_close(sequence_nll(lp, mask), -expected.sum(-1))
    assert scale_to_token_budget(torch.tensor(6.0), 4).item() == 1.5
    torch.testing.assert_close(sequence_nll(expected.unsqueeze(0), mask.unsqueeze(0)), -expected.sum(-1).unsqueeze(0))


def test_genere_length_scale_by_hand():
    from hfcoop.losses import genere_length_scale

    assert genere_length_scale("per_token", torch.tensor(30.0), torch.tensor(4.0)) == 7.5  # the step's mean |y|
    assert genere_length_scale("per_token", 12.0, 0.0) == 12.0  # no rows: no division by 0
    assert genere_length_scale("sum", 30.0, 4.0) == 1.0  # the paper's summed reward, unscaled


def test_kl_without_grad_in_chunks_equals_the_formula():
    """The no-grad path (evaluation, logging) chunks positions too: every chunk size, dividing B*T or not, gives the
    formula's values at every (row, position)."""
    torch.manual_seed(1)
    gen, med = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    g, m = torch.log_softmax(gen, -1), torch.log_softmax(med, -1)
    expected = (g.exp() * (g - m)).sum(-1)
    with torch.no_grad():
        for chunk in (None, 1, 4, 6, 7):
            torch.testing.assert_close(per_token_kl(gen, med, chunk), expected, msg=str(chunk))
    gen.requires_grad_(True)  # with grad (the generator's step): the same values, in chunks of 4
    torch.testing.assert_close(per_token_kl(gen, med, 4), expected)


def test_generator_loss_with_padding_and_the_reinforce_term():
    """Padded positions carry neither KL nor prefix log-probability (a 0 in the mask, not a division by it)."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # row 1: 0.6 + 0.5 * (0.2 * -1 + 0.3 * -3); row 2: 0.9 + 0.5 * (0.5 * -0.5); mean over the rows
    expected = ((0.6 + 0.5 * (-0.2 - 0.9)) + (0.9 + 0.5 * (-0.25))) / 2
    assert cot_generator_loss(kl, mask, lp, 0.5).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="^cot_generator_loss: gamma > 0 needs gen_logprobs$"):
        cot_generator_loss(kl, mask, None, 0.5)
