"""The companion's signal to the generator is dropout-free, and each model's gradient is clipped on its own."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from conftest import coco_lines

from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.batching import pad_columns
from hfcoop.modeling import sequence_inputs
from hfcoop.scorers import SequenceScorer
from hfcoop.tiny import build_tiny_model
import hfcoop.trainers.cot as cot_module
import hfcoop.trainers.gcn as gcn_module
import hfcoop.trainers.psi_mle as psi_module


@pytest.fixture(scope="module")
def dropout_lm(tmp_path_factory) -> str:
    """A tiny GPT-2 with heavy dropout: its companions (copies / same backbone) inherit it."""
    path = tmp_path_factory.mktemp("dropout_lm")
    return build_tiny_model(str(path), coco_lines(200), vocab_size=300, n_layer=1, n_embd=32, n_head=2,
                            n_positions=64, dropout=0.5)  # fmt: skip


def settings(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                max_completion_length=6, report_to="none", save_strategy="no", disable_tqdm=True)  # fmt: skip
    return {**base, **kw}


def one_step(trainer, monkeypatch, module, name):
    """Runs one cooperative step in train mode; returns the samples drawn, the batch, and the spied call's args."""
    if hasattr(trainer.pair.companion, "score"):  # a zero head scores 0 with or without dropout: give it weights
        torch.manual_seed(0)
        torch.nn.init.normal_(trainer.pair.companion.score.weight, std=1.0)
    seen, samples = [], []
    spied = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: (seen.append(a), spied(*a, **k))[1])
    sample = trainer.sample
    trainer.sample = lambda *a, **k: (samples.append(sample(*a, **k)), samples[-1])[1]
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.state.global_step = 1  # a generator step
    trainer.model.train()
    trainer.cooperative_step(trainer.model, batch)
    return samples[0], batch, seen[0]


def eval_scores(trainer, prompt_ids, prompt_mask, ids, mask):
    return SequenceScorer(trainer.pair.companion, trainer.scorer_inputs)(prompt_ids, prompt_mask, ids, mask)


def test_psi_mle_weights_come_from_a_dropout_free_ratio_model(dropout_lm, tmp_path, monkeypatch):
    data = Dataset.from_dict({"text": coco_lines(16)})
    trainer = PsiMLETrainer(dropout_lm, train_dataset=data, args=PsiMLEConfig(**settings(tmp_path)))
    (gen_ids, gen_mask), batch, (log_w, *_) = one_step(trainer, monkeypatch, psi_module, "importance_weights")
    width = max(gen_ids.shape[1], batch["completion_input_ids"].shape[1])
    pad = trainer.processing_class.pad_token_id
    real = pad_columns(batch["completion_input_ids"], batch["completion_mask"], width, pad)
    gen = pad_columns(gen_ids, gen_mask, width, pad)
    expected = eval_scores(trainer, batch["prompt_input_ids"].repeat(2, 1), batch["prompt_attention_mask"].repeat(2, 1),
                           torch.cat([real[0], gen[0]]), torch.cat([real[1], gen[1]]))  # fmt: skip
    torch.testing.assert_close(log_w, expected, atol=1e-5, rtol=0)
    assert trainer.pair.companion.training  # the ratio model's own loss still trains with dropout


def test_gcn_weights_come_from_a_dropout_free_discriminator(dropout_lm, tmp_path, monkeypatch):
    data = Dataset.from_dict({"text": coco_lines(16)})
    trainer = GCNTrainer(dropout_lm, train_dataset=data, args=GCNConfig(**settings(tmp_path, num_candidates=2)))
    (neg_ids, neg_mask), batch, (d_logits, *_) = one_step(trainer, monkeypatch, gcn_module, "gcn_log_weights")
    rows = torch.arange(4).repeat_interleave(2)
    width = max(neg_ids.shape[1], batch["completion_input_ids"].shape[1])
    neg_ids, neg_mask = pad_columns(neg_ids, neg_mask, width, trainer.processing_class.pad_token_id)
    expected = eval_scores(trainer, batch["prompt_input_ids"][rows], batch["prompt_attention_mask"][rows], neg_ids,
                           neg_mask)  # fmt: skip
    torch.testing.assert_close(d_logits, expected, atol=1e-5, rtol=0)


