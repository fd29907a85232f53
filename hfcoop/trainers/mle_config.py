"""The arguments of ``MLETrainer``; imports no trainer or model code (``base_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base_config import CooperativeConfig


@dataclass
class MLEConfig(CooperativeConfig):
    """Teacher-forced maximum likelihood on the completions (no companion, no sampling)."""

    has_learned_companion: ClassVar[bool] = False
