"""The arguments of ``GCNTrainer``; imports no trainer or model code (``base_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..losses import GCN_SAMPLERS, GCN_WEIGHTINGS
from ..validation import check_mcts_simulations
from .base_config import CooperativeConfig


@dataclass
class GCNConfig(CooperativeConfig):
    """Configuration of :class:`GCNTrainer` (plus every ``TrainingArguments`` field)."""

    algorithm_title: ClassVar[str] = "Generative Cooperative Networks (GCN)"

    weighting: str = field(
        default="d",
        metadata={
            "help": "Target q ∝ p·D ('d', the slides) or q ∝ p·D/(1-D) ('ratio', = p_data at the optimal D)."
        },
    )
    sampler: str = field(
        default="model",
        metadata={
            "help": "Proposal q̂: 'model' (p_theta, weights ∝ D), 'resample' (K candidates from p_theta resampled "
            "∝ D, weights 1) or 'mcts' (MCTS guided by p·D, weights 1)."
        },
    )
    num_candidates: int = field(
        default=4,
        metadata={"help": "Samples per prompt from p_theta: all weighted ('model') or resampled to one ('resample')."},
    )
    mle_weight: float = field(
        default=0.0,
        metadata={"help": "λ: generator loss = (1 - λ) GCN + λ teacher-forced MLE on the real batch (0: pure GCN)."},
    )
    discriminator_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the discriminator (None: the generator's)."}
    )
    weight_baseline: bool = field(
        default=False,
        metadata={
            "help": "sampler='model' only: subtract each prompt's mean weight (REINFORCE baseline). Same expected "
            "update on exact p_theta samples, without the zero-mean noise an uninformative D leaves."
        },
    )
    num_simulations: int = field(
        default=8,
        metadata={"help": "MCTS simulations per generated token ('mcts'); more than mcts_top_k, else D never guides "
                  "the pick (check_mcts_simulations)."},
    )
    mcts_top_k: int = field(
        default=4, metadata={"help": "Children per MCTS node: the generator's top-k tokens, as PUCT priors."}
    )
    c_puct: float = field(default=1.0, metadata={"help": "Exploration constant of PUCT ('mcts')."})
    mcts_visit_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Next token ∝ visits^(1/τ) ('mcts'; 0 = most visited). τ > 0 keeps training samples diverse."
        },
    )
    scorer_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer of the discriminator if it differs from the generator's (texts are re-tokenised). "
            "None: the discriminator checkpoint's own for a path, else the generator's."
        },
    )

    @property
    def companion_learning_rate(self) -> float | None:
        return self.discriminator_learning_rate

    def __post_init__(self) -> None:
        if self.weighting not in GCN_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {GCN_WEIGHTINGS}, got {self.weighting!r}.")
        if self.sampler not in GCN_SAMPLERS:
            raise ValueError(f"sampler must be one of {GCN_SAMPLERS}, got {self.sampler!r}.")
        if not 0.0 <= self.mle_weight <= 1.0:
            raise ValueError(f"mle_weight must be in [0, 1], got {self.mle_weight}.")
        if self.num_candidates < 1 or self.num_simulations < 1 or self.mcts_top_k < 1:
            raise ValueError("num_candidates, num_simulations and mcts_top_k must be >= 1.")
        if self.sampler == "mcts":
            check_mcts_simulations(self.num_simulations, self.mcts_top_k, ("num_simulations", "mcts_top_k"))
        if self.weight_baseline and self.sampler != "model":
            raise ValueError(f"weight_baseline needs sampler='model' (the {self.sampler!r} samples all weigh 1, so a "
                             "baseline would cancel the whole update).")  # fmt: skip
        if self.weight_baseline and (self.temperature != 1.0 or self.top_k or self.top_p < 1.0):
            raise ValueError("weight_baseline is unbiased only for exact p_theta samples: keep temperature=1, "
                             "top_k=0 and top_p=1 (or turn the baseline off).")  # fmt: skip
        super().__post_init__()
