"""hfcoop: cooperative alternatives to maximum likelihood for Hugging Face causal LMs.

Names are imported on first use (PEP 562), so ``import hfcoop`` and ``hfcoop --help`` do not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .noise import quiet_unactionable_messages

__version__ = "0.1.0"
quiet_unactionable_messages()

_LAZY = {
    **{name: ".trainers" for name in ("CooperativeConfig", "CooperativeTrainer", "CoTConfig", "CoTTrainer", "MLEConfig",
                                      "MLETrainer", "GenereConfig", "GenereTrainer", "PsiMLEConfig", "PsiMLETrainer",
                                      "GCNConfig", "GCNTrainer")},
    **{name: ".cooperative_decoding" for name in ("cooperative_generate", "mcts_decode", "sample_and_resample")},
}  # fmt: skip
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hfcoop' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
