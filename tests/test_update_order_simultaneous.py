"""``update_order="simultaneous"`` (issue 20): the option beside the papers' order.

After the companion warm-up a cycle is ``companion_steps() - 1`` companion steps, then ONE joint step: the generator's
loss (reading the companion as it was before the step) plus the companion's loss, one backward, one optimizer step
that moves both models, both losses on one sampling of G. The toys and spies are those of test_update_order.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

import hfcoop.trainers.base as base_module
from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, GenereConfig, MLEConfig, PsiMLEConfig, PsiMLETrainer
from hfcoop.trainers.base_config import UPDATE_ORDERS
from helpers import assert_resume_is_bit_identical
from test_update_order import TRAINERS, Snapshots, changed, companion_output, settings, spy

SIM = {"update_order": "simultaneous"}
WARMUP = {"cot": 1, "psi_mle": 0, "gcn": 0}  # CoT: a copy mediator's first signal is G itself (zero gradient)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_a_joint_step_reads_the_companion_before_it_and_moves_both(name, tiny_lm, coco_prompt_completion, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    trainer_cls, config_cls, extra, module, function, arg = TRAINERS[name]
    w = WARMUP[name]
    args = config_cls(**settings(tmp_path, max_steps=w + 1, companion_warmup_steps=w, **SIM, **extra))
    trainer = trainer_cls(tiny_lm, train_dataset=coco_prompt_completion, args=args)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    calls, samples, batches = spy(trainer, monkeypatch, module, function)
    pair = copy.deepcopy(trainer.pair)
    trainer.train()
    before, after = snapshots.states[w], snapshots.states[w + 1]

    # One optimizer step moved both models.
    assert changed(before, after, "generator.") and changed(before, after, "companion.")

    # The generator's signal is the companion's output as it was before the joint step, on the step's samples.
    (step, signal_args), = calls
    assert step == w
    gen_ids, gen_mask = [s[2] for s in samples if s[0] == w][0]
    pair.load_state_dict(before)
    pair.eval()
    expected = companion_output(name, trainer, pair, batches[w], gen_ids, gen_mask)
    signal = signal_args[arg].squeeze(0) if name == "cot" else signal_args[arg]
    torch.testing.assert_close(signal.float(), expected.float(), atol=1e-5, rtol=1e-5)
    pair.load_state_dict(after)
    updated = companion_output(name, trainer, pair, batches[w], gen_ids, gen_mask)
    assert (updated.float() - expected.float()).abs().max() > 1e-4  # the step's own update is not what it read


@pytest.mark.parametrize(
    "name, extra, order, expected",
    [  # sampling calls (sample_completions) per optimizer step, steps 0 and 1
        ("cot", {}, "papers", [1, 1]),  # a cycle (C, G) samples twice
        ("cot", {}, "simultaneous", [1, 1]),  # every step is joint: one sampling shared by both updates
        ("psi_mle", {"mixture_weight": 0.3}, "papers", [1, 1]),
        ("psi_mle", {"mixture_weight": 0.3}, "simultaneous", [1, 1]),
        ("gcn", {"num_candidates": 2}, "simultaneous", [1, 1]),
        ("gcn", {"num_candidates": 2, "sampler": "resample"}, "simultaneous", [2, 2]),  # K candidates vs 1: not shared
    ],
)
def test_a_joint_step_samples_once(name, extra, order, expected, tiny_lm, coco_prompt_completion, tmp_path,
                                   monkeypatch):  # fmt: skip
    trainer_cls, config_cls, _, module, function, _ = TRAINERS[name]
    args = config_cls(**settings(tmp_path, max_steps=2, update_order=order, **extra))
    trainer = trainer_cls(tiny_lm, train_dataset=coco_prompt_completion, args=args)
    draws = []
    real = base_module.sample_completions
    monkeypatch.setattr(base_module, "sample_completions",
                        lambda *a, **k: (draws.append(trainer.state.global_step), real(*a, **k))[1])  # fmt: skip
    _, samples, _ = spy(trainer, monkeypatch, module, function)
    trainer.train()
    assert [draws.count(step) for step in (0, 1)] == expected
    per_step = [[s[2] for s in samples if s[0] == step] for step in (0, 1)]
    if order == "simultaneous" and expected == [1, 1]:  # both updates of a joint step got the same draws
        for (ids_g, mask_g), (ids_c, mask_c) in per_step:
            assert ids_g is ids_c and mask_g is mask_c
    # papers' order: one cycle = one companion step + one generator step = two samplings per generator update
    generator_updates = 0
    for step in (0, 1):
        trainer.state.global_step = step
        generator_updates += trainer.is_generator_step()
    assert generator_updates == (2 if order == "simultaneous" else 1)


@pytest.mark.parametrize(
    "trainer_cls, config_cls, extra, expected",
    [  # C: companion only, J: joint (both), G: generator only; hand-written for global steps 0..8
        (CoTTrainer, CoTConfig, {"mediator_steps": 2}, "CJCJCJCJC"),
        (CoTTrainer, CoTConfig, {"mediator_steps": 2, "companion_warmup_steps": 1}, "CCJCJCJCJ"),
        (CoTTrainer, CoTConfig, {"mediator_steps": 3}, "CCJCCJCCJ"),
        (PsiMLETrainer, PsiMLEConfig, {"companion_warmup_steps": 3}, "CCCJJJJJJ"),
        (GCNTrainer, GCNConfig, {"num_candidates": 2}, "JJJJJJJJJ"),
    ],
)
def test_the_simultaneous_cycle(trainer_cls, config_cls, extra, expected, tiny_lm, coco_text, tmp_path):
    trainer = trainer_cls(tiny_lm, train_dataset=coco_text, args=config_cls(**settings(tmp_path, **SIM, **extra)))
    steps = ""
    for step in range(len(expected)):
        trainer.state.global_step = step
        joint, gen = trainer.is_joint_step(), trainer.is_generator_step()
        assert not joint or gen  # a joint step trains the generator
        steps += "J" if joint else "G" if gen else "C"
    assert steps == expected


def test_cot_with_two_mediator_steps_alternates_companion_and_joint_steps(tiny_lm, coco_text, tmp_path):
    args = CoTConfig(**settings(tmp_path, max_steps=4, mediator_steps=2, **SIM))
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    s = snapshots.states
    moved = ["".join(m[0].upper() for m in ("generator", "companion") if changed(s[i], s[i + 1], f"{m}.")) for i in range(4)]
    assert moved == ["C", "GC", "C", "GC"]
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert ["generator/loss" in e for e in logged] == [False, True, False, True]
    assert all("companion/loss" in e for e in logged)


def test_a_copy_mediator_gives_the_first_joint_step_zero_gradient(tiny_lm, coco_text, tmp_path):
    """The documented cost of the option: at step 0 the mediator is still the copy of G, KL(G||M) = 0."""
    args = CoTConfig(**settings(tmp_path, max_steps=2, **SIM) | {"max_grad_norm": 1e6})
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    trainer.train()
    norms = [e["generator/grad_norm"] for e in trainer.state.log_history if "generator/grad_norm" in e]
    assert norms[0] < 1e-6 < 1e-3 < norms[1], norms


def test_the_option_is_validated(tmp_path):
    assert UPDATE_ORDERS == ("papers", "simultaneous")
    assert CoTConfig(output_dir=str(tmp_path)).update_order == "papers"
    with pytest.raises(ValueError, match=r"update_order must be one of \('papers', 'simultaneous'\), got 'joint'"):
        CoTConfig(output_dir=str(tmp_path), update_order="joint")
    for config_cls in (MLEConfig, GenereConfig):
        with pytest.raises(ValueError, match=f"update_order='simultaneous' .*{config_cls.__name__} has none"):
            config_cls(output_dir=str(tmp_path), update_order="simultaneous")
        assert config_cls(output_dir=str(tmp_path)).update_order == "papers"


def test_the_option_is_refused_for_several_processes(tiny_lm, coco_text, tmp_path, monkeypatch):
    args = PsiMLEConfig(**settings(tmp_path, **SIM))
    monkeypatch.setattr(type(args), "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="update_order='simultaneous' runs in one process only; this run has 2"):
        PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=args)


def test_resume_is_bit_identical(tiny_lm, coco_text, tmp_path):
    def run(out, resume=None, callbacks=None):
        args = CoTConfig(output_dir=str(tmp_path / out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                         max_completion_length=6, report_to="none", logging_steps=1, disable_tqdm=True,
                         mediator_steps=2, save_strategy="steps" if out == "cut" else "no", save_steps=2, **SIM)  # fmt: skip
        trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.pair

    assert_resume_is_bit_identical(run, tmp_path, tiny_lm)
