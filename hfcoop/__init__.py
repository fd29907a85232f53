"""hfcoop: cooperative alternatives to maximum likelihood for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .trainers import CooperativeConfig, CooperativeTrainer, CoTConfig, CoTTrainer, MLEConfig, MLETrainer

__all__ = ["CooperativeConfig", "CooperativeTrainer", "CoTConfig", "CoTTrainer", "MLEConfig", "MLETrainer"]
