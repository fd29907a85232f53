"""One ``XConfig`` + ``XTrainer`` pair per algorithm, all on the shared mechanism of ``base.py``."""

from .base import CooperativeConfig, CooperativeTrainer
from .cot import CoTConfig, CoTTrainer
from .mle import MLEConfig, MLETrainer

__all__ = ["CooperativeConfig", "CooperativeTrainer", "CoTConfig", "CoTTrainer", "MLEConfig", "MLETrainer"]
