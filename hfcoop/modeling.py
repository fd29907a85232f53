"""Loading generators and companions, and the one module that holds both.

The generator and its companion live in one ``nn.Module`` (:class:`CooperativePair`) so that a single
``accelerator.prepare`` and one optimizer with per-model parameter groups serve both: mixed precision,
DDP/DeepSpeed/FSDP, gradient accumulation and checkpoints then cover the companion for free.
"""

from __future__ import annotations

import contextlib
import glob
import inspect
import json
import os
from typing import Any, TypedDict

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .shared_base import AdapterCompanion

try:
    from peft import PeftModel, set_peft_model_state_dict
except ImportError:  # peft is a hard dependency, but keep import errors readable
    PeftModel = None  # type: ignore[assignment,misc]

def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a ``PeftModel`` wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if PeftModel is not None and isinstance(model, PeftModel) else model


def max_positions(model: nn.Module) -> int | None:
    """Most positions the model can embed, read from its text config (None: unknown / unbounded).

    The one definition of a model's position limit: GPT-2 names it ``n_positions`` / ``n_ctx``, Llama and most
    others ``max_position_embeddings``; a multimodal config keeps it in its text config.
    """
    config = getattr(unwrap_peft(model), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# Encoder-only families that AutoModelForCausalLM would silently turn into a (untrained) decoder head.
_ENCODER_ONLY = {
    "bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta", "camembert",
    "modernbert", "mpnet", "xlm-roberta-xl", "ernie", "megatron-bert", "nomic_bert",
}  # fmt: skip


def _check_causal_config(config: Any, name: str) -> None:
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{name} is an encoder-decoder model ({model_type}); hfcoop trains decoder-only causal LMs. "
            "Use a causal LM such as GPT-2, SmolLM, Qwen or Llama."
        )
    if model_type in _ENCODER_ONLY and not getattr(config, "is_decoder", False):
        raise ValueError(
            f"{name} is an encoder-only model ({model_type}) and cannot generate text left to right. "
            "Use a causal LM (AutoModelForCausalLM) such as GPT-2, SmolLM, Qwen or Llama."
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{name} ({model_type}) has no causal-LM head in transformers; pick a causal LM.")


_DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_init_kwargs(
    init_kwargs: dict[str, Any] | str | None,
    *,
    trust_remote_code: bool = False,
    default_dtype: Any = "auto",
    name: str = "model_init_kwargs",
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments from a config's ``model_init_kwargs`` (TRL's convention).

    Accepts a dict (YAML) or a JSON string (command line); ``dtype`` may be a ``torch.dtype`` or one of
    ``auto/bfloat16/float16/float32`` (default ``auto``: the checkpoint's own dtype); ``quantization_config`` may be
    a dict, turned into a ``BitsAndBytesConfig`` (``load_in_4bit``/``load_in_8bit`` and the ``bnb_*`` keys).
    ``trust_remote_code`` comes from the config's own field unless the kwargs set it.
    """
    if isinstance(init_kwargs, str):
        try:
            init_kwargs = json.loads(init_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be a dict or a JSON object string, got {init_kwargs!r}: {err}.") from None
    if init_kwargs is not None and not isinstance(init_kwargs, dict):
        raise ValueError(f"{name} must be a dict (YAML mapping) or a JSON object string, got {type(init_kwargs).__name__}.")
    kwargs = dict(init_kwargs or {})
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    old_spelling = kwargs.pop("torch_dtype", None)  # accepted, as from_pretrained does
    dtype = kwargs.get("dtype", old_spelling)
    dtype = default_dtype if dtype is None else dtype
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype must be a torch.dtype or one of {', '.join(_DTYPES)}, got {dtype!r}.")
        dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    kwargs["dtype"] = dtype
    quantization = kwargs.get("quantization_config")
    if isinstance(quantization, dict):
        from transformers import BitsAndBytesConfig

        quantization = dict(quantization)
        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if isinstance(quantization.get(key), str):
                quantization[key] = getattr(torch, quantization[key])
        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
    return kwargs


def is_quantized(model: nn.Module) -> bool:
    """Whether the model's weights are k-bit quantized (bitsandbytes 4/8-bit or another quantizer): they cannot be
    trained directly, only through adapters."""
    base = unwrap_peft(model)
    return bool(
        getattr(base, "is_loaded_in_4bit", False)
        or getattr(base, "is_loaded_in_8bit", False)
        or getattr(base, "is_quantized", False)
        or getattr(base, "hf_quantizer", None) is not None
    )


def prepare_quantized(model: nn.Module) -> nn.Module:
    """QLoRA's preparation (PEFT's ``prepare_model_for_kbit_training``, as TRL does) for a k-bit model about to get
    adapters: base weights frozen, fp16/bf16 norms and heads upcast to float32. Activation checkpointing is left
    to ``activation_checkpointing`` (the pair enables it with input grads), so it is not turned on twice here."""
    if not is_quantized(model):
        return model
    keep_4bit_weights_unpacked(model)
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_4bit_weights_unpacked(model: nn.Module) -> None:
    """Turn off bitsandbytes' packed CPU format on every 4-bit layer of a model about to be trained.

    On AVX512-BF16 CPUs bitsandbytes (0.50) repacks a 4-bit weight for a fused inference kernel the first time the
    layer runs in eval mode without grad, which is how hfcoop samples, and never unpacks it when training resumes:
    the next training forward fails ("a view of a leaf Variable ... in-place"), and layers narrower than one
    quantization block fail to pack at all ("shape '[96, 0]' is invalid"). Training alternates sampling and
    updates, so trained models keep bitsandbytes' dequantize path (the one GPUs and training use anyway)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_causal_lm(
    model: str | PreTrainedModel,
    *,
    name: str = "model",
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    init_kwargs: dict[str, Any] | str | None = None,
) -> PreTrainedModel:
    """A causal LM from a model object, a local path or a Hub id; a clear error for anything else.

    ``init_kwargs`` (see :func:`resolve_init_kwargs`) go to ``from_pretrained`` when ``model`` is a name.
    """
    if isinstance(model, str):
        kwargs = resolve_init_kwargs(init_kwargs, trust_remote_code=trust_remote_code, default_dtype=dtype)
        config = AutoConfig.from_pretrained(
            model, trust_remote_code=kwargs["trust_remote_code"], revision=kwargs.get("revision")
        )
        _check_causal_config(config, f"{name} '{model}'")
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    base = unwrap_peft(model)
    if not isinstance(base, PreTrainedModel) or not hasattr(base, "generate"):
        raise ValueError(f"{name} must be a transformers causal LM or a path/Hub id, got {type(model).__name__}.")
    _check_causal_config(base.config, f"{name} ({type(base).__name__})")
    if type(base).__name__ not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        raise ValueError(
            f"{name} is a {type(base).__name__}, not a causal-LM class; load it with AutoModelForCausalLM."
        )
    return model


