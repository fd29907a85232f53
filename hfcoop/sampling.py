"""Sampling from the generator during training: batched, KV-cached, in eval mode, with completion masks.

Cooperative samplers (resampling, MCTS guided by p·D) build on :func:`sample_completions`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from transformers import GenerationConfig


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (rows without EOS are all 1)."""
    eos_ids = torch.as_tensor(eos_token_id, device=completion_ids.device).view(-1)
    is_eos = torch.isin(completion_ids, eos_ids)
    eos_seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~eos_seen_before).long()


def build_generation_config(
    tokenizer: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> GenerationConfig:
    """Pure ancestral sampling unless top-k / top-p / temperature say otherwise (0 disables top-k)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling (use a small value such as 0.01 for near-greedy).")
    return GenerationConfig(
        do_sample=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k if top_k > 0 else None,
        top_p=top_p,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


@contextmanager
def generation_mode(model: nn.Module, accelerator: Any = None, engine: Any = None) -> Iterator[nn.Module]:
    """Eval mode (no dropout), activation checkpointing off (it disables the KV cache), ZeRO-3 params gathered.

    ``model`` is the (unwrapped) generator to sample from. Under DeepSpeed ZeRO-3 only its parameters are
    gathered, not the companion's, and the engine's partitioning hooks are lifted meanwhile (``engine`` is the
    DeepSpeed engine that wraps the pair).
    """
    was_training = model.training
    checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    try:
        if accelerator is not None and _is_zero3(accelerator):
            import deepspeed
            from trl.models.utils import add_hooks, remove_hooks

            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                remove_hooks(engine)
                try:
                    yield model
                finally:
                    add_hooks(engine)
        else:
            yield model
    finally:
        model.train(was_training)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    generation_config: GenerationConfig,
    num_return_sequences: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples completions for left-padded prompts; returns ``(completion_ids, completion_mask)``, right-padded.

    The model must already be in :func:`generation_mode`. With ``num_return_sequences = K`` row ``i*K + k`` is
    the k-th sample of prompt ``i``.
    """
    if num_return_sequences != 1:
        generation_config = copy.copy(generation_config)
        generation_config.num_return_sequences = num_return_sequences
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config)
    completion_ids = out[:, prompt_ids.shape[1] :]
    if completion_ids.shape[1] == 0:  # max_new_tokens=0 or immediate stop: keep one (masked) column
        completion_ids = torch.full_like(out[:, :1], generation_config.pad_token_id)
        return completion_ids, torch.zeros_like(completion_ids)
    mask = completion_mask_from_eos(completion_ids, generation_config.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, generation_config.pad_token_id)
    return completion_ids, mask


def _is_zero3(accelerator: Any) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3
