"""The shared mechanism: a generator plus one companion model, trained together by ``transformers.Trainer``.

Each step: sample from the generator (no grad, eval mode, KV cache) -> one forward of the
:class:`~hfcoop.modeling.CooperativePair` (companion on real + generated, generator on its training
sequences) -> ``loss = generator_loss(detached companion signal) + companion_loss`` -> one backward, one
optimizer step with per-model parameter groups. Subclasses implement :meth:`CooperativeTrainer.cooperative_step`.
"""

from __future__ import annotations

import copy
import hashlib
import dataclasses
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from ..data import PromptCompletionCollator, tokenize_dataset, validate_dataset
from ..losses import token_logprobs
from ..model_card import write_model_card
from ..modeling import (
    CooperativePair,
    load_causal_lm,
    load_module_weights,
    load_tokenizer,
    save_module,
    sequence_inputs,
)
from ..shared_base import GENERATOR_ADAPTER, AdapterCompanion, check_shared_base_peft_config
from ..sampling import build_generation_config, generation_mode, sample_completions


@dataclass
class CooperativeConfig(TrainingArguments):
    """Training arguments shared by every hfcoop algorithm (all of ``TrainingArguments`` plus these)."""

    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompts keep their last this-many tokens (conditional data). None: as many as fit the "
                  "model's positions next to max_completion_length."},
    )
    max_completion_length: int = field(
        default=32,
        metadata={
            "help": "Most tokens sampled per completion; real completions are truncated to the same budget so "
            "real and generated sequences are comparable."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the training samples."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering of the training samples (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus filtering of the training samples (1.0: off)."})
    companion_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps at the start in which only the companion learns (generator frozen). The companion "
            "starts uninformative (CoT mediator = G, ratio r = 1, D = 1/2), so early generator steps get no signal "
            "(CoT) or only noise (ψ-MLE, GCN). No gain measured at the oracle benchmark's quick budget (benchmarks/README)."
        },
    )
    save_companion: bool = field(
        default=False,
        metadata={"help": "Also export the companion (mediator/ratio model/discriminator) in a subfolder."},
    )
    companion_peft: bool = field(
        default=False, metadata={"help": "Also put the `peft_config` adapters on an LM companion (not only G)."}
    )
    shared_base: bool = field(
        default=False,
        metadata={
            "help": "Generator and companion as two LoRA adapters (plus a scorer's one-logit head) on ONE frozen base "
            "model instead of two models: needs `peft_config`; the companion starts at the base model. CoT, ψ-MLE, "
            "GCN. Peak memory at 124M: 1.2-1.4x LoRA-SFT's, a third of the two-model pair's (benchmarks/README)."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub (only for models you trust)."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: hfcoop's collator needs its tokenised columns."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})

    has_learned_companion: ClassVar[bool] = True  # False: no companion model (MLE, GENERE's mixture weights)

    @property
    def companion_learning_rate(self) -> float | None:
        """Learning rate of the companion's parameter group (None: same as the generator's)."""
        return None

    def needs_unused_parameters(self) -> bool:
        """Whether some parameters can miss a backward pass (DDP must then search for unused parameters)."""
        return self.companion_warmup_steps > 0  # the generator sits out the warm-up steps

    def __post_init__(self) -> None:
        if self.companion_warmup_steps < 0:
            raise ValueError(f"companion_warmup_steps must be >= 0, got {self.companion_warmup_steps}.")
        if self.companion_warmup_steps and not self.has_learned_companion:
            raise ValueError(f"companion_warmup_steps needs a learned companion model; {type(self).__name__} has none.")
        if self.shared_base and not self.has_learned_companion:
            raise ValueError(f"shared_base puts a companion model on the generator's base; {type(self).__name__} has none.")
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = self.needs_unused_parameters()
        super().__post_init__()


