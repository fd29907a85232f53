"""``companion_warmup_steps``: the first steps train the companion alone, then both learn as usual."""

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
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
        max_completion_length=5, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        companion_warmup_steps=2, **extra,
    )  # fmt: skip
    assert args.ddp_find_unused_parameters  # DDP must tolerate the generator's missing gradients
    snaps = Snapshots()
    trainer = trainer_cls(tiny_lm, train_dataset=coco_text, args=args, callbacks=[snaps])
    gen0 = {k: v.clone() for k, v in trainer.pair.generator.state_dict().items()}
    comp0 = {k: v.clone() for k, v in trainer.pair.companion.state_dict().items()}
    trainer.train()
    (g1, c1), (g2, c2), (g3, _), (g4, _) = snaps.steps
    assert not changed(gen0, g1) and not changed(gen0, g2)  # warm-up: the generator is untouched...
    assert changed(comp0, c1) and changed(c1, c2)  # ...while the companion learns every step
    if case == "cot":  # N_m = 2 counts from the end of the warm-up: steps 3 (mediator only), 4 (both)
        assert not changed(g2, g3) and changed(g3, g4)
    else:
        assert changed(g2, g3) and changed(g3, g4)
    logged = [generator_metric in entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged == ([False, False, False, True] if case == "cot" else [False, False, True, True])


@pytest.mark.parametrize("config_cls", [MLEConfig, GenereConfig])
def test_warmup_refused_without_a_learned_companion(config_cls, tmp_path):
    with pytest.raises(ValueError, match="companion_warmup_steps needs a learned companion"):
        config_cls(output_dir=str(tmp_path), companion_warmup_steps=3, report_to="none")
    with pytest.raises(ValueError, match=">= 0"):
        CoTConfig(output_dir=str(tmp_path), companion_warmup_steps=-1, report_to="none")
