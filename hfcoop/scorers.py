"""The scorer companion: a single-logit sequence classifier that scores a completion given its prompt.

ψ-MLE's density-ratio estimator (``log r = logit``) and GCN's discriminator (``D = sigmoid(logit)``) are both
scorers. A scorer is any ``AutoModelForSequenceClassification`` with one output logit, or a path/Hub id of one
(a causal-LM checkpoint gets a fresh one-logit head); by default it is built from the generator itself (same
backbone weights, new head). It may use its own tokenizer: generator token ids are then decoded and
re-tokenised exactly as :func:`hfcoop.data.tokenize_row` would have tokenised the text.

The companion stays a plain ``PreTrainedModel`` (so checkpoints, PEFT, DDP and ``save_pretrained`` work as for
any companion); this module only builds its inputs (:class:`ScorerInputs`) and loads it (:func:`load_scorer`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from .batching import pad_right
from .data import start_token_id
from .distributed import full_shape, gathered, load_whole_state_dict, whole_state_dict
from .modeling import PairInput, classifier_forward, load_tokenizer, max_positions, resolve_init_kwargs, unwrap_peft

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(prompt_ids, prompt_mask, completion_ids, completion_mask) -> (B,)`` logits (generator token ids in)."""

_SEQ_CLS_CLASSES = set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values())


def check_single_logit(model: nn.Module, name: str) -> None:
    """A scorer must be a sequence classifier with exactly one output logit; a clear error otherwise."""
    base = unwrap_peft(model)
    cls_name = type(base).__name__
    if not isinstance(base, PreTrainedModel) or (
        cls_name not in _SEQ_CLS_CLASSES and not cls_name.endswith("ForSequenceClassification")
    ):
        raise ValueError(
            f"The {name} is a {cls_name}, not a sequence classifier. Pass an AutoModelForSequenceClassification "
            f"with one logit (`AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`), a path/Hub "
            f"id, or None to build it from the generator."
        )
    num_labels = getattr(base.config, "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"The {name} ({cls_name}) has {num_labels} output logits but hfcoop needs a single-logit head "
            f"(num_labels=1): its logit is the log density ratio / the discriminator's logit. Load it with "
            f"`AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`."
        )


def _zero_new_head(model: PreTrainedModel, names: list[str] | None = None) -> None:
    """A zero head starts the scorer at logit 0 (r = 1, D = 1/2): training starts from the unweighted objective."""
    prefix = model.base_model_prefix + "."
    with torch.no_grad(), gathered(model, modify=True):
        for param_name, param in model.named_parameters():
            if (names is None and not param_name.startswith(prefix)) or (names is not None and param_name in names):
                param.zero_()


def scorer_from_generator(generator: PreTrainedModel, pad_token_id: int | None, seed: int = 0) -> PreTrainedModel:
    """A one-logit sequence classifier with the generator's backbone weights (its own checkpoint) and a zero head."""
    generator = unwrap_peft(generator)
    config = copy.deepcopy(generator.config)
    config.num_labels = 1
    config.pad_token_id = pad_token_id if pad_token_id is not None else config.pad_token_id
    config.architectures = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # any remaining random init is reproducible across runs and processes
            scorer = AutoModelForSequenceClassification.from_config(config, dtype=generator.dtype)
    except ValueError as err:
        raise ValueError(
            f"{type(generator).__name__} has no sequence-classification counterpart in transformers; pass the "
            "companion explicitly as an AutoModelForSequenceClassification with num_labels=1."
        ) from err
    # whole_state_dict / load_whole_state_dict: under ZeRO-3 both models are partitioned (shape-0 placeholders).
    load_whole_state_dict(
        getattr(scorer, scorer.base_model_prefix), whole_state_dict(getattr(generator, generator.base_model_prefix))
    )
    _zero_new_head(scorer)
    scorer.config._name_or_path = generator.config._name_or_path
    return scorer.to(generator.device)


def load_scorer(
    scorer: str | nn.Module | None,
    generator: PreTrainedModel,
    generator_tokenizer: Any,
    *,
    name: str = "scorer",
    tokenizer: str | Any = None,
    max_completion_length: int | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    init_kwargs: dict[str, Any] | str | None = None,
) -> tuple[nn.Module, Any]:
    """The scorer companion and its tokenizer, checked.

    ``scorer``: None (built from the generator), a path/Hub id (a saved classifier must have one logit; a
    causal-LM checkpoint gets a new zero one-logit head), or a model object. ``tokenizer``: the scorer's tokenizer
    (object or path) when it is not the generator's; by default the checkpoint's own for a path and the
    generator's for None or an object.
    """
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
    if scorer is None:
        model: nn.Module = scorer_from_generator(generator, generator_tokenizer.pad_token_id, seed)
        tokenizer = tokenizer or generator_tokenizer
    elif isinstance(scorer, str):
        model, tokenizer = _scorer_from_path(scorer, tokenizer, init_kwargs, trust_remote_code, seed)
    elif isinstance(scorer, nn.Module):
        model = scorer
        tokenizer = tokenizer or generator_tokenizer
    else:
        raise ValueError(f"The {name} must be a model, a path/Hub id or None, got {type(scorer).__name__}.")
    check_single_logit(model, name)
    tokenizer = load_tokenizer(tokenizer, None)  # pad token + checks, as for the generator's tokenizer
    _check_scorer_fits(model, tokenizer, name, max_completion_length)
    return model, tokenizer


