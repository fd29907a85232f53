"""One ``XConfig`` + ``XTrainer`` pair per algorithm, all on the shared mechanism of ``base.py``."""

from .base import CooperativeConfig, CooperativeTrainer
from .cot import CoTConfig, CoTTrainer
from .genere import GenereConfig, GenereTrainer
from .gcn import GCNConfig, GCNTrainer
from .mle import MLEConfig, MLETrainer
from .psi_mle import PsiMLEConfig, PsiMLETrainer

__all__ = ["CooperativeConfig", "CooperativeTrainer", "CoTConfig", "CoTTrainer", "MLEConfig", "MLETrainer",
           "PsiMLEConfig", "PsiMLETrainer", "GCNConfig", "GCNTrainer"]
__all__ += ["GenereConfig", "GenereTrainer"]
