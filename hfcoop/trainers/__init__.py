"""One ``XConfig`` + ``XTrainer`` pair per algorithm, all on the shared mechanism of ``base.py``.

As in TRL (``sft_config.py`` beside ``sft_trainer.py``), each config has its own module, ``<algorithm>_config.py``
(``base_config.py`` for ``CooperativeConfig``), which imports ``TrainingArguments`` and no ``Trainer``, data or model
code; the trainer, ``<algorithm>.py``, imports its config from there. Names are imported on first use (PEP 562), so
a config (``hfcoop train <algorithm> --help``, the CLI's parsing) loads no trainer.
"""

from __future__ import annotations

from .. import _lazy_names

_MODULES = {
    "CooperativeConfig": ".base_config", "CooperativeTrainer": ".base",
    "CoTConfig": ".cot_config", "CoTTrainer": ".cot",
    "MLEConfig": ".mle_config", "MLETrainer": ".mle",
    "PsiMLEConfig": ".psi_mle_config", "PsiMLETrainer": ".psi_mle",
    "GCNConfig": ".gcn_config", "GCNTrainer": ".gcn",
    "GenereConfig": ".genere_config", "GenereTrainer": ".genere",
}  # fmt: skip
__all__ = list(_MODULES)
__getattr__, __dir__ = _lazy_names(__name__, _MODULES)
