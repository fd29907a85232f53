"""Sampling from the generator during training: batched, KV-cached, in eval mode, with completion masks.

Cooperative samplers (resampling, MCTS guided by p·D) build on :func:`sample_completions`.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig, GenerationMixin
from transformers.utils import logging

from .modeling import PeftModel, unwrap_peft

logger = logging.get_logger(__name__)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (rows without EOS are all 1)."""
    eos_ids = torch.as_tensor(eos_token_id, device=completion_ids.device).view(-1)
    is_eos = torch.isin(completion_ids, eos_ids)
    eos_seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~eos_seen_before).long()


def build_generation_config(
    tokenizer: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_ids: int | list[int] | None = None,
) -> GenerationConfig:
    """Pure ancestral sampling unless top-k / top-p / temperature say otherwise (0 disables top-k).

    ``eos_token_ids``: every id that ends a sample (:func:`hfcoop.modeling.eos_token_ids`); default the
    tokenizer's EOS."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling (use a small value such as 0.01 for near-greedy).")
    return GenerationConfig(
        do_sample=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        # Explicit 0, not None: transformers 5 fills a None top_k with its global default (50), so "0: off" used to
        # sample from the top 50 tokens only (and cost a top-k per token). 0 is what generate treats as "off".
        top_k=max(top_k, 0),
        top_p=top_p,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id if eos_token_ids is None else eos_token_ids,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


# What an exported generator's ``generation_config.json`` takes from the training's sampling (the rest stays the model's).
EXPORTED_SAMPLING_SETTINGS = ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "eos_token_id",
                              "pad_token_id", "bos_token_id")  # fmt: skip


def export_generation_config(model: nn.Module, generation_config: GenerationConfig) -> GenerationConfig:
    """The generation config saved beside a trained generator: the model's own, with the training's sampling
    settings (:data:`EXPORTED_SAMPLING_SETTINGS`, every EOS id included) on top.

    Training sampled with exactly this merge (:func:`lean_sampling_settings` / ``generate`` fill what
    ``generation_config`` leaves unset from the model's own config), so ``model.generate()`` and
    ``pipeline("text-generation", ...)`` on the export sample as training and its quality report did, instead of
    decoding greedily (transformers' default without ``do_sample``).
    """
    own = getattr(unwrap_peft(model), "generation_config", None)
    exported = copy.deepcopy(own) if own is not None else GenerationConfig()
    exported.update(**{k: getattr(generation_config, k) for k in EXPORTED_SAMPLING_SETTINGS})
    exported._from_model_config = False  # set by hand now, not derived from config.json
    return exported


@contextmanager
def generation_mode(
    model: nn.Module, accelerator: Any = None, engine: Any = None, scorers: tuple[nn.Module, ...] = ()
) -> Iterator[nn.Module]:
    """Eval mode (no dropout), activation checkpointing off (it disables the KV cache), ZeRO-3 params gathered.

    ``model`` is the (unwrapped) generator to sample from; ``scorers`` are models called *during* sampling (GCN's
    discriminator in MCTS), in eval mode meanwhile too. Under DeepSpeed ZeRO-3 the parameters of these models are
    gathered (not those of a companion that does not take part) and the engine's partitioning hooks are lifted
    meanwhile (``engine`` is the DeepSpeed engine that wraps the pair). Under FSDP2 ``engine`` is the pair's root
    unit, unsharded meanwhile (the models' own units gather themselves in their forward).
    """
    models = (model, *scorers)
    was_training = [m.training for m in models]
    checkpointing = getattr(model, "is_activation_checkpointing", False)
    if checkpointing:
        model.gradient_checkpointing_disable()
    for m in models:
        m.eval()
    try:
        if accelerator is not None and _is_zero3(accelerator):
            import deepspeed
            from trl.models.utils import add_hooks, remove_hooks

            with deepspeed.zero.GatheredParameters([p for m in models for p in m.parameters()]):
                remove_hooks(engine)
                try:
                    yield model
                finally:
                    add_hooks(engine)
        elif engine is not None and getattr(getattr(accelerator, "state", None), "fsdp_plugin", None) is not None:
            from .distributed import fsdp_root_unsharded

            with fsdp_root_unsharded(engine):  # the embeddings/head of the pair's root unit, gathered
                yield model
        else:
            yield model
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)
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

    Plain temperature / top-k / top-p sampling (what hfcoop's trainers ask for) runs in :func:`lean_sample`, a
    KV-cached loop with ``generate``'s semantics but without its per-token overhead; any other configuration
    (and models whose ``generate`` is special) goes through ``model.generate``.
    """
    if num_return_sequences != 1:
        generation_config = copy.copy(generation_config)
        generation_config.num_return_sequences = num_return_sequences
    lean = lean_sampling_settings(model, generation_config)
    if lean is not None:
        with padding_check_off(model):
            completion_ids = lean_sample(model, prompt_ids, prompt_mask, **lean)
    else:
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config)
        completion_ids = out[:, prompt_ids.shape[1] :]
    if completion_ids.shape[1] == 0:  # max_new_tokens=0 or immediate stop: keep one (masked) column
        completion_ids = torch.full_like(prompt_ids[:, :1], generation_config.pad_token_id).repeat_interleave(
            num_return_sequences, dim=0
        )
        return completion_ids, torch.zeros_like(completion_ids)
    mask = completion_mask_from_eos(completion_ids, generation_config.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, generation_config.pad_token_id)
    return completion_ids, mask


# ------------------------------------------------------------------------------------------- lean sampling loop
# Why: for the small and mid-sized models hfcoop trains, ``generate`` spends much of each token outside the model
# (logits-processor and stopping-criteria objects, input preparation, and above all ``torch.multinomial``, whose
# exponential-race sampler draws one random number per vocabulary entry: ~5 ms per token for 16 x 4.6k on one
# CPU core, more than the decoder forward itself). The loop below keeps the model call identical to ``generate``'s
# (same cache class, 2D attention mask, position ids, ``logits_to_keep=1``) and samples by inverse CDF (one
# uniform per row), which draws from exactly the same categorical distribution.

# Settings the loop implements itself.
_LEAN_HANDLED = {
    "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_return_sequences",
    "pad_token_id", "eos_token_id", "bos_token_id",
}  # fmt: skip
# Settings that change neither the sampled distribution nor the output (speed, caching, beam/assistant-only knobs).
_LEAN_HARMLESS = {
    "max_length", "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
    "disable_compile", "output_attentions", "output_hidden_states", "early_stopping", "length_penalty",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "assistant_lookbehind", "target_lookbehind", "prefill_chunk_size", "low_memory", "decoder_start_token_id",
    "transformers_version", "_from_model_config", "continuous_batching_config",
}  # fmt: skip
# Hooks a model overrides when its generation needs more than the standard decoder loop (stateful/SSM caches,
# multimodal inputs, rope scaling switches, ...): such models keep using ``generate``.
_GENERATION_HOOKS = ("generate", "prepare_inputs_for_generation", "_prepare_cache_for_generation",
                     "_update_model_kwargs_for_generation")  # fmt: skip
# The name under which ``forward`` takes the KV cache: transformers 5.24 renamed GPT-2's / Llama's
# ``past_key_values`` to ``cache`` (the old name stays accepted through a deprecation wrapper for a while), so the
# loop looks the spelling up instead of assuming one.
_CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")
_LEAN_MODEL_CACHE: dict[type, tuple[str | None, str]] = {}  # class -> (cache argument name or None, reason)
_REPORTED: set[tuple[type, str]] = set()


def _forward_parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.forward).parameters)