def load_tokenizer(
    processing_class: Any, model_name_or_path: str | None, *, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """The tokenizer, with a pad token (EOS reused, as TRL does) and left padding for generation.

    ``revision`` / ``trust_remote_code``: as for the model (``model_init_kwargs``), when loaded by name."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **({"revision": revision} if revision else {})}
    if processing_class is None:
        if model_name_or_path is None:
            raise ValueError("Pass `processing_class` (a tokenizer) when the model is given as an object.")
        processing_class = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    elif isinstance(processing_class, str):
        processing_class = AutoTokenizer.from_pretrained(processing_class, **kwargs)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)  # processors wrap a tokenizer
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no EOS token, so generated sequences could never end: set one with "
            "`tokenizer.add_special_tokens({'eos_token': ...})` (and resize the model's embeddings)."
        )
    if tokenizer.pad_token_id is None:
        # Padding positions are always masked, so reusing EOS is safe and needs no new embedding row.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def eos_token_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS first (the one appended to real completions),
    then the model's ``generation_config.eos_token_id`` (an int or a list, e.g. an instruct model's end-of-turn
    token and EOS). Sampling stops on any of them and masks treat them alike."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    for token_id in [extra] if isinstance(extra, int) else list(extra or []):
        if int(token_id) not in ids:
            ids.append(int(token_id))
    return ids


def vocab_size_of(model: nn.Module) -> int:
    from .distributed import full_shape  # ZeRO-3 placeholders have shape 0

    return full_shape(model.get_output_embeddings().weight)[0]


def check_same_vocabulary(generator: nn.Module, companion: nn.Module, tokenizer: Any, companion_name: str) -> None:
    """Generator and a token-level companion must index the same vocabulary (CoT's per-token KL needs it)."""
    g, c = vocab_size_of(generator), vocab_size_of(companion)
    if g != c:
        raise ValueError(
            f"Vocabulary mismatch: the generator has {g} output tokens but the {companion_name} has {c}. "
            f"The {companion_name} must use the generator's tokenizer; pass `{companion_name}=None` to start it "
            "as a copy of the generator."
        )
    if len(tokenizer) > g:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the generator only {g} embeddings: call "
            "`model.resize_token_embeddings(len(tokenizer))` first."
        )
    # Same size is not same vocabulary: two tokenizers of one size can map ids to different strings, and the
    # per-token KL would then compare unrelated tokens. Compare with the companion's own tokenizer where it has one.
    companion_path = getattr(getattr(companion, "config", None), "_name_or_path", None)
    generator_path = getattr(getattr(generator, "config", None), "_name_or_path", None)
    if companion_path and companion_path != generator_path and os.path.isdir(companion_path):
        try:
            companion_tokenizer = AutoTokenizer.from_pretrained(companion_path)
        except (OSError, ValueError):  # a model folder without tokenizer files: nothing to compare with
            return
        if companion_tokenizer.get_vocab() != tokenizer.get_vocab():
            differing = sorted(set(companion_tokenizer.get_vocab().items()) ^ set(tokenizer.get_vocab().items()))[:3]
            raise ValueError(
                f"Vocabulary mismatch: the {companion_name} at '{companion_path}' has as many tokens as the generator "
                f"but a different vocabulary (e.g. {differing}). The {companion_name} must use the generator's "
                f"tokenizer; pass `{companion_name}=None` to start it as a copy of the generator."
            )


def uses_logits_to_keep(model: nn.Module) -> bool:
    base = unwrap_peft(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def sequence_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Forward kwargs for left-padded prompt + right-padded completion, with positions that skip the padding."""
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }


def completion_logits(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    completion_length: int,
    completion_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits that predict each completion token, ``(B, C, V)``; only those positions go through the LM head.

    With ``completion_mask`` (``(B, C)``, 0/1) only the masked-in tokens' logits are returned, packed row-major
    as ``(N, V)`` with ``N = completion_mask.sum()`` (``logits[completion_mask.bool()]``, same values).
    """
    kwargs = dict(inputs)
    if completion_mask is not None and uses_mask_logits_to_keep(model):
        # Why: padding after EOS / after short real completions is often a third or more of the completion block,
        # and the LM head (hidden x vocab) is the largest matmul of a small LM's step. transformers 5 models that
        # slice with `slice_logits_to_keep` accept a boolean (B, L) mask and project only those positions.
        keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
        keep[:, -completion_length - 1 : -1] = completion_mask.bool()
        kwargs["logits_to_keep"] = keep
        logits = model(**kwargs, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1])
    if uses_logits_to_keep(model):
        kwargs["logits_to_keep"] = completion_length + 1
    logits = model(**kwargs, use_cache=False).logits
    logits = logits[:, -completion_length - 1 : -1]
    return logits if completion_mask is None else logits[completion_mask.bool()]


_MASK_LOGITS_TO_KEEP: dict[type, bool] = {}


def uses_mask_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``logits_to_keep`` may be a boolean ``(B, L)`` mask (models that slice with transformers'
    ``slice_logits_to_keep``, i.e. nearly every causal LM of transformers 5; not remote code)."""
    base = unwrap_peft(model)
    cls = type(base)
    if cls not in _MASK_LOGITS_TO_KEEP:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _MASK_LOGITS_TO_KEEP[cls] = (
            "logits_to_keep" in inspect.signature(cls.forward).parameters
            and cls.__module__.startswith("transformers.")
            and "slice_logits_to_keep(" in source
        )
    return _MASK_LOGITS_TO_KEEP[cls]


def _pad_configs(model: nn.Module) -> list[Any]:
    """The configs whose ``pad_token_id`` a sequence classifier reads to pool (its own and its text config)."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if config is None:
        return []
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [config] if text is config else [config, text]


def classifier_forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a sequence classifier pooled on the attention mask: each row's *last attended* token.

    Decoder classifiers in transformers pool the last token that is not ``config.pad_token_id``. With pad == EOS
    (GPT-2 and every tiny model) a final EOS is then skipped, so "a man riding <eos>" and "a man riding" get the
    same logit and the scorer cannot tell a finished sequence from a truncated one. Here the padding (mask 0) is
    refilled with an id that no attended token of the batch uses, and the model pools on that id for this call:
    the pooled token is then exactly the last attended one, whatever the classifier class (user-supplied ones
    included). Encoders pool their first token and are unaffected. Inputs must be right-padded.
    """
    ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    configs = _pad_configs(model)
    if ids is None or mask is None or not configs:
        return model(**inputs).logits
    # The pool id must differ from each row's last attended token only (earlier tokens equal to it are still
    # left of the pooled position); padding takes it, which is harmless since the mask hides those positions.
    last = ids.gather(1, (mask.cumsum(1).argmax(1, keepdim=True))).squeeze(1)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = embeddings.num_embeddings if embeddings is not None else int(ids.max()) + 2
    taken = torch.zeros(max(vocab, int(last.max()) + 1), dtype=torch.bool, device=ids.device)
    taken[last] = True
    free = (~taken[:vocab]).nonzero()
    if free.numel() == 0:  # every id ends some row (tiny vocabularies): pool the rows in two calls
        split = last == 0
        logits = classifier_forward(model, _rows(inputs, ~split))
        out = logits.new_empty((ids.shape[0], *logits.shape[1:]))
        out[~split], out[split] = logits, classifier_forward(model, _rows(inputs, split))
        return out
    pool_id = int(free[0])
    old = [c.pad_token_id for c in configs]
    try:
        for c in configs:
            c.pad_token_id = pool_id
        return model(**{**inputs, "input_ids": ids.masked_fill(mask == 0, pool_id)}).logits
    finally:
        for c, value in zip(configs, old):
            c.pad_token_id = value


def _rows(inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[keep] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in inputs.items()}


class PairInput(TypedDict, total=False):
    """One model's part of a :class:`CooperativePair` forward (a plain dict at run time, so DDP, DeepSpeed and
    FSDP pass it through untouched).

    ``inputs``: the model's forward kwargs. ``completion_length``: a causal LM returns the logits that predict the
    last ``completion_length`` positions; absent for a one-logit scorer. ``completion_mask``: with it, an LM
    returns only the masked-in tokens' logits, packed ``(N, V)``.
    """

    inputs: dict[str, torch.Tensor]
    completion_length: int
    completion_mask: torch.Tensor


class CooperativePair(nn.Module):
    """Generator + companion as one module; ``forward`` runs whichever of the two is given inputs.

    Each optimizer step trains one of the two (the papers' order: companion steps, then a generator step reading the
    updated companion); see :meth:`hfcoop.trainers.base.CooperativeTrainer.companion_update` / ``generator_update``.
    ``companion`` may be ``None`` (MLE) or any ``nn.Module`` (an LM, a sequence classifier, a parameter holder).
    """

    def __init__(self, generator: nn.Module, companion: nn.Module | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.companion = companion

    @property
    def config(self) -> Any:  # Trainer and accelerate read model.config (e.g. for FLOPs, model cards)
        return self.generator.config

    def role_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter by the model that trains it: ``{"generator": [...], "companion": [...]}``. In shared-base
        mode the companion's adapter lives inside the generator's ``PeftModel`` but is the companion's."""
        companion: list[nn.Parameter] = []
        if isinstance(self.companion, AdapterCompanion):
            companion = self.companion.all_parameters()
        elif self.companion is not None:
            companion = list(self.companion.parameters())
        ids = {id(p) for p in companion}
        return {"generator": [p for p in self.generator.parameters() if id(p) not in ids], "companion": companion}

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Trainer's ``activation_checkpointing`` applies to every model of the pair that supports it."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        for module in (self.generator, self.companion):
            if module is not None and getattr(module, "supports_gradient_checkpointing", False):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                if hasattr(module, "enable_input_require_grads"):  # PEFT: frozen embeddings need grad inputs
                    module.enable_input_require_grads()

    def forward(
        self,
        generator: PairInput | None = None,
        companion: PairInput | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gen_out = comp_out = None
        if generator is not None:
            gen_out = completion_logits(
                self.generator, generator["inputs"], generator["completion_length"], generator.get("completion_mask")
            )
        if companion is not None:
            if "completion_length" in companion:
                lm, scope = self.companion, contextlib.nullcontext()
                if isinstance(lm, AdapterCompanion):  # shared-base mode: the generator's model, companion adapter
                    lm, scope = lm.peft_model, lm.active()
                with scope:
                    comp_out = completion_logits(
                        lm, companion["inputs"], companion["completion_length"], companion.get("completion_mask")
                    )
            else:
                comp_out = classifier_forward(self.companion, companion["inputs"])
        return gen_out, comp_out


def _tied_names(module: nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier one (dropped by ``save_pretrained``)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(name)
        else:
            seen[ptr] = name
    return tied


def save_module(module: nn.Module, directory: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` (safetensors) for models and adapters; plain safetensors for other modules."""
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(directory, state_dict=state_dict)
        return
    from safetensors.torch import save_model

    os.makedirs(directory, exist_ok=True)
    save_model(module, os.path.join(directory, "model.safetensors"))


def load_module_weights(module: nn.Module, directory: str) -> None:
    """Loads weights written by :func:`save_module` back into ``module`` in place (exact resume)."""
    if isinstance(module, AdapterCompanion):
        module.load_weights(directory)
        return
    if PeftModel is not None and isinstance(module, PeftModel):
        set_peft_model_state_dict(module, load_file(os.path.join(directory, "adapter_model.safetensors")))
        return
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted({os.path.join(directory, v) for v in json.load(f)["weight_map"].values()})
    else:
        files = sorted(glob.glob(os.path.join(directory, "model*.safetensors")))  # not state saved beside it
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {directory}: this is not a hfcoop checkpoint.")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(path))
    result = module.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - _tied_names(module)
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"Checkpoint {directory} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}."
        )
