"""The papers' update order: the companion is updated, then the generator reads the UPDATED companion.

CoT (Alg. 1: N_m mediator updates, then the generator against the updated mediator on fresh samples), ψ-MLE (Alg. 1:
the ratio estimator, then the generator) and GCN (train D, then draw q̂ and update p with the new D). Each optimizer
step trains one model. The toy: SGD without momentum or clipping, so the companion's update is computable by hand
(``C1 = C0 - lr * grad L_c(C0)``, the gradient taken here with the papers' loss functions on the step's rows); the
generator's first signal must be C1's output on the generator step's fresh samples.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.batching import concat_rows, pad_to_common_width
from hfcoop.losses import discriminator_loss, mediator_loss, packed_token_logprobs
from hfcoop.trainers.psi_mle import psi_mle_ratio_loss
import hfcoop.trainers.cot as cot_module
import hfcoop.trainers.gcn as gcn_module
import hfcoop.trainers.psi_mle as psi_module

LR = 0.5
TRAINERS = {  # trainer, config, extra settings, module and function whose first call receives the signal, its arg
    "cot": (CoTTrainer, CoTConfig, {}, cot_module, "per_token_kl", 1),
    "psi_mle": (PsiMLETrainer, PsiMLEConfig, {"mixture_weight": 0.3}, psi_module, "importance_weights", 0),
    "gcn": (GCNTrainer, GCNConfig, {"num_candidates": 2}, gcn_module, "gcn_log_weights", 0),
}


def settings(tmp_path, **kw):
    return dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=LR, optim="sgd",
                max_grad_norm=0.0, max_completion_length=6, report_to="none", save_strategy="no", logging_steps=1,
                disable_tqdm=True, lr_scheduler_type="constant", **kw)  # fmt: skip


class Snapshots(TrainerCallback):
    """The pair's weights after each optimizer step (``on_step_end`` runs after the update)."""

    def __init__(self, trainer):
        self.trainer, self.states = trainer, {0: copy.deepcopy(trainer.pair.state_dict())}

    def on_step_end(self, args, state, control, **kwargs):
        self.states[state.global_step] = copy.deepcopy(self.trainer.pair.state_dict())


def changed(a: dict, b: dict, prefix: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def spy(trainer, monkeypatch, module, name):
    """Records (step, args) of every call of ``module.name`` and (step, samples) of every ``trainer.sample``."""
    calls, samples = [], []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: (calls.append((trainer.state.global_step, a)), real(*a, **k))[1])
    sample = trainer.sample
    trainer.sample = lambda *a, **k: (samples.append((trainer.state.global_step, a, sample(*a, **k))), samples[-1][2])[1]
    batches = []
    step = trainer.cooperative_step
    trainer.cooperative_step = lambda model, inputs: (batches.append(inputs), step(model, inputs))[1]
    return calls, samples, batches


def companion_loss(name, trainer, pair, batch, gen_ids, gen_mask):
    """The companion's loss of a step, from the papers' loss functions (hfcoop.losses), on ``pair``'s companion."""
    prompts, prompts_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    real = (batch["completion_input_ids"], batch["completion_mask"])
    pad = trainer.processing_class.pad_token_id
    n = prompts.shape[0]
    if name == "cot":  # Eq. (9): the mediator's NLL of real and generated rows, scaled to the token budget
        ids, mask = concat_rows([real, (gen_ids, gen_mask)], pad)
        _, logits = pair(companion=trainer.lm_inputs(prompts.repeat(2, 1), prompts_mask.repeat(2, 1), ids, mask, True))
        logprobs = packed_token_logprobs(logits, ids, mask)
        return mediator_loss(logprobs[:n], mask[:n], logprobs[n:], mask[n:]) / trainer.args.max_completion_length
    if name == "psi_mle":  # Eq. 11 / Table 4 against the mixture, m = 0.3
        ids, mask = concat_rows([real, (gen_ids, gen_mask)], pad)
        _, logits = pair(companion=trainer.companion_inputs(prompts.repeat(2, 1), prompts_mask.repeat(2, 1), ids, mask))
        log_r = logits.squeeze(-1).float()
        return psi_mle_ratio_loss(log_r[:n], log_r[n:], "logistic", "mixture", 0.3)
    k = gen_ids.shape[0] // n  # GCN: D on real rows vs num_candidates samples per prompt
    rows = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(k)])
    (r_ids, r_mask), (g_ids, g_mask) = pad_to_common_width([real, (gen_ids, gen_mask)], pad)
    _, logits = pair(companion=trainer.companion_inputs(prompts[rows], prompts_mask[rows], torch.cat([r_ids, g_ids]),
                                                        torch.cat([r_mask, g_mask])))  # fmt: skip
    logits = logits.squeeze(-1).float()
    return discriminator_loss(logits[:n], logits[n:])


