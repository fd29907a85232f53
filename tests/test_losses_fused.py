"""The hand-written backward passes of token_logprobs and per_token_kl against plain autograd of the same formulas:
identical forward values, gradients equal to float32 rounding, for every chunking and for both inputs."""

import pytest
import torch
import torch.nn.functional as F

from hfcoop.losses import per_token_kl, token_logprobs


def reference_token_logprobs(logits, labels):
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def reference_kl(gen, med):
    gen_logp, med_logp = F.log_softmax(gen.float(), -1), F.log_softmax(med.float(), -1)
    return (gen_logp.exp() * (gen_logp - med_logp)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_values_and_gradient(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 5, 50)).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (3, 5))
    weights = torch.randn(3, 5)
    out = token_logprobs(logits, labels)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    ref = reference_token_logprobs(logits, labels)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert torch.equal(out, ref)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, ref_grad)
    with torch.no_grad():
        assert torch.equal(token_logprobs(logits, labels), ref)


@pytest.mark.parametrize("chunk_size", [None, 1024, 4, 7])
@pytest.mark.parametrize("med_grad", [False, True])
def test_per_token_kl_values_and_gradients(chunk_size, med_grad):
    torch.manual_seed(1)
    gen = (2 * torch.randn(3, 5, 40)).requires_grad_()
    med = (2 * torch.randn(3, 5, 40)).requires_grad_(med_grad)
    weights = torch.randn(3, 5)
    out = per_token_kl(gen, med, chunk_size)
    grads = torch.autograd.grad((out * weights).sum(), [gen, med] if med_grad else [gen])
    ref = reference_kl(gen.reshape(15, 40), med.reshape(15, 40)).view(3, 5)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [gen, med] if med_grad else [gen])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_per_token_kl_bf16_inputs_keep_their_dtype():
    gen = torch.randn(2, 3, 16, dtype=torch.bfloat16, requires_grad=True)
    med = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    (grad,) = torch.autograd.grad(per_token_kl(gen, med, 4).sum(), gen)
    assert grad.dtype == torch.bfloat16
    (ref,) = torch.autograd.grad(reference_kl(gen, med).sum(), gen)
    torch.testing.assert_close(grad.float(), ref.float(), rtol=2e-2, atol=1e-3)