class CooperativeTrainer(Trainer):
    """Base trainer: loads and checks everything, owns sampling, logging, saving and resuming.

    Subclasses set the class attributes and implement :meth:`build_companion` and :meth:`cooperative_step`.
    """

    config_class: type[CooperativeConfig] = CooperativeConfig
    algorithm: str = "mle"
    algorithm_title: str = "Maximum likelihood (MLE)"
    companion_name: str = "companion"
    paper: str = ""
    citation: str = ""
    # Our losses are means over the micro-batch's sequences; Trainer divides them by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel,
        companion: Any = None,
        args: CooperativeConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | None = None,
        processing_class: Any = None,
        peft_config: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
    ) -> None:
        if args is None:
            args = self.config_class(output_dir=f"hfcoop-{self.algorithm}")
        elif not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}.")
        # Cheap checks first: nothing is loaded or computed before the data and the Hub token are known good.
        if args.push_to_hub:
            check_hub_token(args.hub_token)
        train_format = validate_dataset(train_dataset, "train_dataset")
        eval_format = validate_dataset(eval_dataset, "eval_dataset")
        self.data_format = train_format or eval_format
        model_id = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
        self.base_model_id = model_id
        tokenizer = load_tokenizer(processing_class, model_id)
        generator = load_causal_lm(model, name="model", trust_remote_code=args.trust_remote_code)
        check_lengths(generator, args, self.data_format)
        if args.shared_base:
            generator, companion_module = self._shared_base_pair(companion, generator, tokenizer, peft_config, args)
        else:
            companion_module = self.build_companion(companion, generator, tokenizer, args)
        if peft_config is not None and not args.shared_base:
            from peft import get_peft_model

            generator = get_peft_model(generator, peft_config)
            if args.companion_peft and isinstance(companion_module, PreTrainedModel):
                companion_config = copy.deepcopy(peft_config)
                if not hasattr(companion_module, "generate"):  # a scorer: peft then also trains its new head
                    companion_config.task_type = "SEQ_CLS"
                companion_module = get_peft_model(companion_module, companion_config)
        self.check_pair(generator, companion_module, tokenizer)
        pair = CooperativePair(generator, companion_module)

        def prepare(dataset: Any, fmt: Any) -> Any:
            if dataset is None:
                return None
            return tokenize_dataset(
                dataset, tokenizer, fmt, args.max_prompt_length, args.max_completion_length, args.dataset_num_proc
            )

        super().__init__(
            model=pair,
            args=args,
            data_collator=PromptCompletionCollator(tokenizer.pad_token_id),
            train_dataset=prepare(train_dataset, train_format),
            eval_dataset=prepare(eval_dataset, eval_format),
            processing_class=tokenizer,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.generation_config = build_generation_config(
            tokenizer, args.max_completion_length, args.temperature, args.top_k, args.top_p
        )
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._checkpointing = False  # True while save_model writes a resumable checkpoint

    # ----------------------------------------------------------------- hooks for the algorithms
    def build_companion(self, companion: Any, generator: PreTrainedModel, tokenizer: Any, args: Any) -> nn.Module | None:
        """The companion module (None for MLE). Called before PEFT wraps the generator."""
        return None

    def build_shared_companion(self, generator: nn.Module, tokenizer: Any, peft_config: Any, args: Any) -> nn.Module:
        """The companion of ``shared_base`` mode, an adapter (and head) on the generator's ``PeftModel``."""
        raise ValueError(f"{type(self).__name__} has no shared-base mode (CoT, ψ-MLE and GCN have one).")

    def _shared_base_pair(
        self, companion: Any, generator: PreTrainedModel, tokenizer: Any, peft_config: Any, args: Any
    ) -> tuple[nn.Module, nn.Module]:
        from peft import get_peft_model

        check_shared_base_peft_config(peft_config)
        if companion is not None:
            raise ValueError(
                f"shared_base=True builds the {self.companion_name} as a second adapter on the generator's base model; "
                f"do not pass a {self.companion_name} (or set shared_base=False to use your own)."
            )
        with torch.random.fork_rng(devices=[]):  # adapters start from the same weights in every run (resume tests)
            torch.manual_seed(args.seed)
            generator = get_peft_model(generator, peft_config)
            return generator, self.build_shared_companion(generator, tokenizer, peft_config, args)

    def check_pair(self, generator: nn.Module, companion: nn.Module | None, tokenizer: Any) -> None:
        """Compatibility checks between generator and companion, raised at construction."""

    def cooperative_step(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One training step's loss; record statistics with :meth:`log_metric`."""
        raise NotImplementedError

    def save_extra_state(self, output_dir: str) -> None:
        """Algorithm state outside the two models that a checkpoint must hold (e.g. GENERE's mixture logits)."""

    def load_extra_state(self, checkpoint_dir: str) -> None:
        """Inverse of :meth:`save_extra_state`."""

    def card_hyperparameters(self) -> dict[str, Any]:
        """The algorithm's own config fields, for the model card."""
        shared = {f.name for f in dataclasses.fields(CooperativeConfig)}
        return {f.name: getattr(self.args, f.name) for f in dataclasses.fields(self.args) if f.name not in shared}

    # ----------------------------------------------------------------- shared mechanism
    @property
    def pair(self) -> CooperativePair:
        return self.accelerator.unwrap_model(self.model)

    def log_metric(self, name: str, value: torch.Tensor | float) -> None:
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][name].append(torch.as_tensor(value, dtype=torch.float32).detach())

    def sample(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_return_sequences: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Completions sampled from the current generator for left-padded prompts (ids, mask), right-padded."""
        generator = self.pair.generator
        device_type = prompt_ids.device.type
        devices = [prompt_ids.device.index or 0] if device_type == "cuda" else []
        # Samples draw from their own RNG stream, a function of (seed, rank, step, call): every process samples
        # different sequences even when all start from BOS, and a resumed run draws exactly the same ones.
        with torch.random.fork_rng(devices=devices, device_type=device_type):
            torch.manual_seed(self._sampling_seed())
            with generation_mode(generator, self.accelerator, self.model_wrapped) as g:
                ids, mask = sample_completions(g, prompt_ids, prompt_mask, self.generation_config, num_return_sequences)
        self.log_metric(f"{self.algorithm}/completion_length", mask.sum(1).float().mean())
        self.log_metric(f"{self.algorithm}/eos_rate", (ids == self.processing_class.eos_token_id).any(1).float().mean())
        return ids, mask

    def _sampling_seed(self) -> int:
        step = self.state.global_step
        if getattr(self, "_sample_step", None) != step:
            self._sample_step, self._sample_calls = step, 0
        self._sample_calls += 1
        key = f"{self.args.seed}/{self.accelerator.process_index}/{step}/{self._sample_calls}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")

    @staticmethod
    def lm_inputs(
        prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> dict[str, Any]:
        """Pair-forward arguments that return completion logits of a causal LM."""
        return {
            "inputs": sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask),
            "completion_length": completion_ids.shape[1],
        }

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = self.cooperative_step(model, inputs)
        # Per-sequence sums divided by the completion budget: a per-token scale that stays exact under
        # gradient accumulation and DDP (a constant, unlike the batch's token count).
        return loss / self.args.max_completion_length

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation loss = the generator's per-token NLL of the eval completions (teacher forced)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            ids, mask = inputs["completion_input_ids"], inputs["completion_mask"]
            logits, _ = model(
                generator=self.lm_inputs(inputs["prompt_input_ids"], inputs["prompt_attention_mask"], ids, mask)
            )
            nll = -(token_logprobs(logits, ids) * mask).sum() / mask.sum().clamp(min=1)
        return nll.detach(), None, None

    def generator_learns(self) -> bool:
        """False during ``companion_warmup_steps``: the step then trains the companion alone."""
        return self.state.global_step >= self.args.companion_warmup_steps

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with the companion's parameters in groups of their own learning rate."""
        optimizer = super().create_optimizer(model)
        companion = self.pair.companion
        if companion is None:
            return optimizer
        companion_lr = self.args.companion_learning_rate or self.args.learning_rate
        params = companion.all_parameters() if isinstance(companion, AdapterCompanion) else companion.parameters()
        companion_ids = {id(p) for p in params}
        groups = []
        for group in optimizer.param_groups:
            for is_companion in (False, True):
                params = [p for p in group["params"] if (id(p) in companion_ids) == is_companion]
                if params:
                    groups.append({**group, "params": params, **({"lr": companion_lr} if is_companion else {})})
        optimizer.param_groups = groups
        return optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        names = sorted(self._metrics[mode])
        if names:
            means = torch.stack([torch.stack(self._metrics[mode][n]).mean() for n in names]).to(self.args.device)
            means = self.accelerator.reduce(means, reduction="mean")
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{n}": v for n, v in zip(names, means.tolist())})
            self._metrics[mode].clear()
        super().log(logs, start_time)

    # ----------------------------------------------------------------- saving and resuming
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Exports the generator alone (plus the companion with ``save_companion``); checkpoints hold both."""
        self._checkpointing = _internal_call and not getattr(self, "_exporting", False)
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            self._checkpointing = False
        if not _internal_call and self.args.should_save:
            self.create_model_card(output_dir=output_dir)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        pair = self.pair
        split: dict[str, dict[str, torch.Tensor] | None] = {"generator": None, "companion": None}
        if state_dict:  # DeepSpeed/FSDP hand us the gathered state dict of the whole pair
            for part in split:
                split[part] = {k[len(part) + 1 :]: v for k, v in state_dict.items() if k.startswith(part + ".")}
        if self.args.shared_base:  # the generator's adapter alone (the companion's is saved below, with the companion)
            pair.generator.save_pretrained(output_dir, state_dict=split["generator"], selected_adapters=[GENERATOR_ADAPTER])
        else:
            save_module(pair.generator, output_dir, split["generator"])
        if pair.companion is not None and (self._checkpointing or self.args.save_companion):
            save_module(pair.companion, os.path.join(output_dir, self.companion_name), split["companion"])
        self.processing_class.save_pretrained(output_dir)
        self.generation_config.save_pretrained(os.path.join(output_dir, "hfcoop_sampling"))
        with open(os.path.join(output_dir, "hfcoop_training_args.json"), "w") as f:
            f.write(self.args.to_json_string())
        if self._checkpointing:
            self.save_extra_state(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:  # sharded FSDP checkpoints hold the whole pair; Trainer knows how to load them
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        pair = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_module_weights(pair.generator, resume_from_checkpoint)
        if pair.companion is not None:
            load_module_weights(pair.companion, os.path.join(resume_from_checkpoint, self.companion_name))
        self.load_extra_state(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any) -> Any:
        """Uploads the exported generator, its tokenizer and model card (never the companion unless asked)."""
        self._exporting = True
        try:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        finally:
            self._exporting = False

    def create_model_card(self, output_dir: str | None = None, **kwargs: Any) -> None:
        if not self.is_world_process_zero():
            return
        write_model_card(self, output_dir or self.args.output_dir, **kwargs)


def check_hub_token(token: str | None) -> None:
    """``push_to_hub`` without a token would fail only after training: refuse before any compute."""
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise ValueError(
            "push_to_hub=True but no Hugging Face token was found. Run `hf auth login`, set the HF_TOKEN "
            "environment variable, or pass `hub_token` (it is never logged)."
        )


def check_lengths(generator: PreTrainedModel, args: CooperativeConfig, data_format: str | None) -> None:
    """Prompt + completion budgets must fit the model's positions (else an index error deep in the forward)."""
    limit = getattr(generator.config.get_text_config(), "max_position_embeddings", None)
    if not limit:
        return
    if args.max_prompt_length is None:
        args.max_prompt_length = limit - args.max_completion_length
    prompt = 1 if data_format == "text" else args.max_prompt_length
    if prompt + args.max_completion_length > limit or args.max_prompt_length < 1:
        raise ValueError(
            f"max_prompt_length ({args.max_prompt_length}) + max_completion_length ({args.max_completion_length}) "
            f"must fit the model's {limit} positions: set max_prompt_length to at most "
            f"{limit - args.max_completion_length}."
        )