def _lean_model_check(cls: type) -> tuple[str | None, str]:
    """``(cache argument name, "")`` when the lean loop can drive ``cls`` exactly as ``generate`` would, else
    ``(None, why not)``."""
    if not issubclass(cls, GenerationMixin):
        return None, f"{cls.__name__} is not a GenerationMixin model"
    if getattr(cls, "_is_stateful", False):
        return None, f"{cls.__name__} has a stateful (recurrent/SSM) cache"
    overridden = [h for h in _GENERATION_HOOKS if getattr(cls, h, None) is not getattr(GenerationMixin, h, None)]
    if overridden:
        return None, f"{cls.__name__} overrides {', '.join(overridden)} (its generation is special)"
    params = _forward_parameters(cls)
    missing = {"position_ids", "attention_mask"} - params
    if missing:
        return None, f"{cls.__name__}.forward takes no {', '.join(sorted(missing))}"
    name = next((n for n in _CACHE_ARGUMENT_NAMES if n in params), None)
    if name is None:
        return None, f"{cls.__name__}.forward takes no KV cache argument (looked for {_CACHE_ARGUMENT_NAMES})"
    return name, ""


def lean_model_support(model: nn.Module) -> tuple[str | None, str]:
    """Whether the lean loop can sample from ``model`` (a plain or PEFT-wrapped causal LM): ``(name of forward's
    cache argument, "")``, or ``(None, reason)``."""
    base = model
    if PeftModel is not None and isinstance(model, PeftModel):
        if getattr(model.active_peft_config, "is_prompt_learning", False):
            return None, "a prompt-learning PEFT adapter injects virtual tokens in PeftModel.generate"
        base = unwrap_peft(model)
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return None, "encoder-decoder models generate through their encoder"
    cls = type(base)
    if cls not in _LEAN_MODEL_CACHE:
        _LEAN_MODEL_CACHE[cls] = _lean_model_check(cls)
    return _LEAN_MODEL_CACHE[cls]


