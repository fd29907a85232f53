"""hfcoop: cooperative alternatives to maximum likelihood for Hugging Face causal LMs.

Names are imported on first use (PEP 562), so ``import hfcoop`` and ``hfcoop --help`` do not load torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

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


def _lazy_names(package: str, modules: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """PEP 562 ``__getattr__`` and ``__dir__`` of a package whose names (``modules``: name -> module, relative to
    the package) are imported on first use."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name], package), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *modules])

    return __getattr__, __dir__


__getattr__, __dir__ = _lazy_names(__name__, _LAZY)
