"""Sharded parameters (DeepSpeed ZeRO-3, FSDP2): building companions from them and gathering them to sample.

Under ZeRO-3 ``from_pretrained`` / ``from_config`` build models inside ``deepspeed.zero.Init``, so every parameter
is a placeholder of shape 0 whose shard lives in ``param.ds_tensor`` (``param.ds_shape`` is the full shape):
reading, copying or ``deepcopy``-ing such a model sees no weights. Under FSDP2 the pair is wrapped with
``fully_shard``; sub-modules that were not wrapped on their own (GPT-2's embeddings and head belong to the root
unit) hold sharded ``DTensor`` parameters that only the root's forward gathers.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import nn


def parameters_are_sharded(accelerator: Any) -> bool:
    """FSDP or ZeRO-3: every rank holds a piece of each weight. Read from accelerate's state, which has the plugin
    whether DeepSpeed came from ``--deepspeed`` or from the accelerate config (``TrainingArguments`` has
    ``hf_deepspeed_config`` only in the first case)."""
    state = accelerator.state
    if getattr(state, "fsdp_plugin", None) is not None:
        return True
    plugin = getattr(state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def is_partitioned(module: nn.Module) -> bool:
    """Whether ``module`` holds DeepSpeed ZeRO-3 partitioned parameters."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def full_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's whole shape, also for a ZeRO-3 placeholder (whose own shape is 0)."""
    return getattr(param, "ds_shape", param.shape)


def gathered(module: nn.Module, modify: bool = False) -> Any:
    """Context in which a ZeRO-3 partitioned ``module`` has its whole parameters on every rank (a no-op otherwise).

    ``modify=True``: changes made inside (identically on every rank) are written back to the shards on exit.
    """
    if not is_partitioned(module):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0 if modify else None)


def whole_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict with whole tensors (copies), gathered first when the module is partitioned."""
    with gathered(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy with the same weights: ``deepcopy``, or for a ZeRO-3 partitioned ``PreTrainedModel``
    a new model built the same way (partitioned too) and loaded from the gathered weights."""
    if not is_partitioned(model):
        return copy.deepcopy(model)
    state = whole_state_dict(model)
    clone = type(model)._from_config(copy.deepcopy(model.config), dtype=model.dtype)
    load_whole_state_dict(clone, state)
    return clone


def load_whole_state_dict(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> Any:
    """``module.load_state_dict(state)`` that also writes through ZeRO-3 partitioning."""
    with gathered(module, modify=True):
        return module.load_state_dict(state, strict=strict)


@contextmanager
def fsdp_root_unsharded(engine: Any) -> Iterator[None]:
    """FSDP2: the root unit's parameters gathered (and resharded after) while a sub-module is called on its own.

    Sampling calls the generator outside the pair's forward, so the parameters that only the root unit owns
    (embeddings, LM head) would stay sharded ``DTensor``s ("mixed torch.Tensor and DTensor"). Sub-units wrapped on
    their own (the transformer blocks) gather themselves in their forward.
    """
    unshard = getattr(engine, "unshard", None)
    if unshard is None or not _is_fsdp2(engine):
        yield
        return
    unshard()
    try:
        yield
    finally:
        engine.reshard()


def _is_fsdp2(module: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(module, FSDPModule)