def _scorer_from_path(
    path: str, tokenizer: Any, init_kwargs: dict[str, Any] | str | None, trust_remote_code: bool, seed: int
) -> tuple[nn.Module, Any]:
    """A saved one-logit classifier, or a causal-LM checkpoint with a new zeroed one-logit head, and its tokenizer
    (the checkpoint's own unless one is given)."""
    kwargs = resolve_init_kwargs(init_kwargs, trust_remote_code=trust_remote_code, name="companion_init_kwargs")
    trust_remote_code, revision = kwargs["trust_remote_code"], kwargs.get("revision")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    if any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    else:  # e.g. a causal LM: same backbone, new one-logit head (zeroed, see _zero_new_head)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, output_loading_info=True, **kwargs
            )
        _zero_new_head(model, list(info["missing_keys"]))
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    return model, tokenizer


def _check_scorer_fits(model: nn.Module, tokenizer: Any, name: str, max_completion_length: int | None) -> None:
    """The scorer's pad id is set, and its embeddings cover its tokenizer and a completion plus a prompt token."""
    base = unwrap_peft(model)
    if base.config.pad_token_id is None:
        # Decoder classifiers refuse batches without a pad id (hfcoop pools on the attention mask regardless).
        base.config.pad_token_id = tokenizer.pad_token_id
    embeddings = base.get_input_embeddings()
    rows = full_shape(embeddings.weight)[0] if embeddings is not None else None  # ZeRO-3: not the placeholder's 0
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"The {name}'s tokenizer has {len(tokenizer)} tokens but the {name} only {rows} "
            f"embeddings: if the {name} uses another tokenizer than the generator, pass it (`scorer_tokenizer`)."
        )
    positions = max_positions(model)
    if positions is not None and max_completion_length is not None and positions < max_completion_length + 1:
        raise ValueError(
            f"The {name} embeds at most {positions} positions, fewer than a completion of max_completion_length="
            f"{max_completion_length} plus one prompt token: lower max_completion_length or use a longer {name}."
        )


def same_vocabulary(a: Any, b: Any) -> bool:
    return a is b or (a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id)


