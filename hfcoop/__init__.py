"""hfcoop: cooperative alternatives to maximum likelihood for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .trainers import CooperativeConfig, CooperativeTrainer, CoTConfig, CoTTrainer, MLEConfig, MLETrainer
from .trainers import GenereConfig, GenereTrainer
from .trainers import GCNConfig, GCNTrainer, PsiMLEConfig, PsiMLETrainer
from .cooperative_decoding import cooperative_generate, mcts_decode, sample_and_resample

__all__ = ["CooperativeConfig", "CooperativeTrainer", "CoTConfig", "CoTTrainer", "MLEConfig", "MLETrainer"]
__all__ += ["GenereConfig", "GenereTrainer"]
__all__ += ["PsiMLEConfig", "PsiMLETrainer", "GCNConfig", "GCNTrainer", "cooperative_generate", "mcts_decode",
            "sample_and_resample"]
