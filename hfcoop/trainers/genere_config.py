"""The arguments of ``GenereTrainer``; imports no trainer or model code (``base_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base_config import CooperativeConfig

LIKELIHOOD_NORMALIZATIONS = ("per_token", "sum")


@dataclass
class GenereConfig(CooperativeConfig):
    """Configuration of :class:`GenereTrainer` (plus every ``TrainingArguments`` field)."""

    algorithm_title: ClassVar[str] = "Generative Regularization (GENERE, black-box variant)"
    has_learned_companion: ClassVar[bool] = False  # the mixture proportions are updated, not a model

    generative_weight: float = field(
        default=1.0,
        metadata={
            "help": "λ: rows are real with probability 1/(1+λ) and generated with probability λ/(1+λ) "
            "(0: plain MLE; inf: generated rows only)."
        },
    )
    mixture_learning_rate: float = field(
        default=0.1,
        metadata={
            "help": "η_γ: step size of the REINFORCE update of the mixture logits γ, once per optimizer step (the "
            "paper's 0.1; the LM's own rate is learning_rate). Advantages are log-likelihoods in nats (per token by "
            "default, see likelihood_normalization)."
        },
    )
    likelihood_normalization: str = field(
        default="per_token",
        metadata={
            "help": "The reward of a generated row in the γ update (and the baseline µ): 'per_token' = log pθ(y|x) / "
            "|y| times the optimizer step's mean |y| over all its rows (default: the same γ whatever the batch "
            "layout; robust to generators whose outputs are shorter or longer than the data, on the sum's scale) or "
            "'sum' = log pθ(y|x), the paper's, which favours the generator "
            "with the shortest outputs."
        },
    )
    baseline_smoothing: float = field(
        default=0.98,
        metadata={"help": "α: µ <- α µ + (1-α) mean log pθ(y|x), once per optimizer step (the paper uses 0.98)."},
    )
    perturbation_std: float = field(
        default=1.0,
        metadata={"help": "σ: std of the Gaussian perturbation Δ ~ N(0, σ²I) of γ (the paper uses N(0, I))."},
    )
    initial_mixture_logits: list[float] | None = field(
        default=None, metadata={"help": "Initial γ, one float per generator (None: zeros, the uniform mixture)."}
    )
    mixture_shrinkage: float = field(
        default=0.99,
        metadata={
            "help": "γ <- shrinkage·γ after each update, pulling toward the uniform mixture (the paper's "
            "'shrinkage parameter', 0.99 in Sec. 3.2, the default; 1.0: off)."
        },
    )
    mle_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps of plain MLE on the real data before generated rows and γ updates start "
            "(Sec. 3.2 initialises the model with 200 such iterations)."
        },
    )
    proportion_samples: int = field(
        default=4096,
        metadata={"help": "Monte Carlo draws of Δ for the learned proportions π_k = E[softmax_k(γ+Δ)]."},
    )

    def __post_init__(self) -> None:
        if not (self.generative_weight >= 0):  # also rejects NaN
            raise ValueError(f"generative_weight (λ) must be >= 0 (or inf), got {self.generative_weight}.")
        if not 0.0 <= self.baseline_smoothing < 1.0:
            raise ValueError(f"baseline_smoothing (α) must be in [0, 1), got {self.baseline_smoothing}.")
        if not self.perturbation_std > 0:
            raise ValueError(f"perturbation_std (σ) must be > 0, got {self.perturbation_std}.")
        if not self.mixture_learning_rate >= 0:
            raise ValueError(f"mixture_learning_rate (η_γ) must be >= 0, got {self.mixture_learning_rate}.")
        if not 0.0 < self.mixture_shrinkage <= 1.0:
            raise ValueError(f"mixture_shrinkage must be in (0, 1], got {self.mixture_shrinkage}.")
        if self.likelihood_normalization not in LIKELIHOOD_NORMALIZATIONS:
            raise ValueError(f"likelihood_normalization must be one of {LIKELIHOOD_NORMALIZATIONS}, got "
                             f"{self.likelihood_normalization!r}.")  # fmt: skip
        if self.mle_warmup_steps < 0 or self.proportion_samples < 1:
            raise ValueError("mle_warmup_steps must be >= 0 and proportion_samples >= 1.")
        super().__post_init__()
