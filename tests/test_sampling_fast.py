"""The lean sampling loop (hfcoop.sampling.lean_sample) against transformers' ``generate``.

- greedy decoding gives exactly generate's tokens, for left-padded prompts of different lengths, with EOS stops
  and pad after EOS, and with num_return_sequences row order (checks cache, positions, masks, stopping);
- sampled first tokens follow softmax(logits) with temperature / top-k / top-p applied like generate's warpers,
  and a second token follows the model's conditional (checks the KV-cached step in sampling mode);
- configurations the loop does not implement fall back to generate; top_k=0 means "off" on both paths.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hfcoop.sampling import (
    build_generation_config,
    completion_mask_from_eos,
    lean_sampling_settings,
    sample_completions,
)

V, EOS, PAD = 40, 1, 0


class _Tok:
    pad_token_id, eos_token_id, bos_token_id = PAD, EOS, 2


def tiny_model(seed: int = 0, eos_bias: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=V, n_layer=2, n_embd=32, n_head=2, n_positions=64, bos_token_id=2,
                        eos_token_id=EOS, pad_token_id=PAD, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # sharper, more varied distributions than the default init
        model.transformer.wte.weight.mul_(8.0)
        model.transformer.wte.weight[EOS] += eos_bias
    return model


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[5, 6, 7, 8], [9, 10], [11], [12, 13, 14], [3, 4, 5, 6]]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def reference(model, ids, mask, config) -> tuple[torch.Tensor, torch.Tensor]:
    """generate's completion ids and mask, post-processed exactly as sample_completions does."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    completion = out[:, ids.shape[1] :]
    m = completion_mask_from_eos(completion, config.eos_token_id)
    return completion.masked_fill(m == 0, config.pad_token_id), m


@pytest.mark.parametrize("early_eos", [False, True])
@pytest.mark.parametrize("all_ones_mask", [False, True])
def test_greedy_matches_generate(early_eos, all_ones_mask):
    model = tiny_model()
    ids, mask = left_padded_prompts()
    if all_ones_mask:
        ids, mask = ids[[0, 4]], mask[[0, 4]]
    eos = EOS
    if early_eos:  # make a token that greedy decoding emits mid-sequence in row 0 the EOS: rows stop at different steps
        probe = GenerationConfig(do_sample=False, max_new_tokens=12, top_k=0, pad_token_id=PAD, eos_token_id=EOS)
        eos = int(reference(model, ids, mask, probe)[0][0, 3])
    config = GenerationConfig(do_sample=False, max_new_tokens=12, top_k=0, pad_token_id=PAD, eos_token_id=eos)
    assert lean_sampling_settings(model, config) is not None
    got_ids, got_mask = sample_completions(model, ids, mask, config)
    ref_ids, ref_mask = reference(model, ids, mask, config)
    assert torch.equal(got_ids, ref_ids) and torch.equal(got_mask, ref_mask)
    if early_eos:  # the EOS case must really exercise early stops and pad-after-EOS
        assert (got_mask == 0).any()


def test_num_return_sequences_order():
    model = tiny_model()
    ids, mask = left_padded_prompts()
    # top-k 1 sampling is deterministic (generate refuses num_return_sequences > 1 for greedy search)
    config = GenerationConfig(do_sample=True, max_new_tokens=6, top_k=1, pad_token_id=PAD, eos_token_id=EOS)
    got_ids, got_mask = sample_completions(model, ids, mask, config, num_return_sequences=3)
    greedy = GenerationConfig(do_sample=False, max_new_tokens=6, top_k=0, pad_token_id=PAD, eos_token_id=EOS)
    ref_ids, _ = reference(model, ids, mask, greedy)
    assert torch.equal(got_ids, ref_ids.repeat_interleave(3, dim=0))


