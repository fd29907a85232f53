"""Test doubles shared by several tests."""

from __future__ import annotations

import torch

from hfcoop import CoTTrainer
from hfcoop.data import pad_right


class DeterministicSampleCoT(CoTTrainer):
    """CoT whose "samples" are a fixed function of each prompt (its tokens reversed, then EOS).

    Sampling draws from a per-(rank, step, call) RNG stream, so runs that split the same global batch
    differently (gradient accumulation, DDP) draw different samples; with this double the samples depend on
    the rows alone and the runs must agree to floating-point tolerance.
    """

    def sample(self, prompt_ids, prompt_mask, num_return_sequences=1):
        eos = self.processing_class.eos_token_id
        rows = [ids[m.bool()].flip(0).tolist()[:2] + [eos] for ids, m in zip(prompt_ids, prompt_mask)]
        ids, mask = pad_right(rows, self.processing_class.pad_token_id)
        return ids.to(prompt_ids.device), mask.to(prompt_ids.device)


def state_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    """Largest absolute difference between two state dicts with the same keys (asserts the keys match)."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
