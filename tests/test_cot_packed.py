"""CoT's step computes logits only for masked-in tokens (packed LM head, issue 2's speed work): the loss must be
the same number as the original full-block formulas and the gradients equal to float32 rounding, with padding
in both real and generated rows, for gamma = 0 and gamma > 0, and with a generator that cannot pack."""

import pytest
import torch
import torch.nn.functional as F

from hfcoop import CoTConfig, CoTTrainer
from hfcoop.losses import cot_generator_loss, mediator_loss
from hfcoop.modeling import completion_logits, sequence_inputs, uses_mask_logits_to_keep
from hfcoop.batching import pad_columns


def _full_logprobs(logits, labels):
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def reference_terms(trainer, model, batch, gen_ids, gen_mask):
    """CoT's mediator and generator terms as first written: (B, C, V) logits for every completion position."""
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    real_ids, real_mask = batch["completion_input_ids"], batch["completion_mask"]
    b, length = gen_ids.shape
    width = max(real_ids.shape[1], length)
    real_ids_w, real_mask_w = pad_columns(real_ids, real_mask, width, 0)
    gen_ids_w, gen_mask_w = pad_columns(gen_ids, gen_mask, width, 0)
    med_ids, med_mask = torch.cat([real_ids_w, gen_ids_w]), torch.cat([real_mask_w, gen_mask_w])
    med = trainer.lm_inputs(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), med_ids, med_mask)
    gen = trainer.lm_inputs(prompt_ids, prompt_mask, gen_ids, gen_mask)
    gen_logits, med_logits = model(generator=gen, companion=med)
    lp = _full_logprobs(med_logits, med_ids)
    loss_m = mediator_loss(lp[:b], real_mask_w, lp[b:], gen_mask_w)
    g, m = F.log_softmax(gen_logits.float(), -1), F.log_softmax(med_logits[b:, :length].detach().float(), -1)
    kl = (g.exp() * (g - m)).sum(-1)
    gamma = trainer.args.gamma
    loss_g = cot_generator_loss(kl, gen_mask, _full_logprobs(gen_logits, gen_ids) if gamma else None, gamma)
    return loss_m / trainer.args.max_completion_length, loss_g / trainer.args.max_completion_length  # token budget


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_packed_step_equals_full_block_step(tiny_lm, coco_prompt_completion, tmp_path, gamma):
    args = CoTConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, max_completion_length=8,
                     max_prompt_length=16, gamma=gamma, report_to="none", use_cpu=True)  # fmt: skip
    trainer = CoTTrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion)
    model = trainer.model.train()
    torch.manual_seed(0)
    with torch.no_grad():  # a mediator that differs from the generator, so the KL and its gradient are not 0
        for p in model.companion.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["completion_mask"] == 0).any()  # real rows of different lengths
    gen_ids, gen_mask = trainer.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    gen_mask = gen_mask.clone()
    gen_mask[0, 3:] = 0  # rows that stopped early
    gen_mask[2, 1:] = 0
    gen_ids = gen_ids.masked_fill(gen_mask == 0, 0)
    trainer.sample = lambda *a, **k: (gen_ids, gen_mask)
    assert uses_mask_logits_to_keep(model.generator)

    for step, term in ((0, 0), (1, 1)):  # a mediator step, then a generator step (the papers' order)
        model.zero_grad(set_to_none=True)
        reference = reference_terms(trainer, model, batch, gen_ids, gen_mask)[term]
        reference.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        trainer.state.global_step = step
        loss = trainer.cooperative_step(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-5)
        assert grads.keys() == ref_grads.keys() and grads  # one model's gradients, the same ones
        assert all(n.startswith("companion." if term == 0 else "generator.") for n in grads)
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_completion_logits_mask_fallback_matches(tiny_lm, monkeypatch):
    """Models that cannot take a boolean logits_to_keep get the same packed rows by indexing the full block."""
    from transformers import AutoModelForCausalLM

    import hfcoop.modeling as modeling

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    ids = torch.tensor([[10, 11, 12, 0], [13, 14, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    inputs = sequence_inputs(prompt_ids, prompt_mask, ids, mask)
    with torch.no_grad():
        full = completion_logits(model, inputs, 4)
        packed = completion_logits(model, inputs, 4, mask)
        monkeypatch.setitem(modeling._MASK_LOGITS_TO_KEEP, type(model), False)
        fallback = completion_logits(model, inputs, 4, mask)
    assert packed.shape == (5, full.shape[-1])
    torch.testing.assert_close(packed, full[mask.bool()])
    torch.testing.assert_close(fallback, full[mask.bool()])


def test_mle_packed_step_equals_full_block_step(tiny_lm, coco_prompt_completion, tmp_path):
    from hfcoop import MLEConfig, MLETrainer

    args = MLEConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, max_completion_length=8,
                     max_prompt_length=16, report_to="none", use_cpu=True)  # fmt: skip
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion)
    model = trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    ids, mask = batch["completion_input_ids"], batch["completion_mask"]
    assert (mask == 0).any()
    logits, _ = model(generator=trainer.lm_inputs(batch["prompt_input_ids"], batch["prompt_attention_mask"], ids, mask))
    reference = -(_full_logprobs(logits, ids) * mask).sum(-1).mean() / args.max_completion_length
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss = trainer.cooperative_step(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-5)
    for name, grad in ((n, p.grad) for n, p in model.named_parameters() if p.grad is not None):
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