def test_eos_rows_are_padded_and_masked():
    model = tiny_model(eos_bias=3.0)
    ids, mask = left_padded_prompts()
    torch.manual_seed(0)
    config = build_generation_config(_Tok(), max_new_tokens=10)
    got_ids, got_mask = sample_completions(model, ids.repeat(40, 1), mask.repeat(40, 1), config)
    assert torch.equal(got_mask, completion_mask_from_eos(got_ids.masked_fill(got_mask == 0, EOS), EOS))
    is_eos = got_ids == EOS
    assert is_eos.any() and (is_eos.sum(1) <= 1).all()  # EOS kept once, everything after it is masked pad
    assert (got_ids[got_mask == 0] == PAD).all()
    ends = got_mask.sum(1)
    assert ((ends == got_ids.shape[1]) | is_eos.any(1)).all()  # a row is shorter only if it ended with EOS


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # generate's position ids for left padding


def expected_first_token(model, ids, mask, temperature, top_k, top_p) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, -1].float()
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers(ids, logits).softmax(-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 8, 1.0), (1.0, 0, 0.8)])
def test_first_token_frequencies_match_softmax(temperature, top_k, top_p):
    model = tiny_model()
    ids, mask = left_padded_prompts()
    ids, mask = ids[1:2], mask[1:2]  # a left-padded prompt
    n = 20000
    config = build_generation_config(_Tok(), 1, temperature=temperature, top_k=top_k, top_p=top_p)
    assert lean_sampling_settings(model, config) is not None
    torch.manual_seed(1)
    got, _ = sample_completions(model, ids.expand(n, -1), mask.expand(n, -1), config)
    freq = torch.bincount(got[:, 0], minlength=V).double() / n
    p = expected_first_token(model, ids, mask, temperature, top_k, top_p)[0].double()
    assert (freq[p == 0] == 0).all()  # filtered tokens are never drawn
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-4).all(), (freq - p).abs().max()
    assert 0.5 * (freq - p).abs().sum() < 0.02  # total variation


def test_second_token_follows_the_cached_conditional():
    model = tiny_model()
    ids, mask = left_padded_prompts()
    ids, mask = ids[2:3], mask[2:3]
    n = 20000
    config = build_generation_config(_Tok(), 2)
    torch.manual_seed(2)
    got, _ = sample_completions(model, ids.expand(n, -1), mask.expand(n, -1), config)
    first = torch.bincount(got[:, 0], minlength=V).argmax()
    rows = got[got[:, 0] == first]
    freq = torch.bincount(rows[:, 1], minlength=V).double() / len(rows)
    full_ids = torch.cat([ids, first.view(1, 1)], 1)
    full_mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask)).logits
    p = logits[0, -1].float().softmax(-1).double()
    sigma = (p * (1 - p) / len(rows)).sqrt()
    assert len(rows) > 1000
    assert ((freq - p).abs() <= 5 * sigma + 1e-3).all()


def test_top_k_zero_means_off_on_both_paths():
    config = build_generation_config(_Tok(), 4, top_k=0)
    assert config.top_k == 0  # transformers would otherwise fill None with its default of 50
    settings = lean_sampling_settings(tiny_model(), config)
    assert settings["top_k"] == 0 and settings["top_p"] == 1.0 and settings["temperature"] == 1.0


def test_unsupported_settings_fall_back_to_generate():
    model = tiny_model()
    for extra in ({"repetition_penalty": 1.2}, {"min_p": 0.1}, {"num_beams": 2, "do_sample": False}):
        config = GenerationConfig(**{"do_sample": True, "max_new_tokens": 4, "top_k": 0, "pad_token_id": PAD,
                                     "eos_token_id": EOS, **extra})  # fmt: skip
        assert lean_sampling_settings(model, config) is None, extra
    # A model-level setting that generate would merge in also sends us to generate.
    model.generation_config.repetition_penalty = 1.3
    assert lean_sampling_settings(model, build_generation_config(_Tok(), 4)) is None
    ids, mask = left_padded_prompts()
    got_ids, got_mask = sample_completions(model, ids, mask, build_generation_config(_Tok(), 4))
    assert got_ids.shape[0] == ids.shape[0] and got_mask.shape == got_ids.shape
