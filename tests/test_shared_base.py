"""Shared-base mode: generator and companion as two LoRA adapters (plus a scorer head) on one frozen base model."""

import os

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from helpers import StopAfter
from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, MLEConfig, MLETrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.shared_base import AdapterCompanion

COMMON = dict(per_device_train_batch_size=8, learning_rate=1e-2, max_completion_length=8, report_to="none",
              save_strategy="no", logging_steps=1, disable_tqdm=True, max_steps=3)  # fmt: skip
TRAINERS = {
    "cot": (CoTTrainer, CoTConfig, {}),
    "psi_mle": (PsiMLETrainer, PsiMLEConfig, {}),
    "gcn": (GCNTrainer, GCNConfig, {"num_candidates": 2}),
}


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def make(name, tiny_lm, data, tmp_path, out="out", callbacks=None, **kw):
    trainer_cls, config_cls, extra = TRAINERS[name]
    args = config_cls(output_dir=str(tmp_path / out), shared_base=True, **{**COMMON, **extra, **kw})
    return trainer_cls(tiny_lm, args=args, train_dataset=data, peft_config=lora(), callbacks=callbacks)


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.pair.generator.named_parameters()}


@pytest.mark.parametrize("name", ["cot", "psi_mle", "gcn"])
def test_both_adapters_train_and_the_base_stays_frozen(name, tiny_lm, coco_text, tmp_path):
    trainer = make(name, tiny_lm, coco_text, tmp_path)
    companion = trainer.pair.companion
    assert isinstance(companion, AdapterCompanion)
    adapter = trainer.companion_name
    # One base model: the pair holds the base weights once, plus the two adapters (and a scorer's head).
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    n_base = sum(p.numel() for p in base.parameters())
    n_pair = sum(p.numel() for p in trainer.pair.parameters())
    n_adapters = sum(p.numel() for n, p in trainer.pair.named_parameters() if "lora_" in n)
    assert n_pair == n_base + n_adapters + (0 if name == "cot" else base.config.n_embd)
    before, head_before = params(trainer), [p.detach().clone() for p in companion.parameters()]
    trainer.train()
    after = params(trainer)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("lora_" in n for n in moved)  # the base is frozen
    assert any(f".default." in n for n in moved)  # the generator's adapter learned
    assert any(f".{adapter}." in n for n in moved)  # the companion's adapter learned
    for a, b in zip(head_before, companion.parameters()):  # a scorer's head learned (CoT has none)
        assert not torch.equal(a, b)
    # The optimizer puts the companion adapter (and head) in the companion's parameter groups.
    groups = trainer.optimizer.param_groups
    companion_ids = {id(p) for p in companion.all_parameters()}
    assert all(any(id(p) in companion_ids for p in g["params"]) == all(id(p) in companion_ids for p in g["params"])
               for g in groups)  # fmt: skip
    assert sum(len(g["params"]) for g in groups if id(g["params"][0]) in companion_ids) == len(companion_ids)