def test_cot_target_comes_from_a_dropout_free_mediator(dropout_lm, tmp_path, monkeypatch):
    data = Dataset.from_dict({"text": coco_lines(16)})
    trainer = CoTTrainer(dropout_lm, train_dataset=data, args=CoTConfig(**settings(tmp_path)))
    (gen_ids, gen_mask), batch, (_, med_logits, *_) = one_step(trainer, monkeypatch, cot_module, "per_token_kl")
    mediator = trainer.pair.companion
    mediator.eval()
    with torch.no_grad():
        inputs = sequence_inputs(batch["prompt_input_ids"], batch["prompt_attention_mask"], gen_ids, gen_mask)
        logits = mediator(**inputs).logits[:, -gen_ids.shape[1] - 1 : -1][gen_mask.bool()]
    torch.testing.assert_close(med_logits.squeeze(0), logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shared_base", [False, True], ids=["two_models", "shared_base"])
def test_each_model_is_clipped_on_its_own(shared_base, tiny_lm, tmp_path):
    """A large companion gradient must not shrink the generator's step (one joint clip did exactly that) — also in
    shared-base mode, where the companion's adapter sits inside the generator's PeftModel."""
    from peft import LoraConfig

    data = Dataset.from_dict({"text": coco_lines(16)})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM") if shared_base else None
    args = PsiMLEConfig(**settings(tmp_path, max_grad_norm=1.0, shared_base=shared_base))
    trainer = PsiMLETrainer(tiny_lm, train_dataset=data, args=args, peft_config=lora)
    roles = trainer.pair.role_parameters()
    generator = [p for p in roles["generator"] if p.requires_grad]
    companion = roles["companion"]
    assert generator and companion and not {id(p) for p in generator} & {id(p) for p in companion}
    torch.manual_seed(0)
    for params, norm in ((generator, 0.5), (companion, 100.0)):
        grads = [torch.randn_like(p) for p in params]
        scale = norm / float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        for p, g in zip(params, grads):
            p.grad = g * scale
    gen_before = [p.grad.clone() for p in generator]
    trainer.model.train()
    total = trainer._clip_grad_norm(trainer.model)
    assert abs(float(total) - (0.5**2 + 100.0**2) ** 0.5) < 1e-2  # the reported norm is still the joint one
    assert all(torch.equal(a, p.grad) for a, p in zip(gen_before, generator))  # below its max: untouched
    comp = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in companion])))
    assert abs(comp - 1.0) < 1e-4  # clipped to max_grad_norm on its own


SHARED = {  # trainer, config, extra settings, module and function whose call receives the signal, that argument
    "cot": (CoTTrainer, CoTConfig, {}, cot_module, "per_token_kl", 1),
    "psi_mle": (PsiMLETrainer, PsiMLEConfig, {}, psi_module, "importance_weights", 0),
    "gcn": (GCNTrainer, GCNConfig, {"num_candidates": 2}, gcn_module, "gcn_log_weights", 0),
    "gcn_resample": (GCNTrainer, GCNConfig, {"sampler": "resample", "num_candidates": 3}, gcn_module,
                     "resample_log_weights", 0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SHARED))
def test_shared_base_signal_is_dropout_free_across_optimizer_steps(name, dropout_lm, tmp_path, monkeypatch):
    """Shared-base mode (both adapters on one base model with dropout 0.5), after real optimizer steps moved both
    adapters: two generator steps on the same batch and the same samples give the generator the same signal, the
    companion's eval-mode output (GCN's resampling scores too). The base model is not a submodule of the companion,
    so `.eval()` on the companion alone left the base's dropout on."""
    from peft import LoraConfig

    trainer_cls, config_cls, extra, module, function, arg = SHARED[name]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], task_type="CAUSAL_LM")
    data = Dataset.from_dict({"text": coco_lines(16)})
    args = config_cls(**settings(tmp_path, max_steps=4, learning_rate=5e-2, shared_base=True, **extra))
    trainer = trainer_cls(dropout_lm, train_dataset=data, args=args, peft_config=lora)
    trainer.train()  # 4 optimizer steps: 2 of each model
    named = dict(trainer.pair.generator.named_parameters())
    for adapter in ("default", trainer.companion_name):  # both adapters trained (LoRA's B starts at zero)
        assert any(float(p.abs().max()) > 0 for n, p in named.items() if f"lora_B.{adapter}." in n), adapter
    seen, drawn = [], {}
    real = getattr(module, function)
    monkeypatch.setattr(module, function, lambda *a, **k: (seen.append(a[arg]), real(*a, **k))[1])
    sample = trainer.sample

    def replay(prompt_ids, prompt_mask, num_return_sequences=1):  # the same samples in both calls
        key = num_return_sequences
        if key not in drawn:
            drawn[key] = sample(prompt_ids, prompt_mask, num_return_sequences)
        return drawn[key]

    trainer.sample = replay
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    for _ in range(2):
        trainer.state.global_step = 5  # a generator step
        trainer.cooperative_step(trainer.model, batch)
        trainer.model.zero_grad()
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1], atol=0, rtol=0)
    assert trainer.pair.generator.training and trainer.pair.companion.training  # the mode is restored
