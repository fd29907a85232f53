"""The arguments of ``PsiMLETrainer``; imports no trainer or model code (``base_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..losses import BREGMAN_FUNCTIONS
from .base_config import CooperativeConfig

RATIO_TARGETS = ("mixture", "model")


@dataclass
class PsiMLEConfig(CooperativeConfig):
    """Configuration of :class:`PsiMLETrainer` (plus every ``TrainingArguments`` field)."""

    algorithm_title: ClassVar[str] = "ψ-MLE (MLE with density-ratio bias correction)"

    mixture_weight: float = field(
        default=0.5,
        metadata={"help": "m of Eq. 5: share of real data in p_mix = m p_data + (1 - m) p_theta (paper: 1/2)."},
    )
    bregman_f: str = field(
        default="logistic",
        metadata={
            "help": "f of the Bregman objective (Table 4): 'logistic' = t log t - (1+t) log(1+t) (paper default), "
            "'squared' = (t-1)^2/2, 'softplus' = ln(1+e^t)."
        },
    )
    ratio_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the ratio estimator r_ψ (None: the generator's)."}
    )
    ratio_target: str = field(
        default="mixture",
        metadata={
            "help": "Ratio learnt by r_ψ: 'mixture' = p_data/p_mix (Eq. 11, Table 4) or 'model' = p_data/p_theta "
            "(Algorithm 1, line 8; converted to p_data/p_mix for the generator's weights)."
        },
    )
    self_normalize: bool = field(
        default=True, metadata={"help": "Self-normalise the importance weights over the micro-batch (Eq. 18)."}
    )
    flatten_alpha: float = field(
        default=1.0,
        metadata={"help": "α of Eq. 19: weights r^α (0 = uniform, i.e. plain MLE on the mixture; 1 = plain ratios)."},
    )
    scorer_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer of the ratio model if it differs from the generator's (texts are re-tokenised). "
            "None: the ratio model checkpoint's own for a path, else the generator's."
        },
    )

    @property
    def companion_learning_rate(self) -> float | None:
        return self.ratio_learning_rate

    def __post_init__(self) -> None:
        if not 0.0 <= self.mixture_weight <= 1.0:
            raise ValueError(f"mixture_weight must be in [0, 1], got {self.mixture_weight}.")
        if self.bregman_f not in BREGMAN_FUNCTIONS:
            raise ValueError(f"bregman_f must be one of {BREGMAN_FUNCTIONS}, got {self.bregman_f!r}.")
        if self.ratio_target not in RATIO_TARGETS:
            raise ValueError(f"ratio_target must be one of {RATIO_TARGETS}, got {self.ratio_target!r}.")
        if self.flatten_alpha < 0:
            raise ValueError(f"flatten_alpha must be >= 0, got {self.flatten_alpha}.")
        super().__post_init__()
