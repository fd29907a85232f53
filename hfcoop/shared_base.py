"""Shared-base mode: generator and companion as two LoRA adapters on one frozen base model.

With ``shared_base=True`` (and a ``peft_config``) the generator is ``get_peft_model(base, peft_config)`` (adapter
``"default"``) and the companion is a second adapter of the *same* ``PeftModel`` (``add_adapter``), plus a
one-logit head for a scorer companion (ψ-MLE's ratio model, GCN's discriminator). The base weights exist
once and are frozen, so the pair costs one model plus two adapters instead of two full models with their
gradients and optimizer states.

Why not ``PeftModel.set_adapter``: it also flips ``requires_grad`` (only the active adapter stays trainable),
and one step needs both adapters' gradients (under DeepSpeed / FSDP from one backward through both forwards).
:func:`adapter_scope` switches only which adapter the LoRA layers *compute with*; both stay trainable, and the
generator adapter is active everywhere outside a companion call (sampling, export, evaluation).
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

GENERATOR_ADAPTER = "default"  # peft's name for the adapter get_peft_model creates


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapter_scope(layers: list[nn.Module], name: str) -> Iterator[None]:
    """The LoRA ``layers`` compute with adapter ``name`` inside the block (``requires_grad`` is left alone)."""
    previous = [layer._active_adapter for layer in layers]
    for layer in layers:
        layer._active_adapter = [name]
    try:
        yield
    finally:
        for layer, active in zip(layers, previous):
            layer._active_adapter = active


def check_shared_base_peft_config(peft_config: Any) -> None:
    """Shared-base mode needs LoRA-type adapters that touch only adapter weights (nothing of the base trained)."""
    if peft_config is None:
        raise ValueError(
            "shared_base=True puts the generator and the companion as two adapters on one frozen base model, so it "
            "needs a `peft_config` (e.g. `LoraConfig(r=16, target_modules='all-linear', task_type='CAUSAL_LM')`)."
        )
    if getattr(peft_config, "is_prompt_learning", False):
        raise ValueError("shared_base=True needs a LoRA-type peft_config (prompt learning adapters are not supported).")
    if getattr(peft_config, "modules_to_save", None) or getattr(peft_config, "trainable_token_indices", None):
        raise ValueError(
            "shared_base=True keeps the whole base frozen and shared: remove `modules_to_save` / "
            "`trainable_token_indices` from the peft_config (they would train full copies of base modules)."
        )


class AdapterCompanion(nn.Module):
    """The companion of shared-base mode: the generator's ``PeftModel`` seen through adapter ``adapter_name``.

    ``head=None``: a causal LM (CoT's mediator); ``forward`` is the LM with the companion adapter. With a
    ``head`` (``nn.Linear(hidden, 1)``): a one-logit sequence scorer that pools the last real token of
    right-padded inputs (what ``*ForSequenceClassification`` decoders do) and returns ``.logits`` ``(B, 1)``.

    The ``PeftModel`` is *not* a submodule (its weights belong to the generator): this module's own parameters are
    the head's only; :meth:`adapter_parameters` lists the companion adapter's.
    """

    def __init__(self, peft_model: nn.Module, adapter_name: str, head: nn.Module | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not registered: no second copy in the pair's state
        self.adapter_name = adapter_name
        self.head = head
        self._layers = tuner_layers(peft_model)

    @property
    def config(self) -> Any:
        return self.peft_model.config

    def get_output_embeddings(self) -> nn.Module:
        return self.peft_model.get_output_embeddings()

    def train(self, mode: bool = True) -> "AdapterCompanion":
        """Train/eval mode for the head *and* the shared ``PeftModel``: its dropout layers run inside this module's
        forward although it is not a submodule, so ``companion.eval()`` alone would leave the companion's signal
        (and GCN's resampling scores) drawn with dropout. The generator, the same ``PeftModel``, is set alike:
        the pair always switches both together, and the companion's eval forwards restore the mode afterwards."""
        super().train(mode)
        self.peft_model.train(mode)
        return self

    def active(self) -> Any:
        """Context in which the shared LoRA layers compute with the companion adapter."""
        return adapter_scope(self._layers, self.adapter_name)

    def adapter_parameters(self) -> list[nn.Parameter]:
        tag = f".{self.adapter_name}."
        return [p for n, p in self.peft_model.named_parameters() if tag in n]

    def all_parameters(self) -> list[nn.Parameter]:
        """Every parameter the companion trains: its adapter's and its head's."""
        return self.adapter_parameters() + list(self.parameters())

    def forward(self, **inputs: Any) -> Any:
        with self.active():
            if self.head is None:
                return self.peft_model(**inputs)
            base = self.peft_model.get_base_model()
            backbone = getattr(base, base.base_model_prefix)
            hidden = backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        last = (inputs["attention_mask"].sum(1) - 1).clamp(min=0)  # right-padded: the last real token
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return SequenceClassifierOutput(logits=self.head(pooled.to(self.head.weight.dtype)))

    # Checkpoints: the companion adapter (peft's format, loadable with `PeftModel.load_adapter`) and the head.
    def save_pretrained(self, directory: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        from peft import get_peft_model_state_dict

        os.makedirs(directory, exist_ok=True)
        adapter = get_peft_model_state_dict(self.peft_model, adapter_name=self.adapter_name)
        save_file({k: v.detach().contiguous() for k, v in adapter.items()},
                  os.path.join(directory, "adapter_model.safetensors"))  # fmt: skip
        self.peft_model.peft_config[self.adapter_name].save_pretrained(directory)
        if self.head is not None:
            save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()},
                      os.path.join(directory, "head.safetensors"))  # fmt: skip

    def load_weights(self, directory: str) -> None:
        from peft import set_peft_model_state_dict

        path = os.path.join(directory, "adapter_model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No companion adapter in {directory}: this is not a shared-base hfcoop checkpoint.")
        result = set_peft_model_state_dict(self.peft_model, load_file(path), adapter_name=self.adapter_name)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"Companion adapter in {directory} does not match the model: unexpected {unexpected[:5]}.")
        if self.head is not None:
            self.head.load_state_dict(load_file(os.path.join(directory, "head.safetensors")))


def add_companion_adapter(
    generator: nn.Module, peft_config: Any, adapter_name: str, scorer: bool = False
) -> AdapterCompanion:
    """Adds the companion's adapter to the generator's ``PeftModel`` (same LoRA settings; LoRA's zero B matrices
    start it at the base model, i.e. at the initial generator) and, for a scorer, a zero one-logit head
    (logit 0 at the start: r = 1, D = 1/2, as for the default scorer)."""
    config = copy.deepcopy(peft_config)
    generator.add_adapter(adapter_name, config)
    tag = f".{adapter_name}."
    for name, param in generator.named_parameters():
        if tag in name:
            param.requires_grad_(True)  # add_adapter leaves a non-active adapter frozen
    head = None
    if scorer:
        base = generator.get_base_model()
        hidden = base.get_input_embeddings().weight
        head = nn.Linear(hidden.shape[1], 1, bias=False, device=hidden.device, dtype=torch.float32)
        nn.init.zeros_(head.weight)
    return AdapterCompanion(generator, adapter_name, head)

