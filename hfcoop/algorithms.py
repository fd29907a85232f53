"""The algorithm registry: the one table of hfcoop's algorithms that the CLI, the benchmarks and the docs read.

Importing it loads no model code; an entry's classes are imported on first use. Each trainer class keeps its own
facts (``algorithm``, ``algorithm_title``, ``companion_name``, ``config_class``); an entry names the trainer and
reads the rest from it, so no fact about an algorithm is written twice.
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
    trainer_path: str  # "module:Trainer" inside hfcoop
    companion_source: str | None  # the ScriptArguments field that feeds the companion argument (None: no companion)

    @property
    def trainer_cls(self) -> type:
        module, _, attribute = self.trainer_path.partition(":")
        return getattr(importlib.import_module(module, __package__), attribute)

    @property
    def config_cls(self) -> type:
        return self.trainer_cls.config_class

    @property
    def title(self) -> str:
        return self.trainer_cls.algorithm_title

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


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("mle", "MLE", ".trainers.mle:MLETrainer", None),
        Algorithm("cot", "CoT", ".trainers.cot:CoTTrainer", "companion_name_or_path"),
        Algorithm("psi_mle", "ψ-MLE", ".trainers.psi_mle:PsiMLETrainer", "companion_name_or_path"),
        Algorithm("gcn", "GCN", ".trainers.gcn:GCNTrainer", "companion_name_or_path"),
        Algorithm("genere", "GENERE", ".trainers.genere:GenereTrainer", "generators"),
    )
}


def by_label(label: str) -> Algorithm:
    """The entry whose :attr:`Algorithm.label` starts ``label`` (benchmark runs are named "CoT (scratch)" etc.)."""
    base = label.split(" ")[0]
    for algorithm in ALGORITHMS.values():
        if algorithm.label == base:
            return algorithm
    raise KeyError(f"unknown algorithm label '{label}'; known: {', '.join(a.label for a in ALGORITHMS.values())}")