def companion_output(name, trainer, pair, batch, gen_ids, gen_mask):
    """What the generator's loss must read: the companion's output on the generator step's rows (eval mode)."""
    prompts, prompts_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    pad = trainer.processing_class.pad_token_id
    with torch.no_grad():
        if name == "cot":  # the mediator's next-token logits on the fresh samples, packed
            _, logits = pair(companion=trainer.lm_inputs(prompts, prompts_mask, gen_ids, gen_mask, True))
            return logits
        if name == "psi_mle":  # log r on {y} ∪ {x}
            ids, mask = concat_rows([(batch["completion_input_ids"], batch["completion_mask"]), (gen_ids, gen_mask)], pad)
            _, logits = pair(companion=trainer.companion_inputs(prompts.repeat(2, 1), prompts_mask.repeat(2, 1), ids,
                                                                mask))  # fmt: skip
            return logits.squeeze(-1)
        rows = torch.arange(prompts.shape[0]).repeat_interleave(gen_ids.shape[0] // prompts.shape[0])
        _, logits = pair(companion=trainer.companion_inputs(prompts[rows], prompts_mask[rows], gen_ids, gen_mask))
        return logits.squeeze(-1)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_generator_reads_the_companion_after_its_update(name, tiny_lm, coco_prompt_completion, tmp_path, monkeypatch):
    trainer_cls, config_cls, extra, module, function, arg = TRAINERS[name]
    args = config_cls(**settings(tmp_path, max_steps=2, **extra))
    trainer = trainer_cls(tiny_lm, train_dataset=coco_prompt_completion, args=args)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    calls, samples, batches = spy(trainer, monkeypatch, module, function)
    c0, initial = copy.deepcopy(trainer.pair), copy.deepcopy(trainer.pair)
    trainer.train()
    s0, s1, s2 = (snapshots.states[i] for i in range(3))

    # Step 1 trains the companion alone, step 2 the generator alone.
    assert changed(s0, s1, "companion.") and not changed(s0, s1, "generator.")
    assert changed(s1, s2, "generator.") and not changed(s1, s2, "companion.")

    # The companion's update, by hand: C1 = C0 - lr * grad L_c(C0) on step 1's rows and samples.
    (_, _, (gen_ids, gen_mask)), = [s for s in samples if s[0] == 0]
    loss = companion_loss(name, trainer, c0, batches[0], gen_ids, gen_mask)
    params = dict(c0.companion.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    with torch.no_grad():
        for (key, p), g in zip(params.items(), grads):
            if g is not None:
                p -= LR * g
            torch.testing.assert_close(p, s1[f"companion.{key}"], atol=1e-6, rtol=1e-5)

    # The generator's first signal is the updated companion's output on step 2's fresh samples.
    step, signal_args = calls[0]
    assert step == 1 and len(calls) == 1
    (_, _, (gen_ids, gen_mask)), = [s for s in samples if s[0] == 1]
    c0.eval()
    expected = companion_output(name, trainer, c0, batches[1], gen_ids, gen_mask)
    signal = signal_args[arg]
    if name == "cot":
        signal = signal.squeeze(0)
    elif name == "psi_mle":  # m = 0.3: both halves weigh, so every row's log r reaches the weights
        assert signal.shape == expected.shape
    torch.testing.assert_close(signal.float(), expected.float(), atol=1e-5, rtol=1e-5)
    before = companion_output(name, trainer, initial.eval(), batches[1], gen_ids, gen_mask)
    assert (before.float() - expected.float()).abs().max() > 1e-4  # the update changed the signal


def test_a_copy_mediator_gives_the_first_generator_step_a_gradient(tiny_lm, coco_text, tmp_path):
    """The default mediator is a copy of G: against the copy itself KL(G||M) = 0 and the generator's gradient is 0.
    In the papers' order the first generator step reads the mediator after its first update."""
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=CoTConfig(**settings(tmp_path, max_steps=2) | {
        "max_grad_norm": 1e6}))  # fmt: skip
    trainer.train()
    norms = [(e["step"], e["generator/grad_norm"]) for e in trainer.state.log_history if "generator/grad_norm" in e]
    kls = [e["generator/kl_per_token"] for e in trainer.state.log_history if "generator/kl_per_token" in e]
    assert norms[0][0] == 2 and norms[0][1] > 1e-3, norms
    assert kls[0] > 1e-4, kls


@pytest.mark.parametrize(
    "trainer_cls, config_cls, extra, expected",
    [  # C: a companion step, G: a generator step; hand-written for global steps 0..8
        (CoTTrainer, CoTConfig, {"mediator_steps": 2, "companion_warmup_steps": 1}, "CCCGCCGCC"),
        (CoTTrainer, CoTConfig, {}, "CGCGCGCGC"),
        (PsiMLETrainer, PsiMLEConfig, {"companion_warmup_steps": 3}, "CCCCGCGCG"),
        (GCNTrainer, GCNConfig, {"num_candidates": 2}, "CGCGCGCGC"),
    ],
)
def test_the_cycle_of_updates(trainer_cls, config_cls, extra, expected, tiny_lm, coco_text, tmp_path):
    trainer = trainer_cls(tiny_lm, train_dataset=coco_text, args=config_cls(**settings(tmp_path, **extra)))
    steps = ""
    for step in range(len(expected)):
        trainer.state.global_step = step
        steps += "G" if trainer.is_generator_step() else "C"
    assert steps == expected


def test_an_optimizer_step_leaves_the_other_model_alone(tiny_lm, coco_text, tmp_path):
    """Zero-filled gradients (what DeepSpeed's ZeRO optimizers hand the inner optimizer for the model a step does
    not train) must not move that model through its momentum: the step skips its parameter groups."""
    args = PsiMLEConfig(**settings(tmp_path, max_steps=1))
    trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=args)
    trainer.create_optimizer()
    optimizer = trainer.optimizer
    for group in optimizer.param_groups:
        group["momentum"] = 0.9
    roles = trainer.pair.role_parameters()
    for p in roles["generator"] + roles["companion"]:
        p.grad = torch.ones_like(p)
    trainer.state.global_step = 1  # a generator step: momentum builds up in the generator's groups only
    optimizer.step()
    gen_before = [p.detach().clone() for p in roles["generator"]]
    comp_before = [p.detach().clone() for p in roles["companion"]]
    for p in roles["generator"] + roles["companion"]:
        p.grad = torch.zeros_like(p)
    trainer.state.global_step = 2  # a companion step: the generator's zero gradients must not apply its momentum
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(gen_before, roles["generator"]))
    assert all(torch.equal(a, p) for a, p in zip(comp_before, roles["companion"]))  # zero grad, no momentum yet
    assert all(p.grad is None for p in roles["generator"])


def test_ddp_without_unused_parameters_is_refused(tmp_path):
    """Each step leaves one model's parameters unused: DDP must search for them, so turning that off is an early
    error naming the fix (it used to fail inside DDP's reducer on the first step)."""
    with pytest.raises(ValueError, match="ddp_find_unused_parameters=False cannot train PsiMLE: each step trains one"):
        PsiMLEConfig(output_dir=str(tmp_path), ddp_find_unused_parameters=False)
    assert PsiMLEConfig(output_dir=str(tmp_path)).ddp_find_unused_parameters is True

