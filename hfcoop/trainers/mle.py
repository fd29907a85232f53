"""Maximum likelihood under the same harness as the cooperative trainers, so benchmarks compare like with like."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import masked_token_mean, mle_loss, packed_token_logprobs, scale_to_token_budget
from .base import CooperativeTrainer
from .mle_config import MLEConfig


class MLETrainer(CooperativeTrainer):
    """Maximum likelihood on the real completions: the baseline every cooperative trainer is compared with
    (signature: ``__init__``; no companion)."""

    config_class = MLEConfig
    algorithm = "mle"

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 peft_config=None, callbacks=None, optimizers=(None, None), compute_metrics=None,
                 preprocess_logits_for_metrics=None) -> None:  # fmt: skip
        super().__init__(model, None, args, train_dataset, eval_dataset, processing_class, peft_config, callbacks,
                         optimizers, compute_metrics, preprocess_logits_for_metrics)  # fmt: skip

    def cooperative_step(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = inputs["completion_input_ids"], inputs["completion_mask"]
        # Packed logits of the real tokens only (padding skips the LM head); zeros at masked positions, which the
        # loss multiplies by 0 anyway: same values, less work (benchmarks/README.md).
        part = self.lm_inputs(inputs["prompt_input_ids"], inputs["prompt_attention_mask"], ids, mask, packed=True)
        logits, _ = model(generator=part)
        logprobs = packed_token_logprobs(logits, ids, mask)
        self.log_metric("generator/nll_per_token", -masked_token_mean(logprobs, mask))
        return scale_to_token_budget(mle_loss(logprobs, mask), self.args.max_completion_length)