def _report_fallback(model: nn.Module, reason: str) -> None:
    key = (type(model), reason)
    if key not in _REPORTED:  # say it once per model class and reason, not every step
        _REPORTED.add(key)
        logger.warning(f"hfcoop: sampling with `generate` (slower) instead of the lean KV-cached loop: {reason}.")


def lean_sampling_settings(model: nn.Module, generation_config: GenerationConfig) -> dict[str, Any] | None:
    """The loop's arguments if ``generate`` would do plain temperature/top-k/top-p sampling (or greedy) with EOS
    stopping for this model and config, else None (and the reason is logged once). The config is merged with the
    model's own generation config and transformers' global defaults exactly as ``generate`` merges them, so both
    paths sample the same thing."""
    settings, reason = _lean_settings(model, generation_config)
    if settings is None:
        _report_fallback(model, reason)
    return settings


def _lean_settings(model: nn.Module, generation_config: GenerationConfig) -> tuple[dict[str, Any] | None, str]:
    cache_argument, reason = lean_model_support(model)
    if cache_argument is None:
        return None, reason
    merged = copy.deepcopy(generation_config)
    own = getattr(model, "generation_config", None)
    if own is not None:
        merged.update(**own.to_dict(), defaults_only=True, allow_custom_entries=True)
    get_defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    global_defaults = get_defaults() if get_defaults is not None else {}
    merged.update(**global_defaults, defaults_only=True)
    class_defaults = GenerationConfig().to_dict()
    for key, value in merged.to_dict().items():
        if key in _LEAN_HANDLED or key in _LEAN_HARMLESS:
            continue
        if value is None or value is False or value == class_defaults.get(key) or value == global_defaults.get(key):
            continue
        # e.g. repetition_penalty, min_p, num_beams, stop_strings, return_dict_in_generate
        return None, f"generation setting {key}={value!r} is not implemented by the loop"
    if merged.max_new_tokens is None or merged.num_return_sequences is None:
        return None, "max_new_tokens / num_return_sequences not set"
    eos = merged.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = merged.pad_token_id if merged.pad_token_id is not None else (eos[0] if eos else None)
    if eos and pad is None:
        return None, "an EOS id without a pad id"
    return {
        "max_new_tokens": int(merged.max_new_tokens),
        "do_sample": bool(merged.do_sample),
        "temperature": float(merged.temperature if merged.temperature is not None else 1.0),
        "top_k": int(merged.top_k or 0),
        "top_p": float(merged.top_p if merged.top_p is not None else 1.0),
        "eos_token_ids": eos,
        "pad_token_id": pad,
        "num_return_sequences": int(merged.num_return_sequences),
    }, ""


