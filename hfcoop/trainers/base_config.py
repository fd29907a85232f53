"""``CooperativeConfig``: the training arguments every hfcoop algorithm shares (``TrainingArguments`` plus these).

Apart from the trainers (as TRL keeps ``sft_config.py`` apart from ``sft_trainer.py``): a config module imports
``TrainingArguments`` and no ``Trainer``, data or model code, so ``hfcoop train <algorithm> --help`` and the
argument parsing before training stay as cheap as ``trl sft --help``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments

from ..guards import known_secrets, redact_value

UPDATE_ORDER_PAPERS = "papers"
UPDATE_ORDER_SIMULTANEOUS = "simultaneous"
UPDATE_ORDERS = (UPDATE_ORDER_PAPERS, UPDATE_ORDER_SIMULTANEOUS)


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
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the training samples (> 0). Anything but 1 (and top_k/top_p) "
                  "samples from a distorted G, which biases the algorithms' estimators (they assume samples of G)."},
    )
    top_k: int = field(default=0, metadata={"help": "Top-k filtering of the training samples (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus filtering of the training samples, in (0, 1] (1: off)."})
    divergence_loss: float = field(
        default=1e4,
        metadata={"help": "Stop with an error (exit non-zero, nothing exported) when a step's loss is NaN/inf or "
                  "exceeds this; a NaN/inf gradient norm stops it too. Losses are per token: a uniform guess over "
                  "a million tokens costs 14 nats, so 1e4 only catches a run that already diverged (inf: off)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace an earlier run in output_dir (its model, checkpoints, companion and reports are "
                  "removed first), or write beside the files of a non-empty folder that is no hfcoop run (never over "
                  "them). Without it such an output_dir is refused unless you resume an earlier run."},
    )
    companion_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps at the start in which only the companion learns (generator frozen). The companion "
            "starts uninformative (CoT mediator = G, ratio r = 1, D = 1/2), so early generator steps get no signal "
            "(CoT) or only noise (ψ-MLE, GCN). Measured: benchmarks/README.md."
        },
    )
    update_order: str = field(
        default=UPDATE_ORDER_PAPERS,
        metadata={
            "help": "'papers' (default): each step trains one model and the generator reads the UPDATED companion "
            "(the papers' Alg. 1). 'simultaneous': one step trains both on one sampling, the generator reading the "
            "companion before that step's update (one process; measured: benchmarks/README)."
        },
    )
    save_companion: bool = field(
        default=False,
        metadata={"help": "Also export the companion (mediator/ratio model/discriminator) in a subfolder."},
    )
    hub_include_reports: bool = field(
        default=False,
        metadata={"help": "A push also uploads the run's reports: completions/, quality.json, training_curves.png, "
                  "runs/ (TensorBoard). Off: the model alone (weights, configs, tokenizer, card, training args)."},
    )
    companion_peft: bool = field(
        default=False, metadata={"help": "Also put the `peft_config` adapters on an LM companion (not only G)."}
    )
    shared_base: bool = field(
        default=False,
        metadata={
            "help": "Generator and companion as two LoRA adapters (plus a scorer's head) on ONE frozen base model: "
            "needs `peft_config`; CoT, ψ-MLE, GCN; about a third of the two-model pair's memory (benchmarks/README)."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub (only for models you trust)."}
    )
    chat_template_path: str | None = field(
        default=None,
        metadata={"help": "As TRL's: a .jinja/.j2 file replaces the tokenizer's chat template; a tokenizer (folder or "
                  "Hub id) lends its template, tokens and EOS (trl.clone_chat_template; embeddings resized)."},
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "The generator's `from_pretrained` kwargs (by name), as in TRL: dtype, "
                  "attn_implementation, revision (tokenizer too), trust_remote_code, device_map, quantization_config "
                  "(BitsAndBytesConfig "
                  "fields, e.g. {load_in_4bit: true}: QLoRA, needs `peft_config`). YAML mapping or JSON string."},
    )  # fmt: skip
    companion_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "The same for a companion loaded by name, or re-loaded from the generator's checkpoint "
                  "(a quantized generator cannot be copied). None: the generator's model_init_kwargs; {}: none. "
                  "A quantized companion trains through adapters only: set companion_peft."},
    )  # fmt: skip
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: hfcoop's collator needs its tokenised columns."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    log_completions_steps: int = field(
        default=0,
        metadata={"help": "Every this-many optimizer steps, log a table of the step's sampled completions with the "
                  "companion's score of each (CoT: KL(G||M) per token, psi-MLE: r, GCN: D; MLE and GENERE sample a few "
                  "just for the table) to TensorBoard / the `report_to` trackers and <output_dir>/completions/ (0: off)."},
    )
    num_completions_to_log: int = field(default=8, metadata={"help": "Rows per completions table."})
    eval_generation_samples: int = field(
        default=64,
        metadata={"help": "At each evaluation, sample this many completions (one per eval prompt, or from BOS) and "
                  "log BLEU / Self-BLEU / ROUGE / distinct-n (all in [0, 1]) as eval_generation/* (0: off)."},
    )

    # Facts of the algorithm that its help, model card and registry entry read (the base trainer's algorithm: MLE).
    algorithm_title: ClassVar[str] = "Maximum likelihood (MLE)"
    has_learned_companion: ClassVar[bool] = True  # False: no companion model (MLE, GENERE's mixture weights)

    @property
    def companion_learning_rate(self) -> float | None:
        """Learning rate of the companion's parameter group (None: same as the generator's)."""
        return None

    def needs_unused_parameters(self) -> bool:
        """Whether some parameters can miss a backward pass (DDP must then search for unused parameters): with a
        companion, each step trains one of the two models and leaves the other's parameters unused."""
        return self.has_learned_companion

    def __getstate__(self) -> dict[str, Any]:
        # Trainer pickles its arguments into checkpoints and Hub uploads (training_args.bin): never a secret.
        state = self.__dict__.copy()
        state["hub_token"] = None
        secrets = known_secrets(self)
        for name in ("model_init_kwargs", "companion_init_kwargs"):
            state[name] = redact_value(state.get(name), secrets)
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> "CooperativeConfig":
        # A copy in memory keeps its secrets (it may load a model with them); only what is written drops them.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs", "companion_init_kwargs"]

    @property
    def resolved_model_init_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` kwargs of the generator (:func:`~hfcoop.modeling.resolve_init_kwargs`)."""
        return self._resolve_init_kwargs(self.model_init_kwargs, "model_init_kwargs")

    @property
    def resolved_companion_init_kwargs(self) -> dict[str, Any]:
        """``companion_init_kwargs`` resolved, or the generator's when unset."""
        if self.companion_init_kwargs is None:
            return self.resolved_model_init_kwargs
        return self._resolve_init_kwargs(self.companion_init_kwargs, "companion_init_kwargs")

    def to_dict(self) -> dict[str, Any]:
        """As ``TrainingArguments.to_dict``, with init kwargs given as objects (a ``BitsAndBytesConfig``, a
        ``torch.dtype``) written as JSON values, so ``hfcoop_training_args.json`` and trackers can store them."""
        kwargs_fields = ("model_init_kwargs", "companion_init_kwargs")
        saved = {k: getattr(self, k) for k in kwargs_fields}
        try:  # the parent serialises in place; hand it copies
            for k, v in saved.items():
                setattr(self, k, dict(v) if isinstance(v, dict) else v)
            d = super().to_dict()
        finally:
            for k, v in saved.items():
                setattr(self, k, v)
        for k in kwargs_fields:
            if isinstance(d.get(k), dict):
                d[k] = {key: (value.to_dict() if hasattr(value, "to_dict") else
                              str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value)
                        for key, value in d[k].items()}  # fmt: skip
        # The JSON of the args file, TensorBoard's hparams and every tracker's config: no secret, at any depth.
        return redact_value(d, known_secrets(self))

    def _resolve_init_kwargs(self, kwargs: dict[str, Any] | str | None, name: str) -> dict[str, Any]:
        from ..modeling import resolve_init_kwargs  # model code: loaded when a model is, not with the config

        kwargs = resolve_init_kwargs(kwargs, trust_remote_code=self.trust_remote_code, name=name)
        state = getattr(self, "distributed_state", None)  # set while TrainingArguments picks the device
        if state is not None and state.distributed_type in ("MULTI_GPU", "DEEPSPEED", "FSDP"):
            # As TRL: each process holds the whole model (or its shard) and Trainer places it; a device_map would
            # spread it over the node's GPUs (a quantized model then lands on the process's own GPU).
            kwargs["device_map"] = None
        return kwargs

    def __post_init__(self) -> None:
        if self.max_steps < -1:  # -1 is TrainingArguments' "not set: use num_train_epochs"
            raise ValueError(f"max_steps must be > 0 (or -1 to train num_train_epochs epochs), got {self.max_steps}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 turns nucleus filtering off), got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 turns top-k filtering off), got {self.top_k}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not self.divergence_loss > 0:
            raise ValueError(f"divergence_loss must be > 0 (inf turns the loss check off), got {self.divergence_loss}.")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}.")
        if self.companion_warmup_steps < 0:
            raise ValueError(f"companion_warmup_steps must be >= 0, got {self.companion_warmup_steps}.")
        if self.log_completions_steps < 0 or self.num_completions_to_log < 1 or self.eval_generation_samples < 0:
            raise ValueError("log_completions_steps and eval_generation_samples must be >= 0, num_completions_to_log "
                             ">= 1.")  # fmt: skip
        if self.companion_warmup_steps and not self.has_learned_companion:
            raise ValueError(f"companion_warmup_steps needs a learned companion model; {type(self).__name__} has none.")
        if self.update_order not in UPDATE_ORDERS:
            raise ValueError(f"update_order must be one of {UPDATE_ORDERS}, got {self.update_order!r}.")
        if self.update_order == UPDATE_ORDER_SIMULTANEOUS and not self.has_learned_companion:
            raise ValueError(f"update_order='simultaneous' trains a companion model in the generator's step; "
                             f"{type(self).__name__} has none (use update_order='papers').")
        if self.shared_base and not self.has_learned_companion:
            raise ValueError(f"shared_base puts a companion model on the generator's base; {type(self).__name__} has none.")
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = self.needs_unused_parameters()
        elif not self.ddp_find_unused_parameters and self.needs_unused_parameters():
            raise ValueError(
                f"ddp_find_unused_parameters=False cannot train {type(self).__name__.removesuffix('Config')}: each step "
                "trains one model (the companion, then the generator, as in the papers), so DDP sees the other "
                "model's parameters unused. Leave ddp_find_unused_parameters unset (hfcoop turns it on)."
            )
        if self.use_liger_kernel:
            # Trainer patches self.model only when it is one PreTrainedModel; hfcoop's is the pair, so Trainer would
            # skip it with a log line. Patching both models is not done: refused rather than accepted and ignored.
            raise ValueError(
                "use_liger_kernel is not supported by hfcoop: Liger's kernels patch a single PreTrainedModel, and an "
                "hfcoop trainer holds a generator and a companion (transformers' Trainer would skip them and train "
                "unpatched). Remove use_liger_kernel; for memory, use gradient_checkpointing, peft_config (LoRA) or "
                "shared_base."
            )
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            # Nothing to pin for, and torch warns on every dataloader; TrainingArguments turns it off for use_cpu only.
            self.dataloader_pin_memory = False
        super().__post_init__()
