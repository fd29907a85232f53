"""The trainers really sample through the lean KV-cached loop, and multi-step sampling on it has generate's law.

Every trainer test passes whether sampling goes through ``lean_sample`` or falls back to ``generate`` (both
sample the same distribution), so a transformers release that renames an argument can silently cost the speed
path (5.24 renamed GPT-2's ``past_key_values`` to ``cache``). These tests make the fallback visible.
"""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from peft import LoraConfig
from transformers import GenerationConfig, GenerationMixin, GPT2Config, GPT2LMHeadModel

import hfcoop.sampling as sampling
from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.sampling import lean_model_support, lean_sampling_settings, sample_completions

V, EOS, PAD, BOS = 5, 1, 0, 2


def small_vocab_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=V, n_layer=2, n_embd=16, n_head=2, n_positions=16, bos_token_id=BOS,
                        eos_token_id=EOS, pad_token_id=PAD, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(4.0)  # varied conditionals, so a wrong cache/position shows up
    return model


def exact_completion_law(model, prompt: list[int], length: int, temperature: float, top_k: int) -> dict:
    """P(completion) for every completion of at most ``length`` tokens that stops at EOS, by enumeration."""
    law: dict[tuple[int, ...], float] = {}

    def expand(prefix: tuple[int, ...], prob: float) -> None:
        if prefix and prefix[-1] == EOS or len(prefix) == length:
            law[prefix] = law.get(prefix, 0.0) + prob
            return
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + list(prefix)])).logits[0, -1].double() / temperature
        if top_k:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        for token, p in enumerate(logits.softmax(-1).tolist()):
            if p > 0:
                expand(prefix + (token,), prob * p)

    expand((), 1.0)
    return law


def empirical_law(completions: torch.Tensor, mask: torch.Tensor) -> dict:
    counts: dict[tuple[int, ...], int] = {}
    for row, m in zip(completions.tolist(), mask.tolist()):
        key = tuple(t for t, keep in zip(row, m) if keep)
        counts[key] = counts.get(key, 0) + 1
    return {k: c / len(completions) for k, c in counts.items()}


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.8, 3)])
def test_multi_step_sampling_has_generates_law(temperature, top_k):
    """Three-token samples from the lean loop and from ``generate`` both follow the exactly enumerated law."""
    model = small_vocab_model()
    prompt = [BOS, 3, 4]
    config = GenerationConfig(do_sample=True, max_new_tokens=3, temperature=temperature, top_k=top_k, top_p=1.0,
                              pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)  # fmt: skip
    assert lean_sampling_settings(model, config) is not None
    exact = exact_completion_law(model, prompt, 3, temperature, top_k)
    n = 20000
    ids = torch.tensor([prompt]).expand(n, -1)
    mask = torch.ones_like(ids)
    torch.manual_seed(0)
    lean_ids, lean_mask = sample_completions(model, ids, mask, config)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    gen_ids = out[:, ids.shape[1] :]
    gen_mask = sampling.completion_mask_from_eos(gen_ids, EOS)
    for name, law in (("lean", empirical_law(lean_ids, lean_mask)), ("generate", empirical_law(gen_ids, gen_mask))):
        assert set(law) <= set(exact), (name, set(law) - set(exact))  # nothing outside the support (top-k)
        tv = 0.5 * sum(abs(law.get(k, 0.0) - p) for k, p in exact.items())
        # 20000 draws over <= 31 outcomes: sampling noise gives TV ~ 0.01; a wrong cache or position gives > 0.1.
        assert tv < 0.03, (name, tv)
        for k, p in exact.items():
            sigma = (p * (1 - p) / n) ** 0.5
            assert abs(law.get(k, 0.0) - p) <= 5 * sigma + 1e-3, (name, k, law.get(k), p)


def test_cache_argument_is_feature_detected():
    """Whatever the installed transformers calls the cache argument, the loop finds it (no fixed spelling)."""
    name, reason = lean_model_support(small_vocab_model())
    assert name in sampling._CACHE_ARGUMENT_NAMES and reason == ""

    class NoCache(GPT2LMHeadModel):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):  # no cache argument
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    model = NoCache(small_vocab_model().config)
    name, reason = lean_model_support(model)
    assert name is None and "KV cache argument" in reason


def test_fallback_is_reported_once(caplog):
    model = small_vocab_model(seed=3)
    config = GenerationConfig(do_sample=True, max_new_tokens=2, repetition_penalty=1.2, pad_token_id=PAD,
                              eos_token_id=EOS)  # fmt: skip
    sampling._REPORTED.clear()
    with caplog.at_level(logging.WARNING, logger="hfcoop.sampling"):
        for _ in range(3):
            assert lean_sampling_settings(model, config) is None
    messages = [r.getMessage() for r in caplog.records if "lean KV-cached loop" in r.getMessage()]
    assert len(messages) == 1 and "repetition_penalty" in messages[0]


# ----------------------------------------------------------------------------- the trainers take the fast path
TRAINERS = {
    "cot": (CoTConfig, CoTTrainer, {}),
    "psi_mle": (PsiMLEConfig, PsiMLETrainer, {}),
    "gcn": (GCNConfig, GCNTrainer, {}),
}


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("algorithm", sorted(TRAINERS))
def test_trainers_sample_with_the_lean_loop(algorithm, lora, tiny_lm, coco_text, tmp_path, monkeypatch):
    calls = []
    real_lean_sample = sampling.lean_sample

    def counting_lean_sample(*args, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        return real_lean_sample(*args, **kwargs)

    def no_generate(self, *args, **kwargs):
        raise AssertionError("the trainer fell back to generate")

    monkeypatch.setattr(sampling, "lean_sample", counting_lean_sample)
    monkeypatch.setattr(GenerationMixin, "generate", no_generate)
    config_cls, trainer_cls, extra = TRAINERS[algorithm]
    args = config_cls(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                      max_completion_length=6, report_to="none", save_strategy="no", disable_tqdm=True,
                      use_cpu=True, **extra)  # fmt: skip
    peft_config = LoraConfig(r=4, target_modules=["c_attn"], task_type="CAUSAL_LM") if lora else None
    trainer = trainer_cls(tiny_lm, train_dataset=coco_text, args=args, peft_config=peft_config)
    trainer.train()
    assert len(calls) >= 2 and all(c == 6 for c in calls)


def test_enumeration_helper_sums_to_one():
    """The reference law the sampling test compares against is a distribution (guards the test itself)."""
    law = exact_completion_law(small_vocab_model(), [BOS], 3, 1.0, 0)
    assert abs(sum(law.values()) - 1.0) < 1e-9
    assert all(len(k) == 3 or k[-1] == EOS for k in law)
    assert len(law) == sum(1 for n in range(1, 4) for _ in itertools.product(range(V - 1), repeat=n - 1)) + (V - 1) ** 3