def filter_logits(scores: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``generate``'s temperature -> top-k -> top-p warpers, in that order and with the same tie handling."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_to_remove = cumulative_probs <= (1 - top_p)
        sorted_to_remove[..., -1:] = 0  # keep at least one token
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        scores = scores.masked_fill(to_remove, -float("inf"))
    return scores


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``probs`` ``(B, V)`` by inverse CDF: the same distribution as ``torch.multinomial(probs,
    1)``, with one random number per row instead of one per entry. The CDF is accumulated in float64, so rounding
    stays far below any probability a float32 softmax can represent; zero-probability entries are never drawn."""
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def lean_sample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_ids: list[int] = (),
    pad_token_id: int | None = None,
    num_return_sequences: int = 1,
) -> torch.Tensor:
    """New tokens ``(B*K, <= max_new_tokens)`` for left-padded prompts, as ``generate`` returns them after the
    prompt: rows that emitted EOS continue with ``pad_token_id``, and the loop stops once every row has."""
    if num_return_sequences != 1:  # generate's expansion: row i*K + k is the k-th sample of prompt i
        prompt_ids = prompt_ids.repeat_interleave(num_return_sequences, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_return_sequences, dim=0)
    batch = prompt_ids.shape[0]
    if max_new_tokens <= 0:
        return prompt_ids[:, :0]
    device = prompt_ids.device
    # As generate: positions skip the left padding, and an all-ones mask is dropped (cheaper causal attention).
    position_ids = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)
    attention_mask = None if bool((prompt_mask == 1).all()) else prompt_mask
    base = unwrap_peft(model)
    cache_argument, reason = lean_model_support(model)
    if cache_argument is None:
        raise ValueError(f"lean_sample cannot drive this model: {reason}; use model.generate.")
    cache = DynamicCache(config=base.config.get_text_config(decoder=True))
    kwargs: dict[str, Any] = {cache_argument: cache, "use_cache": True}
    if "logits_to_keep" in _forward_parameters(type(base)):
        kwargs["logits_to_keep"] = 1
    eos = torch.tensor(eos_token_ids, device=device, dtype=torch.long) if eos_token_ids else None
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    tokens = []
    input_ids, positions = prompt_ids, position_ids
    for step in range(max_new_tokens):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **kwargs).logits
        scores = logits[:, -1].float()
        if do_sample:
            next_tokens = sample_categorical(filter_logits(scores, temperature, top_k, top_p).softmax(dim=-1))
        else:
            next_tokens = scores.argmax(dim=-1)
        if eos is not None:
            next_tokens = torch.where(unfinished, next_tokens, pad_token_id)
            unfinished &= ~torch.isin(next_tokens, eos)
        tokens.append(next_tokens)
        if step == max_new_tokens - 1 or (eos is not None and not bool(unfinished.any())):
            break
        input_ids = next_tokens[:, None]
        positions = positions[:, -1:] + 1
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
    return torch.stack(tokens, dim=1)


def _no_padding_check(input_ids: Any, attention_mask: Any) -> None:
    return None


@contextmanager
def padding_check_off(model: nn.Module) -> Iterator[None]:
    """Without an attention mask transformers warns that inputs holding the pad id "may be padded" (``pad == EOS``
    or ``pad == BOS``: every unconditional prompt is BOS, every finished row continues with pad). The lean loop drops
    the mask only when it is all ones (with a mask transformers skips the check), so nothing is padded: the warning
    does not apply and is switched off for the loop's own forwards (an instance attribute on each sub-model,
    removed afterwards)."""
    from transformers import PreTrainedModel

    silenced = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    for module in silenced:
        module.__dict__["warn_if_padding_and_no_attention_mask"] = _no_padding_check
    try:
        yield
    finally:
        for module in silenced:
            module.__dict__.pop("warn_if_padding_and_no_attention_mask", None)


def _is_zero3(accelerator: Any) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3
