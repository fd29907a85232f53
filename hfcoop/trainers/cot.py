"""Cooperative Training (CoT), Lu et al., ICML 2019 — Algorithm 1.

    repeat
        for N_m steps:  mix equal batches {s_g} ~ G and {s_p} ~ p_data; update M with Eq. (9)
        generate {s} ~ G; update G with Eq. (14)

In this order: ``mediator_steps`` (N_m) optimizer steps each update the mediator alone on the step's real batch and
an equal batch of fresh samples; the next optimizer step updates the generator alone, on fresh samples, against
the *updated* mediator's (detached, dropout-free) next-token distributions (``CooperativeTrainer.is_generator_step``).
A mediator that starts as a copy of G therefore gives the first generator step a signal (a generator step against
the copy itself would have KL(G‖M) = 0 and a zero gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..batching import concat_rows, unpack_tokens
from ..distributed import copy_model
from ..losses import (
    cot_generator_loss,
    masked_token_mean,
    mediator_loss,
    packed_token_logprobs,
    per_token_kl,
    scale_to_token_budget,
)
from ..modeling import check_same_vocabulary, load_causal_lm
from ..shared_base import add_companion_adapter
from .base import CooperativeTrainer, warn_distorted_sampling
from .cot_config import CoTConfig

COT_CITATION = """@inproceedings{lu2019cot,
  title     = {{CoT}: Cooperative Training for Generative Modeling of Discrete Data},
  author    = {Lu, Sidi and Yu, Lantao and Feng, Siyuan and Zhu, Yaoming and Zhang, Weinan},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning},
  year      = {2019}
}"""


class CoTTrainer(CooperativeTrainer):
    """Cooperative Training: a generator and its mediator (the signature is ``__init__``'s; ``hfcoop.algorithms``
    lists every trainer's companion argument).

    ``model`` and ``mediator`` are models or paths/Hub ids; ``mediator=None`` starts the mediator as a copy of
    the generator. Both must share the generator's vocabulary.

    Give an already trained generator a *stronger* mediator (CoT App.: "the mediator needs to be slightly
    stronger than the generator"), e.g. a larger model of the same family. A copy of a trained G sits near a fixed
    point: the best same-capacity fit of (p_data + G)/2 is about G, so KL(G‖M) — the generator's only signal —
    stays near 0 (measured on the oracle benchmark, see benchmarks/README.md). Watch ``generator/kl_per_token``.
    """

    config_class = CoTConfig
    algorithm = "cot"
    companion_name = "mediator"
    paper = "CoT: Cooperative Training for Generative Modeling of Discrete Data (Lu et al., ICML 2019), arXiv:1804.03782"
    citation = COT_CITATION
    samples_from_generator = True

    def __init__(self, model, mediator=None, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 peft_config=None, callbacks=None, optimizers=(None, None), compute_metrics=None,
                 preprocess_logits_for_metrics=None) -> None:  # fmt: skip
        super().__init__(model, mediator, args, train_dataset, eval_dataset, processing_class, peft_config,
                         callbacks, optimizers, compute_metrics, preprocess_logits_for_metrics)  # fmt: skip

    def check_sampling_settings(self, args: CoTConfig) -> None:
        # Both objectives are expectations under G itself: the mediator must fit (p_data + G)/2 and the generator's
        # KL(G||M) is taken on G's samples. Distorted samples bias both.
        warn_distorted_sampling(args, "CoT", "the mediator then learns (p_data + G')/2 for the distorted sampler G' "
                                "and the generator's KL(G||M) is estimated on G' samples, which biases both objectives.")

    def build_companion(self, companion: Any, generator: PreTrainedModel, tokenizer: Any, args: Any) -> nn.Module:
        companion = self.companion_checkpoint(companion, generator, args)
        if companion is None:
            return copy_model(generator)  # ZeRO-3: rebuilt from the gathered weights
        return load_causal_lm(companion, name="mediator", init_kwargs=args.resolved_companion_init_kwargs,
                              trust_remote_code=args.trust_remote_code)  # fmt: skip

    def build_shared_companion(self, generator: nn.Module, tokenizer: Any, peft_config: Any, args: Any) -> nn.Module:
        return add_companion_adapter(generator, peft_config, self.companion_name)

    def check_pair(self, generator: nn.Module, companion: nn.Module | None, tokenizer: Any) -> None:
        check_same_vocabulary(generator, companion, tokenizer, "mediator")

    def companion_steps(self) -> int:
        return self.args.mediator_steps

    def companion_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Alg. 1, lines 4-6: the mediator on the balanced batch {s_p} ∪ {s_g}, Eq. (9)."""
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        real_ids, real_mask = inputs["completion_input_ids"], inputs["completion_mask"]
        gen_ids, gen_mask = self.sample(prompt_ids, prompt_mask)
        batch = real_ids.shape[0]
        med_ids, med_mask = concat_rows([(real_ids, real_mask), (gen_ids, gen_mask)], self.processing_class.pad_token_id)
        # Packed logits: only the masked-in tokens go through the LM head and the full-vocabulary loss ((N, V) rows,
        # row-major); padding is often a third of the block (benchmarks/README.md).
        part = self.lm_inputs(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), med_ids, med_mask, packed=True)
        _, med_logits = model(companion=part)
        med_logprobs = packed_token_logprobs(med_logits, med_ids, med_mask)
        loss_m = mediator_loss(med_logprobs[:batch], med_mask[:batch], med_logprobs[batch:], med_mask[batch:])
        self.log_metric("companion/loss", loss_m)  # Sec. 4.1.2: the live progress indicator
        self.log_metric("companion/nll_real", -(med_logprobs[:batch] * med_mask[:batch]).sum(-1).mean())
        self.log_metric("companion/nll_generated", -(med_logprobs[batch:] * med_mask[batch:]).sum(-1).mean())
        if self.completions_step():  # the table's KL(G||M) of each sample, before this step's update
            self.record_completions(prompt_ids, gen_ids, gen_mask,
                                    kl_per_token=self._sample_kl(model, prompt_ids, prompt_mask, gen_ids, gen_mask))
        return scale_to_token_budget(loss_m, self.args.max_completion_length)

    def _sample_kl(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_ids: torch.Tensor,
                   gen_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """KL(G||M) per token of each sample (no grad): the completions table's score on a mediator step."""
        part = self.lm_inputs(prompt_ids, prompt_mask, gen_ids, gen_mask, packed=True)
        with torch.no_grad():
            gen_logits, med_logits = model(generator=part, companion=part)
        kl = unpack_tokens(per_token_kl(gen_logits[None], med_logits[None], self.args.kl_chunk_size)[0], gen_mask)
        return (kl * gen_mask).sum(-1) / gen_mask.sum(-1).clamp(min=1)

    def generator_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Alg. 1, lines 7-9: fresh samples {s} ~ G, Eq. (14) against the updated mediator's distributions."""
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        gen_ids, gen_mask = self.sample(prompt_ids, prompt_mask)
        part = self.lm_inputs(prompt_ids, prompt_mask, gen_ids, gen_mask, packed=True)
        med_logits = self.companion_signal(model, part)
        gen_logits, _ = model(generator=part)
        kl = per_token_kl(gen_logits.unsqueeze(0), med_logits.unsqueeze(0), self.args.kl_chunk_size).squeeze(0)
        kl = unpack_tokens(kl, gen_mask)
        gen_logprobs = None
        if self.args.gamma:
            gen_logprobs = packed_token_logprobs(gen_logits, gen_ids, gen_mask)
        loss_g = cot_generator_loss(kl, gen_mask, gen_logprobs, self.args.gamma)
        self.log_metric("generator/loss", loss_g)
        self.log_metric("generator/kl_per_token", masked_token_mean(kl.detach(), gen_mask))
        kl_per_sample = (kl.detach() * gen_mask).sum(-1) / gen_mask.sum(-1).clamp(min=1)
        self.record_completions(prompt_ids, gen_ids, gen_mask, kl_per_token=kl_per_sample)
        return scale_to_token_budget(loss_g, self.args.max_completion_length)
