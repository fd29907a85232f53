"""GENERE — Generative Regularization with black-box data generators (Bouchard et al., EMNLP 2016), Algorithm 2.

    for t = 1, 2, ...
        if 1/(1+λ) > U[0,1]:  (x, y) ~ P̂                               (a real row)
        else:                 Δ ~ N(0, σ²I);  (x, y) ~ G_{γ+Δ}           (a generated row)
                              γ <- γ + η_γ (log pθ(y|x) - µ) Δ/σ²        (sign: see below)
        θ <- θ + ηθ ∇θ log pθ(y|x)                                        (MLE on the mixture)
        µ <- α µ + (1-α) log pθ(y|x)

The black box G_z (Sec. 3.1) is a mixture of K user-supplied base generators: a generated row comes from
generator ``k ~ Categorical(softmax(γ + Δ))``, each generator being any callable ``rng -> row``.

**The sign of the γ update.** Algorithm 2 prints ``γ <- γ - η_γ (log pθ - µ) Δ`` (and Algorithm 1 even
*subtracts* ``∇θ log pθ`` from θ), but the stated intent (Sec. 3.2: "the algorithm correctly identifies the correct
data distribution"; Sec. 3.5: generators whose samples the model trained on real data finds unlikely "are not very
relevant") is that γ moves toward generators whose samples the current model finds *more* likely. The derivation
agrees: GENERE minimises ``L(θ, γ) = -(1+λ) E_{P̃γ}[log pθ(y|x)] + ...`` (Eq. 3) over γ, and with the seed
``z = γ + Δ ~ N(γ, σ²I)`` of Eq. (4),

    ∇γ E_{Δ, (x,y)~G_{γ+Δ}}[log pθ(y|x)] = E[log pθ(y|x) ∇γ log N(z; γ, σ²I)] = E[(log pθ(y|x) - µ) Δ/σ²]

(the baseline µ does not depend on Δ, and E[Δ] = 0, so subtracting it changes only the variance). Descending
``L`` in γ is therefore ``γ <- γ + η_γ (log pθ(y|x) - µ) Δ/σ²``: a row that scores above the baseline pulls γ toward
the perturbation Δ that produced it, i.e. toward its generator (E[Δ_k | generator k was drawn] > 0). With the
paper's σ = 1 this is its line 8 with the minus sign flipped. (The entropy term of Eq. 3 is not part of
Algorithm 2 and is left out, as there.)

**Implementation choices** (all faithful to Algorithm 2 in expectation):

- *Mixing*: each row of a micro-batch is independently real with probability 1/(1+λ) (Algorithm 2, line 3) or
  replaced by a generated row; every generated row draws its own Δ and its own generator. Generated rows are
  tokenised with :func:`hfcoop.data.tokenize_row` and collated with the real ones exactly like dataset rows.
  λ = ∞ gives generated data only (the left end of Fig. 1); λ = 0 never calls a generator and is exactly MLE.
- *θ*: ``mle_loss`` on the mixed micro-batch (the very computation of :class:`~hfcoop.MLETrainer`).
- *γ*: once per optimizer step, by the mean over the step's generated rows (all micro-batches of a gradient
  accumulation window, all processes) of ``(log pθ(y|x) - µ) Δ/σ²``; ``log pθ(y|x)`` is the detached sum over the
  completion tokens, computed by the forward pass that also trains θ (so θ and γ see the same parameters, as in
  lines 8 and 10). A mean keeps η_γ's meaning independent of batch size and λ.
- *Reward length* (``likelihood_normalization``): the paper rewards a row by its summed log-likelihood, which
  grows more negative with every token, so among black boxes whose outputs differ in length from the data the
  mixture drifts to the generator with the *shortest* outputs, not to the matching one (and the model then learns
  it, which reinforces the drift). The default rewards the per-token log-likelihood ``log pθ(y|x) / |y|`` (EOS
  counted), rescaled by the mean ``|y|`` over *all* rows of the optimizer step (every micro-batch and process,
  :func:`~hfcoop.losses.genere_length_scale`): one constant per step, so γ's update is the same whatever the
  micro-batch size, gradient accumulation or process count (a per-micro-batch mean made it depend on them: at
  micro-batch 1 it was the paper's summed reward). It ranks generators by how well their tokens fit, whatever their
  lengths, on the summed reward's scale (a plain per-token mean is ~|y| times smaller, and with the paper's η_γ and
  shrinkage it moved π ~10x too slowly: π_match 0.29 vs 0.97 on the text-to-equation task,
  ``benchmarks/results/genere_fig1_probe_*.md``); ``"sum"`` keeps the paper's. The paper's η_γ = 0.1 and
  shrinkage 0.99 are the defaults.
- *Fixed point*: without shrinkage γ stops moving when ``E[(r(y) - µ) Δ] = 0``, i.e. when no generator's rows
  score above the mixture's mean reward. With the paper's summed reward ``r = log pθ(y|x)`` the mixture settles on
  the generators of highest *total* log-likelihood (the shortest outputs, other things equal); with the default
  ``r = L̄ · log pθ(y|x) / |y|`` (``L̄`` the step's mean length, the same for every row of the step) on those of
  highest *per-token* log-likelihood, whose tokens the model trained on the data finds most likely. Shrinkage
  0.99 pulls γ toward 0 at every step, so π stops short of a vertex in both.
- *µ*: once per optimizer step, ``µ <- α µ + (1-α) mean log pθ(y|x)`` over the step's rows, real and generated
  (line 11; µ tracks the log-likelihood under the mixture P̃γ). The γ update of a step uses µ from before the
  step; the first active step initialises µ to its own mean instead of an arbitrary constant.
- *π*: the learned proportions ``π_k = E_Δ[softmax_k(γ + Δ)]`` (Sec. 3.1) are estimated by Monte Carlo with
  ``proportion_samples`` fixed draws (common random numbers, seed 0): deterministic in γ, standard error <= 0.008
  for the default 4096 draws. Exposed as :attr:`GenereTrainer.mixture_proportions`, logged every optimizer step as
  ``companion/pi_<k>``, and written as ``genere_mixture.json`` next to every exported generator and checkpoint.
- *State*: γ and µ (float64) are plain tensors on the trainer, not optimizer parameters; checkpoints hold them in
  ``genere_state/mixture.safetensors`` and the mixing RNG (a ``random.Random`` seeded from ``args.seed``, which also
  feeds the generators) in ``genere_state/rng_process_<i>.json``, so a resumed run continues bit-identically. No pickle.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import check_row, detect_format, tokenize_row, validate_dataset
from ..losses import (
    genere_baseline_update,
    genere_gamma_scores,
    genere_gamma_update,
    genere_length_scale,
    genere_mixture_proportions,
    genere_sampling_probs,
    masked_token_mean,
    mle_loss,
    packed_token_logprobs,
    scale_to_token_budget,
)
from .base import CooperativeTrainer
from .genere_config import GenereConfig

GENERE_CITATION = """@inproceedings{bouchard2016genere,
  title     = {Learning to Generate Textual Data},
  author    = {Bouchard, Guillaume and Stenetorp, Pontus and Riedel, Sebastian},
  booktitle = {Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing},
  pages     = {1608--1616},
  year      = {2016}
}"""

# Checkpoint state lives in a subfolder: the base trainer loads every *.safetensors at a checkpoint's top level
# into the generator.
STATE_DIR = "genere_state"
STATE_FILE = "mixture.safetensors"
MIXTURE_FILE = "genere_mixture.json"


def generator_name(generator: Callable) -> str:
    return getattr(generator, "__name__", None) or type(generator).__name__


_REQUIRED_KEYS = {"text": ("text",), "prompt_completion": ("prompt", "completion")}


class GenereTrainer(CooperativeTrainer):
    """GENERE (black-box variant): MLE on real rows mixed with rows of a learned mixture of data generators
    (signature: ``__init__``).

    ``generators`` is a list of K black-box callables ``generator(rng: random.Random) -> row``, where ``row`` is a
    dict in the dataset's format (``{"text": str}``, ``{"prompt": str, "completion": str}``, or for conversational
    data ``{"messages": [...]}`` / ``{"prompt": [...], "completion": [...]}`` message lists; extra keys are
    ignored). A generator must draw all its randomness from ``rng`` for runs and resumes to be reproducible. Each
    generator is called once at construction to validate it, before any model is loaded.
    """

    config_class = GenereConfig
    algorithm = "genere"
    companion_name = "mixture"
    paper = "Learning to Generate Textual Data (Bouchard, Stenetorp and Riedel, EMNLP 2016), Algorithm 2"
    citation = GENERE_CITATION

    def __init__(self, model, generators, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 peft_config=None, callbacks=None, optimizers=(None, None), compute_metrics=None,
                 preprocess_logits_for_metrics=None) -> None:  # fmt: skip
        args = self.resolve_config(args)  # before the generators are checked against the data
        # Cheap checks before anything is loaded: the data format, then every generator against it.
        fmt = validate_dataset(train_dataset, "train_dataset") or validate_dataset(eval_dataset, "eval_dataset")
        self.generators, self.generator_format = self._check_generators(generators, fmt, args.seed)
        self.generator_names = [generator_name(g) for g in self.generators]
        k = len(self.generators)
        if args.initial_mixture_logits is None:
            self._gamma = torch.zeros(k, dtype=torch.float64)
        elif len(args.initial_mixture_logits) != k:
            n = len(args.initial_mixture_logits)
            raise ValueError(f"initial_mixture_logits has {n} values for {k} generators.")
        else:
            self._gamma = torch.tensor(args.initial_mixture_logits, dtype=torch.float64)
        self._baseline = torch.zeros((), dtype=torch.float64)
        self._baseline_initialized = False
        # One stream for the mixing coin flips, Δ, the generator choice and the generators themselves.
        self._rng = random.Random(self._rng_seed(args.seed, args.process_index))
        self._reset_step_stats()
        super().__init__(model, None, args, train_dataset, eval_dataset, processing_class, peft_config, callbacks,
                         optimizers, compute_metrics, preprocess_logits_for_metrics)  # fmt: skip

    # ----------------------------------------------------------------- generators
    @staticmethod
    def _rng_seed(seed: int, process_index: int) -> str:
        return f"hfcoop-genere-{seed}-{process_index}"  # str seeds are hashed deterministically (sha512)

    @staticmethod
    def _check_row(index: int, generator: Callable, row: Any, fmt: str | None) -> str:
        """The row's format; a ValueError naming the generator if the row is malformed."""
        who = f"generators[{index}] ({generator_name(generator)})"
        if not isinstance(row, Mapping):
            raise ValueError(
                f"{who} returned a {type(row).__name__}, but a generator must return one row as a dict: "
                "{'prompt': str, 'completion': str} or {'text': str}."
            )
        if fmt is None:
            try:
                fmt = detect_format(list(row.keys()), f"The row of {who}", dict(row))
            except ValueError as err:
                raise ValueError(str(err)) from None
        if fmt == "conversational":  # message lists, rendered by the chat template like the dataset's rows
            if "messages" not in row and not {"prompt", "completion"} <= set(row):
                raise ValueError(f"{who} returned keys {sorted(map(str, row))}: conversational data needs 'messages' "
                                 "or 'prompt'/'completion' message lists.")  # fmt: skip
            check_row(dict(row), fmt, f"The row of {who}")
            return fmt
        required = _REQUIRED_KEYS[fmt]
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(
                f"{who} returned a row with keys {sorted(map(str, row.keys()))}, missing {missing}: the data is in "
                f"'{fmt}' format, so every generated row needs {list(required)} (strings)."
            )
        for key in required:
            if not isinstance(row[key], str):
                raise ValueError(f"{who} returned a non-string '{key}' ({type(row[key]).__name__}): {row[key]!r:.80}")
        return fmt

    @classmethod
    def _check_generators(cls, generators: Any, fmt: str | None, seed: int) -> tuple[list[Callable], str]:
        """Calls every generator once (with a throwaway RNG) so that a broken one fails before any training."""
        if callable(generators) or isinstance(generators, (str, bytes, Mapping)):
            raise TypeError("`generators` must be a list of callables `rng -> row`; wrap a single one in a list.")
        generators = list(generators)
        if not generators:
            raise ValueError("GENERE needs at least one generator.")
        for index, generator in enumerate(generators):
            if not callable(generator):
                raise TypeError(f"generators[{index}] is a {type(generator).__name__}, not a callable `rng -> row`.")
            row = cls._call(index, generator, random.Random(seed))
            fmt = cls._check_row(index, generator, row, fmt)
        return generators, fmt

    @staticmethod
    def _call(index: int, generator: Callable, rng: random.Random) -> Any:
        try:
            return generator(rng)
        except Exception as err:
            raise RuntimeError(
                f"generators[{index}] ({generator_name(generator)}) raised {type(err).__name__}: {err}"
            ) from err

    def _generate_row(self, index: int) -> dict[str, list[int]]:
        generator = self.generators[index]
        row = self._call(index, generator, self._rng)
        self._check_row(index, generator, row, self.generator_format)
        args = self.args
        return tokenize_row(row, self.processing_class, self.generator_format, args.max_prompt_length,
                            args.max_completion_length, self.eos_token_ids)  # fmt: skip

    # ----------------------------------------------------------------- public state
    @property
    def mixture_logits(self) -> list[float]:
        """γ, the learned mixture logits (one per generator)."""
        return self._gamma.tolist()

    @property
    def baseline(self) -> float | None:
        """µ, the running mean log-likelihood (None before the first generated row)."""
        return float(self._baseline) if self._baseline_initialized else None

    @property
    def mixture_proportions(self) -> list[float]:
        """π_k = E_{Δ~N(0,σ²I)}[softmax_k(γ + Δ)] (Sec. 3.1), Monte Carlo with ``proportion_samples`` fixed draws."""
        pi = genere_mixture_proportions(self._gamma, self.args.perturbation_std, self.args.proportion_samples)
        return pi.tolist()

    # ----------------------------------------------------------------- Algorithm 2
    def _reset_step_stats(self) -> None:
        self._step_logprobs: list[torch.Tensor] = []  # every row's reward before the length scale, this step
        self._step_lengths: list[torch.Tensor] = []  # every row's |y| (EOS counted)
        self._step_generated: list[tuple[torch.Tensor, torch.Tensor]] = []  # (log pθ, Δ) of generated rows

    def _mixing_active(self) -> bool:
        return self.args.generative_weight > 0 and self.state.global_step >= self.args.mle_warmup_steps

    def _mix(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[int], torch.Tensor]:
        """Algorithm 2, lines 3-7 for every row: keep it (real) or replace it by a row from G_{γ+Δ}."""
        rng, k = self._rng, len(self.generators)
        p_real = 1.0 / (1.0 + self.args.generative_weight)
        sigma = self.args.perturbation_std
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        comp_ids, comp_mask = inputs["completion_input_ids"], inputs["completion_mask"]
        rows: list[dict[str, list[int]] | None] = []
        generated, deltas = [], []
        for i in range(prompt_ids.shape[0]):
            if rng.random() < p_real:
                rows.append(None)
                continue
            delta = torch.tensor([rng.gauss(0.0, sigma) for _ in range(k)], dtype=torch.float64)
            probs = genere_sampling_probs(self._gamma, delta).tolist()
            u, choice, cumulative = rng.random(), k - 1, 0.0
            for j, p in enumerate(probs):
                cumulative += p
                if u < cumulative:
                    choice = j
                    break
            rows.append(self._generate_row(choice))
            generated.append(i)
            deltas.append(delta)
        self.log_metric("samples/generated_fraction", len(generated) / max(len(rows), 1))
        if not generated:
            return inputs, [], torch.zeros(0, k, dtype=torch.float64)
        for i, row in enumerate(rows):  # real rows, un-padded: the collator pads them back identically
            if row is None:
                rows[i] = {
                    "prompt_input_ids": prompt_ids[i][prompt_mask[i].bool()].tolist(),
                    "completion_input_ids": comp_ids[i][comp_mask[i].bool()].tolist(),
                }
        batch = self.data_collator(rows)
        return {name: t.to(prompt_ids.device) for name, t in batch.items()}, generated, torch.stack(deltas)

    def cooperative_step(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        active = self._mixing_active()
        if active:
            inputs, generated, deltas = self._mix(inputs)
        ids, mask = inputs["completion_input_ids"], inputs["completion_mask"]
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        logits, _ = model(generator=self.lm_inputs(prompt_ids, prompt_mask, ids, mask, packed=True))
        logprobs = packed_token_logprobs(logits, ids, mask)  # 0 at padding; the LM head ran on real tokens only
        self.log_metric("generator/nll_per_token", -masked_token_mean(logprobs, mask))
        loss = mle_loss(logprobs, mask)  # line 10: MLE on the mixture (exactly MLETrainer's loss)
        if active:
            row_logprobs = (logprobs.detach() * mask).sum(-1).to("cpu", torch.float64)
            lengths = mask.sum(-1).clamp(min=1).to("cpu", torch.float64)
            if self.args.likelihood_normalization == "per_token":  # a generator's output length must not decide
                row_logprobs = row_logprobs / lengths  # rescaled at the step's end (genere_length_scale)
            self._step_logprobs.append(row_logprobs)
            self._step_lengths.append(lengths)
            if generated:
                self._step_generated.append((row_logprobs[generated], deltas))
        if self.accelerator.sync_gradients:  # last micro-batch of this optimizer step
            self._end_of_step(active)
        return scale_to_token_budget(loss, self.args.max_completion_length)

    def _end_of_step(self, active: bool) -> None:
        """Lines 8 and 11, once per optimizer step, over every micro-batch and process of the step: the update
        depends on the step's rows only, not on how they are split into micro-batches and processes."""
        if active and self._step_logprobs:
            k = len(self.generators)
            lengths, rewards = torch.cat(self._step_lengths), torch.cat(self._step_logprobs)
            totals = self._reduce_sum(torch.stack([lengths.sum(), torch.tensor(float(len(lengths))), rewards.sum()]))
            scale = genere_length_scale(self.args.likelihood_normalization, totals[0], totals[1])
            if self._step_generated:
                gen_logprobs = torch.cat([lp for lp, _ in self._step_generated]) * scale
                gen_deltas = torch.cat([d for _, d in self._step_generated])
            else:
                gen_logprobs, gen_deltas = torch.zeros(0, dtype=torch.float64), torch.zeros(0, k, dtype=torch.float64)
            # µ is needed before the scores; the first active step uses its own mean (all processes).
            step_mean = totals[2] * scale / totals[1]
            if not self._baseline_initialized:
                self._baseline, self._baseline_initialized = step_mean.clone(), True
            scores = genere_gamma_scores(gen_logprobs, self._baseline, gen_deltas, self.args.perturbation_std)
            stats = self._reduce_sum(
                torch.cat([scores.sum(0), torch.stack([torch.tensor(float(len(gen_logprobs))), gen_logprobs.sum()])])
            )
            score_sum, count, gen_sum = stats[:k], float(stats[k]), stats[k + 1]
            self._gamma = genere_gamma_update(self._gamma, score_sum, count, self.args.mixture_learning_rate,
                                              self.args.mixture_shrinkage)  # fmt: skip
            self._baseline = genere_baseline_update(self._baseline, step_mean, self.args.baseline_smoothing)
            self.log_metric("companion/logprob_baseline", float(self._baseline))
            self.log_metric("companion/logprob", float(step_mean))
            if count:  # identical on every process after the reduction, so metric names stay in sync
                self.log_metric("companion/logprob_generated", float(gen_sum) / count)
        self._reset_step_stats()
        for k, pi in enumerate(self.mixture_proportions):
            self.log_metric(f"companion/pi_{k}", pi)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        reduced = self.accelerator.reduce(tensor.to(self.args.device), reduction="sum")
        return reduced.to("cpu", torch.float64)

    # ----------------------------------------------------------------- saving and resuming
    def mixture_summary(self) -> dict[str, Any]:
        """What ``genere_mixture.json`` holds: generators, learned π, γ, µ and the settings that define them."""
        return {
            "generators": self.generator_names,
            "mixture_proportions": self.mixture_proportions,
            "mixture_logits": self.mixture_logits,
            "baseline": self.baseline,
            "generative_weight": self.args.generative_weight,
            "perturbation_std": self.args.perturbation_std,
            "proportion_estimator": f"Monte Carlo mean of softmax(gamma + delta) over {self.args.proportion_samples} "
            "fixed draws of delta ~ N(0, sigma^2 I) (torch.Generator seed 0)",
            "global_step": self.state.global_step,
        }

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            with open(os.path.join(output_dir or self.args.output_dir, MIXTURE_FILE), "w") as f:
                json.dump(self.mixture_summary(), f, indent=2)

    @staticmethod
    def _rng_file(checkpoint_dir: str, process_index: int) -> str:
        return os.path.join(checkpoint_dir, STATE_DIR, f"rng_process_{process_index}.json")

    def _write_rng(self, output_dir: str) -> None:
        version, internal, gauss_next = self._rng.getstate()
        path = self._rng_file(output_dir, self.args.process_index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"version": version, "internal": list(internal), "gauss_next": gauss_next}, f)

    def save_extra_state(self, output_dir: str) -> None:
        tensors = {
            "mixture_logits": self._gamma.clone(),
            "baseline": self._baseline.reshape(1).clone(),
            "baseline_initialized": torch.tensor([int(self._baseline_initialized)], dtype=torch.int64),
        }
        os.makedirs(os.path.join(output_dir, STATE_DIR), exist_ok=True)
        path = os.path.join(output_dir, STATE_DIR, STATE_FILE)
        save_file(tensors, path, metadata={"generators": json.dumps(self.generator_names)})
        self._write_rng(output_dir)  # the main process's stream; other processes write theirs in _save_rng_state

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.args.process_index > 0:
            os.makedirs(output_dir, exist_ok=True)
            self._write_rng(output_dir)

    def load_extra_state(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, STATE_DIR, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint_dir} has no {STATE_DIR}/{STATE_FILE}: it is not a GENERE checkpoint.")
        state = load_file(path)
        gamma = state["mixture_logits"].to(torch.float64)
        if gamma.numel() != len(self.generators):
            raise ValueError(
                f"The checkpoint's mixture has {gamma.numel()} generators but this trainer was given "
                f"{len(self.generators)}: resume with the same generators, in the same order."
            )
        self._gamma = gamma
        self._baseline = state["baseline"].to(torch.float64).reshape(())
        self._baseline_initialized = bool(state["baseline_initialized"].item())
        rng_path = self._rng_file(checkpoint_dir, self.args.process_index)
        if os.path.isfile(rng_path):
            with open(rng_path) as f:
                saved = json.load(f)
            self._rng.setstate((saved["version"], tuple(saved["internal"]), saved["gauss_next"]))
        else:  # e.g. resuming on more processes than were saved: a fresh, still deterministic stream
            self._rng = random.Random(
                f"{self._rng_seed(self.args.seed, self.args.process_index)}-{os.path.basename(checkpoint_dir)}"
            )
        self._reset_step_stats()

    def card_hyperparameters(self) -> dict[str, Any]:
        pi = self.mixture_proportions
        learned = ", ".join(f"{n}: {p:.3f}" for n, p in zip(self.generator_names, pi))
        return {**super().card_hyperparameters(), "generators (learned proportions π)": learned}


__all__ = ["GenereConfig", "GenereTrainer", "GENERE_CITATION"]
