"""The shared mechanism: a generator plus one companion model, trained together by ``transformers.Trainer``.

The papers' order (CoT Alg. 1, ψ-MLE Alg. 1, GCN: "train D, then update p"): each optimizer step updates ONE model.
A cycle is ``companion_steps()`` companion steps — sample from the generator (no grad, eval mode, KV cache), the
companion's loss on real + generated rows — then one generator step — fresh samples, the *updated* companion's
signal from a forward without dropout or grad, the generator's loss. One backward per step, under every engine
(DDP, DeepSpeed ZeRO-2/3, FSDP2); the optimizer holds per-model parameter groups and steps only the model of the
step (:meth:`CooperativeTrainer.create_optimizer`). Subclasses implement :meth:`CooperativeTrainer.companion_update`
and :meth:`CooperativeTrainer.generator_update` (MLE and GENERE, which have no companion model, override
:meth:`CooperativeTrainer.cooperative_step`). ``update_order="simultaneous"`` (an option, one process) makes the
cycle's last step a joint one instead (:meth:`CooperativeTrainer.is_joint_step`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import glob
import hashlib
import os
import warnings
from collections import defaultdict
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback

from ..data import (
    PromptCompletionCollator,
    apply_chat_template_path,
    check_chat_template,
    first_row,
    tokenize_dataset,
    validate_dataset,
)
from ..guards import (
    check_finite_gradients,
    check_finite_loss,
    check_finite_weights,
    check_output_dir,
    check_resume_matches,
    check_writable,
    CheckpointError,
    complete_checkpoints,
    known_secrets,
    mark_checkpoint_complete,
    NonFiniteTrainingError,
    prune_checkpoints,
    quarantine_checkpoint,
    redact_value,
    resolve_resume,
    run_fingerprint,
    save_failure,
    unmark_checkpoint,
)
from ..losses import masked_token_mean, token_logprobs
from ..model_card import write_model_card
from ..preemption import StopOnSignal, TrainingInterrupted
from ..run_lock import acquire_run_lock, release_run_lock
from ..modeling import (
    CooperativePair,
    PairInput,
    eos_token_ids,
    is_quantized,
    load_causal_lm,
    load_module_weights,
    load_tokenizer,
    max_positions,
    prepare_quantized,
    save_module,
    sequence_inputs,
)
from ..shared_base import GENERATOR_ADAPTER, check_shared_base_peft_config
from ..sampling import build_generation_config, export_generation_config, generation_mode, sample_completions
from ..watching import CompletionsLogger, write_completions
from ..validation import InputError, length_budget_problem
from .base_config import UPDATE_ORDER_SIMULTANEOUS, CooperativeConfig


ROLE_KEY = "hfcoop_role"  # optimizer param-group key: "generator" or "companion"


class CooperativeTrainer(Trainer):
    """Base trainer: loads and checks everything, owns sampling, logging, saving and resuming.

    Subclasses set the class attributes and implement :meth:`build_companion` and :meth:`cooperative_step`.
    """

    config_class: type[CooperativeConfig] = CooperativeConfig
    algorithm: str = "mle"
    companion_name: str = "companion"
    paper: str = ""
    citation: str = ""
    # Our losses are means over the micro-batch's sequences; Trainer divides them by the accumulation steps.
    loss_is_scaled_for_ga = False
    samples_from_generator: bool = False  # True: each step samples from G (CoT, psi-MLE, GCN), so sampling settings apply

    @classmethod
    def resolve_config(cls, args: CooperativeConfig | None) -> CooperativeConfig:
        """``args``, or the algorithm's default config when None; a config of another algorithm is refused."""
        if args is None:
            return cls.config_class(output_dir=f"hfcoop-{cls.algorithm}")
        if not isinstance(args, cls.config_class):
            raise TypeError(f"{cls.__name__} needs a {cls.config_class.__name__}, got {type(args).__name__}.")
        return args

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
        compute_metrics: Any = None,
        preprocess_logits_for_metrics: Any = None,
    ) -> None:
        args = self.resolve_config(args)
        # Cheap checks first: nothing is loaded or computed before the data and the Hub token are known good.
        if args.push_to_hub:
            check_hub_token(args.hub_token)
        check_writable(args.output_dir)  # an unwritable folder fails now, not when the last step saves
        if args.update_order == UPDATE_ORDER_SIMULTANEOUS and args.world_size > 1:
            # A joint step runs two grad-enabled forwards of the wrapped pair before its one backward: DDP's reducer
            # searches unused parameters from the last forward only, and DeepSpeed / FSDP paths are untested.
            raise ValueError(f"update_order='simultaneous' runs in one process only; this run has {args.world_size}. "
                             "Use update_order='papers' (the default) for distributed training.")
        self.check_sampling_settings(args)
        train_format = validate_dataset(train_dataset, "train_dataset")
        eval_format = validate_dataset(eval_dataset, "eval_dataset")
        self.data_format = train_format or eval_format
        chat_rows = [first_row(d) for d, f in ((train_dataset, train_format), (eval_dataset, eval_format))
                     if f == "conversational"]  # fmt: skip
        generator, tokenizer = self._load_generator(model, processing_class, peft_config, args, chat_rows)
        pair = self._build_pair(companion, generator, tokenizer, peft_config, args)

        def prepare(dataset: Any, fmt: Any) -> Any:
            if dataset is None:
                return None
            return tokenize_dataset(dataset, tokenizer, fmt, args.max_prompt_length, args.max_completion_length,
                                    args.dataset_num_proc, self.eos_token_ids)  # fmt: skip

        super().__init__(
            model=pair,
            args=args,
            data_collator=PromptCompletionCollator(tokenizer.pad_token_id),
            train_dataset=prepare(train_dataset, train_format),
            eval_dataset=prepare(eval_dataset, eval_format),
            processing_class=tokenizer,
            callbacks=callbacks,
            optimizers=optimizers,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.raw_eval_dataset = eval_dataset  # untokenised: the generation metrics need its texts
        self._completion_rows: list[dict[str, Any]] = []
        self._joint_samples: dict[tuple[int, int, int], tuple[torch.Tensor, ...]] | None = None  # a joint step's draws
        self.add_callback(CompletionsLogger(self))
        self.generation_config = build_generation_config(
            tokenizer, args.max_completion_length, args.temperature, args.top_k, args.top_p, self.eos_token_ids
        )
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._checkpointing = False  # True while save_model writes a resumable checkpoint

    def _load_generator(
        self, model: Any, processing_class: Any, peft_config: Any, args: CooperativeConfig, chat_rows: list[dict]
    ) -> tuple[PreTrainedModel, Any]:
        """(generator, tokenizer), checked: chat template (``chat_rows``: the first row of each conversational data
        set), quantization only with adapters, lengths; sets ``base_model_id`` and ``eos_token_ids``."""
        model_id = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
        self.base_model_id = model_id
        init_kwargs = args.resolved_model_init_kwargs
        tokenizer = load_tokenizer(processing_class, model_id, revision=init_kwargs.get("revision"),
                                   trust_remote_code=init_kwargs["trust_remote_code"])  # fmt: skip
        clone_template = apply_chat_template_path(tokenizer, args.chat_template_path)
        if chat_rows and not clone_template:  # a cloned template is checked once the model is loaded (below)
            check_chat_template(tokenizer, chat_rows)
        if not isinstance(model, str) and args.model_init_kwargs:
            warnings.warn("model_init_kwargs are ignored: the model is already loaded (they apply to a name or path).")
        elif peft_config is None and "quantization_config" in init_kwargs:
            raise ValueError(
                "model_init_kwargs has a quantization_config but no peft_config was given: quantized weights cannot "
                "be trained. Pass a LoraConfig (`use_peft: true` on the command line) for QLoRA."
            )
        generator = load_causal_lm(model, name="model", init_kwargs=init_kwargs)
        if peft_config is None and is_quantized(generator):
            raise ValueError("The model is quantized: its weights cannot be trained. Pass a peft_config (QLoRA).")
        if clone_template:  # as TRL's SFTTrainer: the template, its added tokens and EOS; embeddings resized
            from trl import clone_chat_template

            generator, tokenizer, _ = clone_chat_template(generator, tokenizer, args.chat_template_path)
            if chat_rows:
                check_chat_template(tokenizer, chat_rows)
        # Several EOS ids (an instruct model's end-of-turn and EOS): sampling stops on any, masks treat them alike.
        self.eos_token_ids = eos_token_ids(tokenizer, generator)
        check_lengths(generator, args, self.data_format)
        return generator, tokenizer

    def _build_pair(
        self, companion: Any, generator: PreTrainedModel, tokenizer: Any, peft_config: Any, args: CooperativeConfig
    ) -> CooperativePair:
        """The generator and its companion (built, adapted with PEFT where asked, checked) in one module."""
        if args.shared_base:
            generator, companion_module = self._shared_base_pair(companion, generator, tokenizer, peft_config, args)
        else:
            companion_module = self.build_companion(companion, generator, tokenizer, args)
        if peft_config is not None and not args.shared_base:
            from peft import get_peft_model

            generator = get_peft_model(prepare_quantized(generator), peft_config)
            if args.companion_peft and isinstance(companion_module, PreTrainedModel):
                companion_config = copy.deepcopy(peft_config)
                if not hasattr(companion_module, "generate"):  # a scorer: peft then also trains its new head
                    companion_config.task_type = "SEQ_CLS"
                companion_module = get_peft_model(prepare_quantized(companion_module), companion_config)
        if companion_module is not None and is_quantized(companion_module) and not args.companion_peft:
            raise ValueError(
                f"The {self.companion_name} is quantized (companion_init_kwargs / the generator's model_init_kwargs "
                "hold a quantization_config) but has no adapters to train: set `companion_peft: true` (with a "
                "peft_config), or load it "
                "unquantized with `companion_init_kwargs: {}`."
            )
        self.check_pair(generator, companion_module, tokenizer)
        return CooperativePair(generator, companion_module)

    # ----------------------------------------------------------------- hooks for the algorithms
    def build_companion(self, companion: Any, generator: PreTrainedModel, tokenizer: Any, args: Any) -> nn.Module | None:
        """The companion module (None for MLE). Called before PEFT wraps the generator."""
        return None

    def companion_checkpoint(self, companion: Any, generator: PreTrainedModel, args: CooperativeConfig) -> Any:
        """What to load the companion from: ``companion`` as given, or — when it is None but the generator is
        quantized (its weights cannot be copied into a trainable model) or ``companion_init_kwargs`` is set — the
        generator's own checkpoint, loaded with ``companion_init_kwargs``. None: start as a copy of the generator."""
        if companion is not None or not (is_quantized(generator) or args.companion_init_kwargs is not None):
            return companion
        if not self.base_model_id:
            raise ValueError(
                f"The {self.companion_name} must be re-loaded from the generator's checkpoint (quantized generator or "
                f"companion_init_kwargs set), but the generator has no name or path: pass the {self.companion_name}."
            )
        return self.base_model_id

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

    def check_sampling_settings(self, args: CooperativeConfig) -> None:
        """Algorithms whose objective assumes samples of G itself warn about distorted sampling settings
        (:func:`warn_distorted_sampling`)."""

    def cooperative_step(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One training step's loss (record statistics with :meth:`log_metric`): the papers' order, a generator
        update against the companion as the previous steps left it, or a companion update; with
        ``update_order="simultaneous"`` a joint step (:meth:`is_joint_step`) returns the sum of both, computed
        before the step's one backward (so the generator reads the companion before this step's update), both
        from ONE sampling of G (:meth:`sample` memoises its draws for the step)."""
        if self.is_joint_step():
            self._joint_samples = {}
            try:
                return self.generator_update(model, inputs) + self.companion_update(model, inputs)
            finally:
                self._joint_samples = None
        if self.is_generator_step():
            return self.generator_update(model, inputs)
        return self.companion_update(model, inputs)

    def companion_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """A companion step's loss: fresh samples of the generator against the step's real rows."""
        raise NotImplementedError

    def generator_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """A generator step's loss, from fresh samples and the updated companion's :meth:`companion_signal`."""
        raise NotImplementedError

    def companion_steps(self) -> int:
        """Companion updates before each generator update (CoT's N_m; ψ-MLE and GCN: 1)."""
        return 1

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
        """Completions sampled from the current generator for left-padded prompts (ids, mask), right-padded.

        In a joint step (:meth:`cooperative_step`) a second call for the same prompt tensors and count returns the
        first call's draws: both updates share one sampling (GCN's 'resample' draws K candidates for the generator
        and 1 per prompt for D: different calls, not shared; 'mcts' does not sample here)."""
        memo = self._joint_samples
        key = (id(prompt_ids), id(prompt_mask), num_return_sequences)
        if memo is not None and key in memo:
            return memo[key][2:]
        generator = self.pair.generator
        device_type = prompt_ids.device.type
        devices = [prompt_ids.device.index or 0] if device_type == "cuda" else []
        # Samples draw from their own RNG stream, a function of (seed, rank, step, call): every process samples
        # different sequences even when all start from BOS, and a resumed run draws exactly the same ones.
        with torch.random.fork_rng(devices=devices, device_type=device_type):
            torch.manual_seed(self._sampling_seed())
            with generation_mode(generator, self.accelerator, self.model_wrapped) as g:
                ids, mask = sample_completions(g, prompt_ids, prompt_mask, self.generation_config, num_return_sequences)
        self.log_metric("samples/completion_length", mask.sum(1).float().mean())
        eos = torch.tensor(self.eos_token_ids, device=ids.device)
        self.log_metric("samples/eos_rate", torch.isin(ids, eos).any(1).float().mean())
        if memo is not None:  # the prompts are kept with their draws: no other tensor can reuse their ids
            memo[key] = (prompt_ids, prompt_mask, ids, mask)
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
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        packed: bool = False,
    ) -> PairInput:
        """Pair-forward arguments that return completion logits of a causal LM, ``(B, C, V)``, or with ``packed``
        only the masked-in tokens' logits, ``(N, V)`` (padding skips the LM head)."""
        part = PairInput(
            inputs=sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask),
            completion_length=completion_ids.shape[1],
        )
        if packed:
            part["completion_mask"] = completion_mask
        return part

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = self.cooperative_step(model, inputs)
        if not self.samples_from_generator and self.completions_step() and not self._completion_rows:
            # MLE / GENERE draw no samples to train on; a logging step draws a few just to show them (no score).
            n = self.args.num_completions_to_log
            prompt_ids = inputs["prompt_input_ids"][:n]
            ids, mask = self.sample(prompt_ids, inputs["prompt_attention_mask"][:n])
            self.record_completions(prompt_ids, ids, mask)
        return loss  # each trainer normalises its token-sum terms (losses.scale_to_token_budget)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Evaluation loss = the generator's per-token NLL of the eval completions (teacher forced).

        For ``compute_metrics`` (as in ``Trainer``) also returns the completion logits and labels, already aligned:
        ``predictions[i, t]`` are the logits that predict ``label_ids[i, t]``; prompt and padding positions are
        absent or -100.
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            ids, mask = inputs["completion_input_ids"], inputs["completion_mask"]
            logits, _ = model(
                generator=self.lm_inputs(inputs["prompt_input_ids"], inputs["prompt_attention_mask"], ids, mask)
            )
            nll = -masked_token_mean(token_logprobs(logits, ids), mask)
        if prediction_loss_only:
            return nll.detach(), None, None
        return nll.detach(), logits.detach(), ids.masked_fill(mask == 0, -100)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        # Generation metrics need the untokenised texts, which only the trainer's own eval dataset keeps.
        self._generation_eval = eval_dataset is None and isinstance(self.raw_eval_dataset, Dataset)
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._generation_eval = False

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:  # fmt: skip
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if getattr(self, "_generation_eval", False) and self.args.eval_generation_samples:
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.generation_metrics().items()})
        return output

    def generation_metrics(self) -> dict[str, float]:
        """BLEU / Self-BLEU / ROUGE / distinct-n of fresh samples on the eval data (``hfcoop.evaluation``).

        Every process computes the same numbers (same seed, no collective ops), so they need no reduction. With
        sharded parameters (ZeRO-3, FSDP) sampling outside the step would need every rank's shards: skipped.
        """
        from ..evaluation import generation_quality

        if self.is_fsdp_enabled or (self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3):
            return {}
        device = self.args.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type):  # training's RNG streams untouched
            metrics = generation_quality(
                self.pair.generator, self.processing_class, self.raw_eval_dataset,
                num_samples=self.args.eval_generation_samples, max_new_tokens=self.args.max_completion_length,
                max_prompt_length=self.args.max_prompt_length, batch_size=self.args.per_device_eval_batch_size,
                seed=self.args.seed, with_nll=False, temperature=self.args.temperature, top_k=self.args.top_k,
                top_p=self.args.top_p,  # as the export samples (its generation_config.json)
            )  # fmt: skip
        return {f"generation/{k}": v for k, v in metrics.items()}

    # ----------------------------------------------------------------- completions tables
    def completions_step(self) -> bool:
        """Whether the training step being computed is one whose completions get logged."""
        n = self.args.log_completions_steps
        return bool(n) and self.model.training and (self.state.global_step + 1) % n == 0

    def record_completions(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
        **scores: torch.Tensor,
    ) -> None:  # fmt: skip
        """Keeps decoded (prompt, completion, score...) rows of a logging step; ``scores`` hold one value per row."""
        room = self.args.num_completions_to_log - len(self._completion_rows)
        if not self.completions_step() or room <= 0:
            return
        tokenizer = self.processing_class
        n = min(room, completion_ids.shape[0])
        prompts = tokenizer.batch_decode(prompt_ids[:n], skip_special_tokens=True)
        ids = completion_ids[:n].masked_fill(completion_mask[:n] == 0, tokenizer.pad_token_id)
        completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
        values = {name: v[:n].detach().float().cpu().tolist() for name, v in scores.items()}
        for i in range(n):
            row = {"step": self.state.global_step + 1, "prompt": prompts[i], "completion": completions[i]}
            self._completion_rows.append(row | {name: v[i] for name, v in values.items()})

    def flush_completions(self) -> None:
        """Gathers the recorded rows from every process; the main one writes the table (called at each step end)."""
        n = self.args.log_completions_steps
        if not n or self.state.global_step % n:
            return
        rows, self._completion_rows = self._completion_rows, []
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        if rows and self.is_world_process_zero():
            rows = redact_value(rows[: self.args.num_completions_to_log], known_secrets(self.args))
            write_completions(self, rows, self.state.global_step)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """Trainer's ``train``, holding ``output_dir``'s lock, after the folder and the checkpoint are checked.

        ``resume_from_checkpoint=True`` picks the newest *complete* checkpoint (one whose save finished), and the
        checkpoint must be of this run's algorithm, model shapes and tokenizer; an earlier run in ``output_dir`` is
        refused unless ``overwrite_output_dir`` or resuming, a non-empty folder that is no hfcoop run unless
        ``overwrite_output_dir``, and a second live run there. SIGTERM / SIGINT stop at the next step boundary with a
        checkpoint (:mod:`hfcoop.preemption`).
        """
        locked = self.args.should_save  # the main process writes the folder: it holds the lock
        if locked:
            acquire_run_lock(self.args.output_dir)
        try:
            checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
            fingerprint = self.run_fingerprint()  # taken before Trainer wraps the models (names, sharded shapes)
            if checkpoint is not None:
                check_resume_matches(checkpoint, fingerprint)
            check_output_dir(self.args.output_dir, overwrite=self.args.overwrite_output_dir,
                             resuming=checkpoint is not None, clear=self.args.should_save)  # fmt: skip
            self.args.overwrite_output_dir = False  # cleared once: the checkpoints this run writes are its own
            return self._train_until_done_or_stopped(checkpoint, **kwargs)
        finally:
            if locked:
                release_run_lock(self.args.output_dir)

    def _train_until_done_or_stopped(self, checkpoint: str | None, **kwargs: Any) -> Any:
        stop = StopOnSignal(self)
        self.add_callback(stop)
        try:
            with stop.installed():
                result = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        finally:
            self.remove_callback(stop)
        if stop.signum is not None:
            import signal

            saved = complete_checkpoints(self.args.output_dir)
            where = f"checkpoint saved: {saved[-1]}" if saved else "no complete checkpoint"
            raise TrainingInterrupted(
                f"stopped by {signal.Signals(stop.signum).name} after step {self.state.global_step} ({where}). "
                "Resume: the same command with --resume_from_checkpoint true (API: "
                "trainer.train(resume_from_checkpoint=True)).", stop.signum)  # fmt: skip
        return result

    def run_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records of its run and a resume must match (:func:`hfcoop.guards.run_fingerprint`)."""
        if getattr(self, "_run_fingerprint", None) is None:  # shapes and tokenizer do not change while training
            pair = self.pair
            models = {"generator": pair.generator, "companion": pair.companion}
            self._run_fingerprint = run_fingerprint(self.algorithm, models, self.processing_class)
        return self._run_fingerprint

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._stop_if_diverged(check_finite_loss, loss, self.state.global_step, self.args.divergence_loss)
        return loss

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        # Trainer's global (all-reduced) gradient norm, checked before the optimizer applies it. Under fp16 the
        # loss scaler skips steps with inf gradients by design, so only unscaled training stops here.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if getattr(self.accelerator, "scaler", None) is None and grad_norm is not None:
            self._stop_if_diverged(check_finite_gradients, model.parameters(), self.state.global_step, grad_norm)
        return grad_norm

    def _stop_if_diverged(self, check: Any, *args: Any) -> None:
        try:
            check(*args)
        except NonFiniteTrainingError as err:
            # The weights that gave this loss are those of the current step: its checkpoint is no longer "good".
            good = quarantine_checkpoint(self.args.output_dir, self.state.global_step) if self.args.should_save else None
            where = f" Last good checkpoint: {good}." if good else " No good checkpoint was saved."
            raise NonFiniteTrainingError(f"{err}{where} Nothing was exported.") from None

    def generator_learns(self) -> bool:
        """False during ``companion_warmup_steps``: the step then trains the companion alone."""
        return self.state.global_step >= self.args.companion_warmup_steps

    def is_generator_step(self) -> bool:
        """Whether this optimizer step updates the generator (else the companion). After the companion warm-up each
        cycle is ``companion_steps()`` companion updates, then one generator update: the papers' order, in which
        the generator always reads the companion *after* its update (CoT Alg. 1 with N_m mediator steps, ψ-MLE
        Alg. 1, GCN's "train D, then update p"). Without a companion every step is a generator step."""
        if self.pair.companion is None:
            return True
        if not self.generator_learns():
            return False
        # The papers' cycle: N companion steps, then the generator's; the simultaneous one: N - 1, then a joint step.
        n = self.companion_steps()
        cycle = n if self.args.update_order == UPDATE_ORDER_SIMULTANEOUS else n + 1
        return (self.state.global_step - self.args.companion_warmup_steps) % cycle == cycle - 1

    def is_joint_step(self) -> bool:
        """Whether this optimizer step trains both models (``update_order="simultaneous"`` only): after the
        companion warm-up each cycle is ``companion_steps() - 1`` companion steps, then one joint step whose
        generator reads the companion as it was before the step (its update lands with the generator's)."""
        simultaneous = self.args.update_order == UPDATE_ORDER_SIMULTANEOUS
        return simultaneous and self.pair.companion is not None and self.is_generator_step()

    def companion_signal(self, model: nn.Module, part: PairInput) -> torch.Tensor:
        """The companion's output that the generator's loss reads (mediator logits, log r, D's logit): a forward of
        the companion as it stands (updated by the previous step) in eval mode (no dropout: a fixed target and
        fixed weights, not a random draw) and without grad. It runs through the wrapped model, so DDP, DeepSpeed
        (ZeRO-3 gathers) and FSDP2 (units unshard) handle it as any forward. In shared-base mode eval mode reaches
        the shared base model too (:meth:`~hfcoop.shared_base.AdapterCompanion.train`)."""
        companion = self.pair.companion
        was_training = companion.training
        companion.eval()
        try:
            with torch.no_grad():
                _, logits = model(companion=part)
        finally:
            companion.train(was_training)
        return logits

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clips the generator's and the companion's gradients to ``max_grad_norm`` *each*; returns the joint norm.

        One clip of the joint norm would let the companion's gradient (its loss is a per-sequence objective scaled
        to the completion budget, and often far larger) shrink the generator's step. DeepSpeed clips inside its
        engine and FSDP/mixed meshes need Trainer's sharded norm: those keep the joint clip.
        """
        from accelerate.utils import DistributedType

        pair = self.pair
        joint = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if pair.companion is None or joint or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()  # fp16: once, before both clips
        norms = []
        for name, params in pair.role_parameters().items():  # shared base: each adapter with its own model
            grads = [p for p in params if p.grad is not None]
            if not grads:  # the model this step does not train
                continue
            norm = torch.nn.utils.clip_grad_norm_(grads, self.args.max_grad_norm)
            self.log_metric(f"{name}/grad_norm", norm)
            norms.append(norm.float())
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with the companion's parameters in groups of their own learning rate, each group
        tagged with its model (``ROLE_KEY``); a step updates only the groups of the model it trains
        (:meth:`_step_only_the_trained_model`)."""
        optimizer = super().create_optimizer(model)
        companion = self.pair.companion
        if companion is None:
            return optimizer
        companion_lr = self.args.companion_learning_rate
        if companion_lr is None:  # not `or`: 0.0 is a real setting (a frozen companion)
            companion_lr = self.args.learning_rate
        companion_ids = {id(p) for p in self.pair.role_parameters()["companion"]}
        groups = []
        for group in optimizer.param_groups:
            for is_companion in (False, True):
                params = [p for p in group["params"] if (id(p) in companion_ids) == is_companion]
                if params:
                    role = {ROLE_KEY: "companion" if is_companion else "generator"}
                    groups.append({**group, "params": params, **role, **({"lr": companion_lr} if is_companion else {})})
        optimizer.param_groups = groups
        if not getattr(optimizer, "_hfcoop_role_hook", False):
            optimizer.register_step_pre_hook(self._step_only_the_trained_model)
            optimizer._hfcoop_role_hook = True
        return optimizer

    def _step_only_the_trained_model(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Before each optimizer step: the other model's gradients become None, so the optimizer skips its
        parameters (no momentum drift, no weight decay, its Adam state untouched). Alone or under DDP they are
        None already; DeepSpeed's ZeRO optimizers hand the inner optimizer zero-filled flat partitions instead,
        whose step would move the idle model by its momentum. The hook sits on the inner torch optimizer, whose
        groups (and tags) DeepSpeed keeps."""
        if self.is_joint_step():  # both models learn: every gradient stays
            return
        trained = "generator" if self.is_generator_step() else "companion"
        for group in optimizer.param_groups:
            if group.get(ROLE_KEY, trained) != trained:
                for p in group["params"]:
                    p.grad = None

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
        check_finite_weights(pair.generator, "generator")
        if self.args.shared_base:  # the generator's adapter alone (the companion's is saved below, with the companion)
            pair.generator.save_pretrained(output_dir, state_dict=split["generator"], selected_adapters=[GENERATOR_ADAPTER])
        else:
            save_module(pair.generator, output_dir, split["generator"])
        if pair.companion is not None and (self._checkpointing or self.args.save_companion):
            save_module(pair.companion, os.path.join(output_dir, self.companion_name), split["companion"])
        saved = self.processing_class.save_pretrained(output_dir)
        self._tokenizer_files = {os.path.basename(str(p)) for p in saved or ()}  # what a push uploads of the tokenizer
        # After the model's own: generate() and pipeline() on this folder sample as training did.
        export_generation_config(pair.generator, self.generation_config).save_pretrained(output_dir)
        with open(os.path.join(output_dir, "hfcoop_training_args.json"), "w") as f:
            f.write(self.args.to_json_string())
        if self._checkpointing:
            self.save_extra_state(output_dir)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, made safe against a kill at any point: a folder written again loses its completion
        marker first; the marker is written last (an interrupted save is never resumed); older checkpoints are
        pruned only after it, marker first. A failed write (disk full) is one error naming the newest good one."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save:
            unmark_checkpoint(folder)
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # pruned below, after the marker
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as err:
            reason = save_failure(err)
            if reason is None:
                raise
            raise self._save_failed(run_dir, folder, reason) from err
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save and os.path.isdir(folder):
            mark_checkpoint_complete(folder, self.state.global_step, self.run_fingerprint(),
                                     resumable=not self.args.save_only_model)  # fmt: skip
            prune_checkpoints(run_dir, limit, [self.state.best_model_checkpoint])

    def _save_failed(self, run_dir: str, folder: str, reason: str) -> CheckpointError:
        """The error for a checkpoint that could not be written; its partial folder is removed (space, clarity)."""
        import shutil

        if self.args.should_save:
            shutil.rmtree(folder, ignore_errors=True)
        good = complete_checkpoints(run_dir)
        newest = f"the newest complete checkpoint is {good[-1]}" if good else "no complete checkpoint was saved"
        return CheckpointError(
            f"saving {os.path.basename(folder)} failed: {reason}; {newest} (intact). Free space (or lower "
            "save_total_limit) and resume with resume_from_checkpoint=True (CLI: --resume_from_checkpoint true)."
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:  # FSDP checkpoints (pytorch_model_fsdp*) hold the whole pair; Trainer loads them
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        else:
            pair = self.accelerator.unwrap_model(model if model is not None else self.model)
            load_module_weights(pair.generator, resume_from_checkpoint)
            if pair.companion is not None:
                load_module_weights(pair.companion, os.path.join(resume_from_checkpoint, self.companion_name))
        self.load_extra_state(resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        # DeepSpeed restores the pair's weights itself (never calling _load_from_checkpoint): the algorithm's own
        # state (GENERE's mixture) is restored here, after the engine exists, like the optimizer's.
        if checkpoint is not None and self.is_deepspeed_enabled:
            self.load_extra_state(checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any) -> Any:
        """Uploads the exported generator, its tokenizer and model card (never the companion unless asked)."""
        # save_model() already pushes when args.push_to_hub is set; the same export pushed again (the usual
        # save_model(); push_to_hub() sequence) would upload everything twice.
        key = (self.state.global_step, repr(sorted((k, v) for k, v in kwargs.items() if k != "revision")))
        if getattr(self, "_pushed", None) == key:
            return getattr(self, "_push_result", None)
        self._exporting = True
        try:
            with self.uploading_export_only():
                self._push_result = super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
            self._pushed = key
            return self._push_result
        finally:
            self._exporting = False

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with self.uploading_export_only():  # hub_strategy="every_save" uploads output_dir at each checkpoint too
            super()._push_from_checkpoint(checkpoint_folder)

    def files_to_push(self, folder: str) -> list[str]:
        """The files of ``folder`` (output_dir) that a push uploads: the exported generator (weights, configs), its
        tokenizer, the card and the training arguments; the companion's subfolder with ``save_companion``; the run's
        reports with ``hub_include_reports``. Never scratch, logs or anything else the folder holds."""
        root = (*EXPORT_FILE_PATTERNS, *sorted(getattr(self, "_tokenizer_files", ())))
        folders = {self.companion_name} if self.args.save_companion else set()
        if self.args.hub_include_reports:
            root += REPORT_FILES
            folders |= set(REPORT_FILES)
        files = []
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and any(fnmatch.fnmatch(name, p) for p in root):
                files.append(name)
            elif os.path.isdir(path) and name in folders:
                files += sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(path) for f in fs)
        return files

    @contextlib.contextmanager
    def uploading_export_only(self) -> Iterator[None]:
        """Trainer's pushes upload all of output_dir (minus ``_*`` and checkpoints) through ``transformers.trainer.
        hf_api()``; meanwhile that API restricts an upload of output_dir itself to :meth:`files_to_push` (checkpoint
        folders pushed by ``hub_strategy`` keep every file: resuming from the Hub needs them)."""
        import transformers.trainer as trainer_module

        make_api = trainer_module.hf_api
        trainer_module.hf_api = lambda: _ExportOnlyApi(make_api(), self.args.output_dir, self.files_to_push)
        try:
            yield
        finally:
            trainer_module.hf_api = make_api

    def create_model_card(self, output_dir: str | None = None, **kwargs: Any) -> None:
        if not self.is_world_process_zero():
            return
        write_model_card(self, output_dir or self.args.output_dir, **kwargs)


# What a push uploads from output_dir (see CooperativeTrainer.files_to_push), and the reports it adds when asked.
# The training arguments go as JSON: no pickle (Trainer's training_args.bin, which its checkpoint pushes write into
# output_dir) is uploaded, as no pickle is exported.
EXPORT_FILE_PATTERNS = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                        "model.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors",
                        "README.md", "hfcoop_training_args.json")  # fmt: skip
REPORT_FILES = ("completions", "quality.json", "training_curves.png", "runs")


class _ExportOnlyApi:
    """An ``HfApi`` whose upload of ``output_dir`` itself sends only ``files_to_push(output_dir)``."""

    def __init__(self, api: Any, output_dir: str, files_to_push: Callable[[str], list[str]]) -> None:
        self._api, self._output_dir, self._files_to_push = api, os.path.abspath(output_dir), files_to_push

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def upload_folder(self, *, folder_path: str, path_in_repo: str | None = None, **kwargs: Any) -> Any:
        if not path_in_repo and os.path.abspath(folder_path) == self._output_dir:
            kwargs["allow_patterns"] = [glob.escape(f) for f in self._files_to_push(folder_path)]
        return self._api.upload_folder(folder_path=folder_path, path_in_repo=path_in_repo, **kwargs)


def warn_distorted_sampling(args: CooperativeConfig, algorithm: str, consequence: str) -> None:
    """Warns when the training samples come from a distorted G' (temperature != 1, top-k, top-p) although the
    algorithm's estimators assume samples of G itself; ``consequence`` says what that biases."""
    if args.temperature != 1.0 or args.top_k or args.top_p < 1.0:
        warnings.warn(
            f"{algorithm} with temperature={args.temperature}, top_k={args.top_k}, top_p={args.top_p}: {consequence} "
            "Use plain sampling (1.0, 0, 1.0) unless you mean it.",
            stacklevel=5,
        )


def check_hub_token(token: str | None) -> None:
    """``push_to_hub`` without a token would fail only after training: refuse before any compute."""
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise ValueError(
            "push_to_hub=True but no Hugging Face token was found. Run `hf auth login`, set the HF_TOKEN "
            "environment variable, or pass `hub_token` (it is never logged)."
        )


def check_lengths(generator: PreTrainedModel, args: CooperativeConfig, data_format: str | None) -> None:
    """Prompt + completion budgets must fit the model's positions (else an index error deep in the forward); an
    unset prompt budget becomes what is left beside the completion."""
    limit = max_positions(generator)
    if not limit:
        return
    prompt = 1 if data_format == "text" else args.max_prompt_length  # unconditional rows: BOS alone
    problem = length_budget_problem(limit, prompt, args.max_completion_length)
    if problem:
        raise InputError(problem)
    if args.max_prompt_length is None:
        args.max_prompt_length = limit - args.max_completion_length