class ScorerInputs:
    """Builds a scorer's ``input_ids`` / ``attention_mask`` from generator ids (left-padded prompt + right-padded
    completion): prompt followed by completion, contiguous and right-padded, truncated from the left to the
    scorer's ``max_length`` (the completion, being last, is kept). Classifiers pool the last attended token
    (decoders, see :func:`~hfcoop.modeling.classifier_forward`: a final EOS counts even when pad == EOS) or the
    first one (encoders), so both see the sequence as a plain right-padded text.

    With a different scorer tokenizer the prompt and completion are decoded and re-tokenised the way
    :func:`hfcoop.data.tokenize_row` tokenises text (prompt with special tokens, completion without, EOS
    appended when the generator's completion ended with EOS).
    """

    def __init__(
        self,
        generator_tokenizer: Any,
        scorer_tokenizer: Any,
        max_length: int | None = None,
        eos_token_ids: list[int] | None = None,
    ) -> None:
        self.generator_tokenizer = generator_tokenizer
        self.scorer_tokenizer = scorer_tokenizer
        self.max_length = max_length
        # The generator's EOS ids (several for instruct models): a completion ending with any of them has ended.
        self.eos_token_ids = eos_token_ids or [generator_tokenizer.eos_token_id]
        self.same_tokenizer = same_vocabulary(generator_tokenizer, scorer_tokenizer)

    def __call__(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if prompt_ids.shape[0] != completion_ids.shape[0] or prompt_ids.shape != prompt_mask.shape or (
            completion_ids.shape != completion_mask.shape
        ):
            raise ValueError(
                f"Scorer inputs: prompts {tuple(prompt_ids.shape)} (mask {tuple(prompt_mask.shape)}) and completions "
                f"{tuple(completion_ids.shape)} (mask {tuple(completion_mask.shape)}) must have one row per sequence."
            )
        if self.same_tokenizer:
            ids = torch.cat([prompt_ids, completion_ids], dim=1)
            mask = torch.cat([prompt_mask, completion_mask], dim=1)
            # Stable sort of "is padding" packs each row's tokens to the left, in order.
            order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)
            ids, mask = ids.gather(1, order), mask.gather(1, order)
            lengths = mask.sum(1)
            width = max(int(lengths.max()), 1)
            ids, mask = ids[:, :width], mask[:, :width]
            ids = ids.masked_fill(mask == 0, self.scorer_tokenizer.pad_token_id)
            if self.max_length is not None and width > self.max_length:
                ids, mask = self._truncate_left(ids, mask, lengths)
            return {"input_ids": ids, "attention_mask": mask}
        return self._retokenize(prompt_ids, prompt_mask, completion_ids, completion_mask)

    def _truncate_left(
        self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Keep each row's last max_length tokens, still right-padded.
        rows = [ids[i, max(0, int(n) - self.max_length) : int(n)].tolist() for i, n in enumerate(lengths)]
        return pad_right(rows, self.scorer_tokenizer.pad_token_id, ids.device, min_width=1)

    def _retokenize(self, *rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Generator ids (``__call__``'s four tensors) -> text -> the scorer's ids (tokenizers differ)."""
        gen_tok, tok = self.generator_tokenizer, self.scorer_tokenizer
        gen_eos = self.eos_token_ids
        scorer_rows = []
        for p, pm, c, cm in zip(*rows):
            prompt_text = gen_tok.decode(p[pm.bool()].tolist(), skip_special_tokens=True)
            completion = c[cm.bool()].tolist()
            ended = bool(completion) and completion[-1] in gen_eos
            completion_text = gen_tok.decode(completion, skip_special_tokens=True)
            ids = tok(prompt_text)["input_ids"] if prompt_text else []
            ids = ids or [start_token_id(tok)]
            ids = ids + tok(completion_text, add_special_tokens=False)["input_ids"]
            ids = ids + ([tok.eos_token_id] if ended else [])
            scorer_rows.append(ids[-self.max_length :] if self.max_length else ids)
        ids, mask = pad_right(scorer_rows, self.scorer_tokenizer.pad_token_id, rows[0].device, min_width=1)
        return {"input_ids": ids, "attention_mask": mask}


def scorer_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B,)`` float32 logits of a single-logit classifier (with whatever grad mode is active), pooled on the
    attention mask's last token (:func:`~hfcoop.modeling.classifier_forward`: a final EOS counts)."""
    logits = classifier_forward(model, inputs)
    if logits.dim() != 2 or logits.shape[-1] != 1:
        raise ValueError(f"A scorer must return (batch, 1) logits, got shape {tuple(logits.shape)}.")
    return logits.squeeze(-1).float()


class SequenceScorer:
    """A :data:`ScoreFn` from a scorer model: no grad, eval mode, generator ids in, ``(B,)`` logits out."""

    def __init__(self, model: nn.Module, inputs: ScorerInputs) -> None:
        self.model = model
        self.inputs = inputs

    @torch.no_grad()
    def __call__(self, *rows: torch.Tensor) -> torch.Tensor:
        """``rows = (prompt_ids, prompt_mask, completion_ids, completion_mask)``, as :data:`ScoreFn` takes them."""
        was_training = self.model.training
        self.model.eval()
        try:
            return scorer_logits(self.model, self.inputs(*rows))
        finally:
            self.model.train(was_training)


class ScorerCompanionMixin:
    """Mixin for :class:`~hfcoop.trainers.base.CooperativeTrainer` subclasses whose companion is a scorer.

    Builds and checks the companion (:func:`load_scorer`), keeps its tokenizer and input builder, and saves that
    tokenizer beside the companion's weights so an exported companion is self-contained.
    """

    scorer_role = "scorer"

    def build_companion(self, companion: Any, generator: PreTrainedModel, tokenizer: Any, args: Any) -> nn.Module:
        source = self.companion_checkpoint(companion, generator, args)  # type: ignore[attr-defined]
        model, scorer_tokenizer = load_scorer(
            source,
            generator,
            tokenizer,
            name=self.scorer_role,
            tokenizer=args.scorer_tokenizer or (tokenizer if companion is None else None),
            max_completion_length=args.max_completion_length,
            trust_remote_code=args.trust_remote_code,
            seed=args.seed,
            init_kwargs=args.resolved_companion_init_kwargs,
        )
        self.scorer_tokenizer = scorer_tokenizer
        self.scorer_inputs = ScorerInputs(
            tokenizer, scorer_tokenizer, max_positions(model), self.eos_token_ids  # type: ignore[attr-defined]
        )
        return model

    def build_shared_companion(self, generator: nn.Module, tokenizer: Any, peft_config: Any, args: Any) -> nn.Module:
        from .shared_base import add_companion_adapter

        if args.scorer_tokenizer is not None:
            raise ValueError("shared_base=True scores with the generator's own base model and tokenizer: unset "
                             "scorer_tokenizer.")  # fmt: skip
        self.scorer_tokenizer = tokenizer
        self.scorer_inputs = ScorerInputs(tokenizer, tokenizer, max_positions(generator))
        return add_companion_adapter(generator, peft_config, self.companion_name, scorer=True)

    def companion_inputs(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> PairInput:
        """Pair-forward arguments that return the scorer's ``(B, 1)`` logits."""
        return PairInput(inputs=self.scorer_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask))

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super()._save(output_dir, state_dict)  # type: ignore[misc]
        output_dir = output_dir or self.args.output_dir  # type: ignore[attr-defined]
        if self.args.should_save and (self._checkpointing or self.args.save_companion):  # type: ignore[attr-defined]
            import os

            folder = os.path.join(output_dir, self.companion_name)  # type: ignore[attr-defined]
            self.scorer_tokenizer.save_pretrained(folder)
