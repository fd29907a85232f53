"""The algorithm registry: the one table of hfcoop's algorithms that the CLI, the benchmarks and the docs read.

Importing it loads no model code; an entry's classes are imported on first use, the config alone from its config
module (no trainer, data or model code: ``hfcoop train <algorithm> --help`` and the CLI's parsing stay cheap). Each
class keeps its own facts (the config ``algorithm_title``, the trainer ``algorithm``, ``companion_name`` and
``config_class``); an entry names both classes and reads the rest from them, so no fact is written twice.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Algorithm:
    name: str  # CLI verb argument and recipe file prefix (`hfcoop train psi_mle`, recipes/psi_mle_*.yaml)
    label: str  # short name in benchmark tables and plots
    config_path: str  # "module:Config" inside hfcoop (imports no trainer)
    trainer_path: str  # "module:Trainer" inside hfcoop
    companion_source: str | None  # the ScriptArguments field that feeds the companion argument (None: no companion)

    @property
    def trainer_cls(self) -> type:
        return _load(self.trainer_path)

    @property
    def config_cls(self) -> type:
        return _load(self.config_path)

    @property
    def title(self) -> str:
        return self.config_cls.algorithm_title

    @property
    def companion_argument(self) -> str | None:
        """The trainer's companion parameter (``mediator``, ``ratio_model``, ``discriminator``, ``generators``),
        read from its signature: ``XTrainer(model, <companion>=..., args=...)``; None when it takes none."""
        second = list(inspect.signature(self.trainer_cls.__init__).parameters)[2]  # (self, model, <this>)
        return None if second == "args" else second

    def companion_kwargs(self, companion: Any) -> dict[str, Any]:
        """``{companion argument: companion}`` to pass to the trainer (empty when it takes no companion)."""
        argument = self.companion_argument
        return {} if argument is None else {argument: companion}


def _load(path: str) -> type:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module, __package__), attribute)


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("mle", "MLE", ".trainers.mle_config:MLEConfig", ".trainers.mle:MLETrainer", None),
        Algorithm("cot", "CoT", ".trainers.cot_config:CoTConfig", ".trainers.cot:CoTTrainer", "companion_name_or_path"),
        Algorithm("psi_mle", "ψ-MLE", ".trainers.psi_mle_config:PsiMLEConfig", ".trainers.psi_mle:PsiMLETrainer",
                  "companion_name_or_path"),
        Algorithm("gcn", "GCN", ".trainers.gcn_config:GCNConfig", ".trainers.gcn:GCNTrainer", "companion_name_or_path"),
        Algorithm("genere", "GENERE", ".trainers.genere_config:GenereConfig", ".trainers.genere:GenereTrainer",
                  "generators"),
    )
}  # fmt: skip


def by_label(label: str) -> Algorithm:
    """The entry whose :attr:`Algorithm.label` starts ``label`` (benchmark runs are named "CoT (scratch)" etc.)."""
    base = label.split(" ")[0]
    for algorithm in ALGORITHMS.values():
        if algorithm.label == base:
            return algorithm
    raise KeyError(f"unknown algorithm label '{label}'; known: {', '.join(a.label for a in ALGORITHMS.values())}")
