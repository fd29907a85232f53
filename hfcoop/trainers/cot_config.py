"""The arguments of ``CoTTrainer``; imports no trainer or model code (``base_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base_config import CooperativeConfig


@dataclass
class CoTConfig(CooperativeConfig):
    """Configuration of :class:`CoTTrainer` (plus every ``TrainingArguments`` field)."""

    algorithm_title: ClassVar[str] = "Cooperative Training (CoT)"

    mediator_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the mediator (None: the generator's; the paper found equal rates best)."},
    )
    mediator_steps: int = field(
        default=1,
        metadata={"help": "N_m of Algorithm 1: mediator-only optimizer steps before each generator-only step."},
    )
    gamma: float = field(
        default=0.0,
        metadata={"help": "Weight of the high-variance REINFORCE term of Sec. 3.1.3 (0 = Eq. 14, the paper's choice)."},
    )
    kl_chunk_size: int | None = field(
        default=1024,
        metadata={"help": "Positions per chunk of the full-vocabulary KL (bounds memory for large vocabularies)."},
    )

    @property
    def companion_learning_rate(self) -> float | None:
        return self.mediator_learning_rate

    def __post_init__(self) -> None:
        if self.mediator_steps < 1:
            raise ValueError(f"mediator_steps must be >= 1, got {self.mediator_steps}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        super().__post_init__()
