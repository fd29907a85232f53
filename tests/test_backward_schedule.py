"""The step's two backward passes (companion's loss first, then the generator's) train exactly like one backward of
the summed loss: no term reaches both models, so only the peak memory changes (benchmarks/memory.py)."""

import pytest
import torch
from peft import LoraConfig

from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, PsiMLEConfig, PsiMLETrainer

TRAINERS = {
    "cot": (CoTTrainer, CoTConfig, {}),
    "psi_mle": (PsiMLETrainer, PsiMLEConfig, {}),
    "gcn": (GCNTrainer, GCNConfig, {"num_candidates": 2, "mle_weight": 0.5}),
}


def run(name, tiny_lm, data, out, shared_base, backward_first):
    trainer_cls, config_cls, extra = TRAINERS[name]
    args = config_cls(
        output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-2, optim="sgd",
        max_completion_length=6, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        shared_base=shared_base, **extra,
    )  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], task_type="CAUSAL_LM")
    trainer = trainer_cls(tiny_lm, args=args, train_dataset=data, peft_config=lora if shared_base else None)
    if not backward_first:
        trainer.companion_backward_first = lambda model: False
    init = {k: v.clone() for k, v in trainer.pair.state_dict().items()}
    calls = []
    backward = trainer.accelerator.backward
    trainer.accelerator.backward = lambda loss, **kw: (calls.append(1), backward(loss, **kw))[1]
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer, init, losses, len(calls)


@pytest.mark.parametrize("shared_base", [False, True], ids=["two_models", "shared_base"])
@pytest.mark.parametrize("name", list(TRAINERS))
def test_companion_first_schedule_trains_like_one_backward(name, shared_base, tiny_lm, coco_text, tmp_path):
    first, init, first_losses, first_calls = run(name, tiny_lm, coco_text, tmp_path / "first", shared_base, True)
    joint, _, joint_losses, joint_calls = run(name, tiny_lm, coco_text, tmp_path / "joint", shared_base, False)
    assert (first_calls, joint_calls) == (6, 3)  # one process: the two-pass schedule is the default
    assert first_losses == pytest.approx(joint_losses, rel=1e-6, abs=1e-7)
    a, b = first.pair.state_dict(), joint.pair.state_dict()
    assert a.keys() == b.keys()
    for key in a:  # the updates agree to float rounding (shared-base CoT's generator moves only ~1e-6 in 3 steps)
        assert torch.allclose(a[key] - init[key], b[key] - init[key], rtol=1e-3, atol=1e-9), key
    moved = {k for k in a if (a[k] - init[k]).abs().max() > 1e-8}
    companion = {k for k in moved if f".{first.companion_name}." in k or k.startswith("companion.")}
    assert companion and moved - companion  # both models trained: the comparison covers both
