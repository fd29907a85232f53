"""``companion_warmup_steps``: the first steps train the companion alone, then the papers' cycle starts."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, GenereConfig, MLEConfig, PsiMLEConfig, PsiMLETrainer

CASES = {
    "cot": (CoTConfig, CoTTrainer, {"mediator_steps": 2}, "generator/loss"),
    "psi_mle": (PsiMLEConfig, PsiMLETrainer, {}, "generator/loss"),
    "gcn_model": (GCNConfig, GCNTrainer, {"sampler": "model", "num_candidates": 2}, "generator/loss"),
    "gcn_resample": (GCNConfig, GCNTrainer, {"sampler": "resample", "num_candidates": 2}, "generator/loss"),
}


class Snapshots(TrainerCallback):
    """Generator and companion weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append(tuple({k: v.detach().clone() for k, v in m.state_dict().items()}
                                for m in (model.generator, model.companion)))  # fmt: skip


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_generator_frozen_during_warmup_then_trains(case, tiny_lm, coco_text, tmp_path):
    config_cls, trainer_cls, extra, generator_metric = CASES[case]
    args = config_cls(
        output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-2,
        max_completion_length=5, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        companion_warmup_steps=2, **extra,
    )  # fmt: skip
    assert args.ddp_find_unused_parameters  # DDP must tolerate the generator's missing gradients
    snaps = Snapshots()
    trainer = trainer_cls(tiny_lm, train_dataset=coco_text, args=args, callbacks=[snaps])
    gen0 = {k: v.clone() for k, v in trainer.pair.generator.state_dict().items()}
    comp0 = {k: v.clone() for k, v in trainer.pair.companion.state_dict().items()}
    trainer.train()
    # Warm-up (steps 1-2): the companion alone. Then the papers' cycle, counted from the end of the warm-up: CoT's
    # N_m = 2 mediator steps (3, 4) then the generator (5); ψ-MLE / GCN one companion step (3), the generator (4).
    expected = "CCCCG" if case == "cot" else "CCCGC"
    states = [(gen0, comp0), *snaps.steps]
    trained = ""
    for (g_before, c_before), (g_after, c_after) in zip(states, states[1:]):
        assert changed(g_before, g_after) != changed(c_before, c_after)  # exactly one model per step
        trained += "G" if changed(g_before, g_after) else "C"
    assert trained == expected
    logged = [generator_metric in entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [c == "G" for c in expected]


@pytest.mark.parametrize("config_cls", [MLEConfig, GenereConfig])
def test_warmup_refused_without_a_learned_companion(config_cls, tmp_path):
    with pytest.raises(ValueError, match="companion_warmup_steps needs a learned companion"):
        config_cls(output_dir=str(tmp_path), companion_warmup_steps=3, report_to="none")
    with pytest.raises(ValueError, match=">= 0"):
        CoTConfig(output_dir=str(tmp_path), companion_warmup_steps=-1, report_to="none")