@pytest.mark.parametrize("name", ["cot", "psi_mle"])
def test_each_loss_path_uses_its_own_adapter(name, tiny_lm, coco_text, tmp_path):
    """The generator's forward computes with (and back-propagates into) the generator adapter only; the companion's
    forward with the companion adapter only; and each matches the PeftModel with that adapter set active."""
    trainer = make(name, tiny_lm, coco_text, tmp_path)
    pair, adapter = trainer.pair, trainer.companion_name
    with torch.no_grad():  # distinct non-zero adapters, so using the wrong one would show
        for n, p in pair.generator.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        for p in pair.companion.parameters():  # a zero scorer head would pass no gradient to its adapter
            p.normal_(0, 0.5)
    ids = torch.tensor([[0, 5, 6, 7, 8], [0, 9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    prompt_ids, prompt_mask, comp_ids, comp_mask = ids[:, :1], mask[:, :1], ids[:, 1:], mask[:, 1:]

    def grads_of(loss):
        pair.zero_grad(set_to_none=True)
        loss.backward()
        return {n for n, p in pair.generator.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    gen_logits, _ = pair(generator=trainer.lm_inputs(prompt_ids, prompt_mask, comp_ids, comp_mask))
    touched = grads_of(gen_logits.sum())
    assert touched and all(".default." in n for n in touched)
    if name == "cot":
        comp_part = trainer.lm_inputs(prompt_ids, prompt_mask, comp_ids, comp_mask)
    else:
        comp_part = trainer.companion_inputs(prompt_ids, prompt_mask, comp_ids, comp_mask)
    _, comp_logits = pair(companion=comp_part)
    touched = grads_of(comp_logits.float().pow(2).sum() + comp_logits.sum())
    assert touched and all(f".{adapter}." in n for n in touched)

    # Values: peft's own adapter switch gives the same logits.
    model = pair.generator
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        assert torch.allclose(gen_logits.detach(), full, atol=1e-5)
        model.set_adapter(adapter)
        if name == "cot":
            other = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            assert torch.allclose(comp_logits.detach(), other, atol=1e-5)
            assert not torch.allclose(other, full, atol=1e-3)
        else:
            base = model.get_base_model()
            hidden = base.transformer(input_ids=comp_part["inputs"]["input_ids"],
                                      attention_mask=comp_part["inputs"]["attention_mask"]).last_hidden_state  # fmt: skip
            last = comp_part["inputs"]["attention_mask"].sum(1) - 1
            expected = pair.companion.head(hidden[torch.arange(2), last])
            assert torch.allclose(comp_logits.detach(), expected, atol=1e-6)
        model.set_adapter("default")


@pytest.mark.parametrize("name", ["cot", "gcn"])
def test_resume_matches_the_uninterrupted_run(name, tiny_lm, coco_text, tmp_path):
    def run(out, resume=None, stop=None):
        trainer = make(name, tiny_lm, coco_text, tmp_path, out=out, max_steps=4, save_strategy="steps", save_steps=2,
                       callbacks=[StopAfter(stop)] if stop else None)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    run("interrupted", stop=2)
    checkpoint = tmp_path / "interrupted" / "checkpoint-2"
    companion_dir = checkpoint / full.companion_name
    assert (companion_dir / "adapter_model.safetensors").is_file()  # the companion adapter is in the checkpoint
    assert not (checkpoint / "model.safetensors").exists()  # and no full copy of the base
    resumed = run("interrupted", resume=str(checkpoint))
    a, b = full.pair.state_dict(), resumed.pair.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    init = AutoModelForCausalLM.from_pretrained(tiny_lm).state_dict()
    moved = [k for k in a if "lora_B" in k and full.companion_name in k and a[k].abs().max() > 1e-4]
    assert moved and init  # the comparison is between trained companions, not two untouched ones


def test_export_is_the_base_plus_the_generator_adapter(tiny_lm, coco_text, tmp_path):
    trainer = make("cot", tiny_lm, coco_text, tmp_path)
    trainer.train()
    out = tmp_path / "export"
    trainer.save_model(str(out))
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "mediator").exists()  # no companion unless save_companion
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(out))
    assert list(exported.peft_config) == ["default"]
    ids = torch.tensor([[0, 5, 6, 7]])
    with torch.no_grad():
        expected = trainer.pair.generator(input_ids=ids).logits
        assert torch.allclose(exported(input_ids=ids).logits, expected, atol=1e-5)
        trainer.pair.generator.set_adapter("mediator")
        assert not torch.allclose(trainer.pair.generator(input_ids=ids).logits, expected, atol=1e-4)
        trainer.pair.generator.set_adapter("default")


def test_shared_base_refuses_what_it_cannot_do(tiny_lm, coco_text, tmp_path):
    args = CoTConfig(output_dir=str(tmp_path / "o"), shared_base=True, report_to="none")
    with pytest.raises(ValueError, match="needs a `peft_config`"):
        CoTTrainer(tiny_lm, args=args, train_dataset=coco_text)
    with pytest.raises(ValueError, match="do not pass a mediator"):
        CoTTrainer(tiny_lm, tiny_lm, args=args, train_dataset=coco_text, peft_config=lora())
    with pytest.raises(ValueError, match="modules_to_save"):
        CoTTrainer(tiny_lm, args=args, train_dataset=coco_text,
                   peft_config=LoraConfig(r=4, target_modules=["c_attn"], modules_to_save=["lm_head"]))  # fmt: skip
    with pytest.raises(ValueError, match="has none"):
        MLEConfig(output_dir=str(tmp_path / "o"), shared_base=True)


def test_gcn_resample_scores_with_the_discriminator_adapter(tiny_lm, coco_prompt_completion, tmp_path):
    """The no-grad scorer path (SIR resampling) runs through the companion view too."""
    trainer = make("gcn", tiny_lm, coco_prompt_completion, tmp_path, sampler="resample", max_steps=2)
    trainer.train()
    assert any("samples/resample_ess" in log for log in trainer.state.log_history)
