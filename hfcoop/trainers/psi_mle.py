"""ψ-MLE, AISTATS 2020 — Algorithm 1 (Progressive Bias Correction).

    repeat
        sample {x} ~ p_theta; sample {y} ~ p̂_data; mix them with weight m into {z} ~ p_mix   (lines 3-5, Eq. 5)
        update the density-ratio estimator r_ψ with the Bregman objective           (lines 6-9, Eq. 11, Table 4)
        update p_theta by MLE on {z} weighted by r_ψ(z), self-normalised, flattened  (lines 10-13, Eq. 7, 18, 19)

In this order, one model per optimizer step: a step updates r_ψ (a one-logit sequence scorer, ``log r = logit``) on
the real batch and an equal batch of fresh samples; the next step updates the generator on its real batch and
fresh samples, weighted by the *updated* r_ψ (a dropout-free forward without grad;
``CooperativeTrainer.is_generator_step``). The mixture is taken in expectation rather than by drawing: real rows
count ``m``, generated rows ``1 - m`` (same expectation as line 5's random mix, lower variance, deterministic).

Which ratio r_ψ learns (``ratio_target``): Table 4 / Eq. 11 contrast ``p_data`` with ``p_mix`` (default,
``r = p_data / p_mix``, exactly the importance weight that Eq. 8 needs for mixture samples); Algorithm 1 line 8
contrasts ``p_data`` with ``p_theta`` (``r = p_data / p_theta``). With ``"model"`` the generator's weights are
converted with the exact identity ``p_data / p_mix = r / (m r + 1 - m)`` so both targets train the generator
toward ``E_{p_data}[log p_theta]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..batching import concat_rows
from ..losses import (
    density_ratio_loss,
    effective_sample_size,
    importance_weights,
    mixture_to_data_log_ratio,
    packed_token_logprobs,
    scale_to_token_budget,
    weighted_nll_loss,
)
from ..scorers import ScorerCompanionMixin
from .base import CooperativeTrainer
from .psi_mle_config import PsiMLEConfig

PSI_MLE_CITATION = """@inproceedings{song2020psimle,
  title     = {Improving Maximum Likelihood Training for Text Generation with Density Ratio Estimation},
  author    = {Song, Yuxuan and Miao, Ning and Zhou, Hao and Yu, Lantao and Wang, Mingxuan and Li, Lei},
  booktitle = {Proceedings of the 23rd International Conference on Artificial Intelligence and Statistics},
  year      = {2020}
}"""


def psi_mle_ratio_loss(
    log_ratio_real: torch.Tensor, log_ratio_generated: torch.Tensor, bregman: str, target: str, mixture_weight: float
) -> torch.Tensor:
    """Eq. 11 / Table 4 with ``p_num = p_data`` and ``p_den = p_mix`` (``target="mixture"``: the mixture expectation
    is ``m·mean(real) + (1-m)·mean(generated)``) or ``p_den = p_theta`` (``"model"``, Algorithm 1 line 8)."""
    if target == "model":
        return density_ratio_loss(log_ratio_real, log_ratio_generated, bregman)
    n_real, n_gen = log_ratio_real.shape[0], log_ratio_generated.shape[0]
    m = float(mixture_weight)
    den_weights = torch.cat(
        [log_ratio_real.new_full((n_real,), m / n_real), log_ratio_real.new_full((n_gen,), (1 - m) / n_gen)]
    ).float()
    den = torch.cat([log_ratio_real, log_ratio_generated])
    return density_ratio_loss(log_ratio_real, den, bregman, None, den_weights)


def check_finite_log_ratios(log_ratio: torch.Tensor, what: str = "ratio model") -> None:
    if not torch.isfinite(log_ratio).all():
        bad = int((~torch.isfinite(log_ratio)).sum())
        raise FloatingPointError(
            f"ψ-MLE: the {what} produced {bad} non-finite log-ratios (NaN/inf logits). The estimator diverged: "
            "lower ratio_learning_rate, keep max_grad_norm, or use bregman_f='logistic' (the paper's stable choice; "
            "'squared' is known to be unstable, Sec. 5.4.2)."
        )


class PsiMLETrainer(ScorerCompanionMixin, CooperativeTrainer):
    """ψ-MLE: MLE on the data/model mixture, bias-corrected by a learned density ratio (signature: ``__init__``).

    ``ratio_model``: a single-logit ``AutoModelForSequenceClassification`` or its path/Hub id (its logit is
    ``log r_ψ``); None builds it from the generator's own weights with a zero head (``r ≡ 1`` at the start, so
    training starts as plain MLE on the mixture). It may use another tokenizer (``scorer_tokenizer``).
    """

    config_class = PsiMLEConfig
    algorithm = "psi_mle"
    companion_name = "ratio_model"
    scorer_role = "ratio model"
    paper = (
        "Improving Maximum Likelihood Training for Text Generation with Density Ratio Estimation "
        "(Song et al., AISTATS 2020), arXiv:2007.06018"
    )
    citation = PSI_MLE_CITATION

    samples_from_generator = True

    def __init__(self, model, ratio_model=None, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 peft_config=None, callbacks=None, optimizers=(None, None), compute_metrics=None,
                 preprocess_logits_for_metrics=None) -> None:  # fmt: skip
        super().__init__(model, ratio_model, args, train_dataset, eval_dataset, processing_class, peft_config,
                         callbacks, optimizers, compute_metrics, preprocess_logits_for_metrics)  # fmt: skip

    def _mixture_batch(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """{y} ∪ {x}: the real rows, then as many fresh samples x ~ p_theta (Alg. 1, lines 3-5), with their prompts
        and mixture weights (real ``m``, generated ``1 - m``, over the batch size)."""
        m = self.args.mixture_weight
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        real_ids, real_mask = inputs["completion_input_ids"], inputs["completion_mask"]
        gen_ids, gen_mask = self.sample(prompt_ids, prompt_mask)
        batch = real_ids.shape[0]
        ids, mask = concat_rows([(real_ids, real_mask), (gen_ids, gen_mask)], self.processing_class.pad_token_id)
        mix = torch.cat([ids.new_full((batch,), 1) * m, ids.new_full((batch,), 1) * (1 - m)]).float() / batch
        return prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), ids, mask, mix

    def companion_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The Bregman objective of r_ψ on {y} ∪ {x} (Alg. 1, lines 6-9)."""
        args = self.args
        prompts, prompts_mask, ids, mask, _ = self._mixture_batch(inputs)
        batch = ids.shape[0] // 2
        _, ratio_logits = model(companion=self.companion_inputs(prompts, prompts_mask, ids, mask))
        log_r = ratio_logits.squeeze(-1).float()
        check_finite_log_ratios(log_r)
        loss_r = psi_mle_ratio_loss(log_r[:batch], log_r[batch:], args.bregman_f, args.ratio_target, args.mixture_weight)
        if not torch.isfinite(loss_r):
            check_finite_log_ratios(torch.exp(log_r), "ratio model's exp(log-ratio)")
            raise FloatingPointError(f"ψ-MLE: non-finite Bregman objective ({args.bregman_f}); lower ratio_learning_rate.")
        ratio = torch.exp(log_r.detach())
        self.log_metric("companion/loss", loss_r.detach())
        self.log_metric("companion/ratio_mean_real", ratio[:batch].mean())
        self.log_metric("companion/ratio_mean_generated", ratio[batch:].mean())
        self.log_metric("companion/ratio_max", ratio.max())
        self.record_completions(inputs["prompt_input_ids"], ids[batch:], mask[batch:], r=ratio[batch:])
        return loss_r  # per sequence: not scaled to the token budget

    def generator_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """MLE on the mixture weighted by p_data/p_mix from the updated r_ψ (Eq. 7-8), self-normalised (18),
        flattened (19), on the rows of nonzero mixture weight (both halves unless m is 0 or 1)."""
        args = self.args
        prompts, prompts_mask, ids, mask, mix = self._mixture_batch(inputs)
        batch = ids.shape[0] // 2
        log_w = self.companion_signal(model, self.companion_inputs(prompts, prompts_mask, ids, mask)).squeeze(-1).float()
        check_finite_log_ratios(log_w)
        self.record_completions(inputs["prompt_input_ids"], ids[batch:], mask[batch:], r=torch.exp(log_w[batch:]))
        rows = torch.nonzero(mix > 0).squeeze(1)
        log_w = log_w[rows]
        if args.ratio_target == "model":
            log_w = mixture_to_data_log_ratio(log_w, args.mixture_weight)
        weights = importance_weights(log_w, mix[rows], args.flatten_alpha, args.self_normalize)
        gen_logits, _ = model(generator=self.lm_inputs(prompts[rows], prompts_mask[rows], ids[rows], mask[rows],
                                                       packed=True))  # packed: the LM head on masked-in tokens only
        seq_logprobs = packed_token_logprobs(gen_logits, ids[rows], mask[rows]).sum(-1)
        loss_g = weighted_nll_loss(seq_logprobs, weights)
        self.log_metric("generator/loss", loss_g.detach())
        self.log_metric("generator/weight_share_max", (weights / weights.sum()).max())  # normalised: heaviest share
        self.log_metric("generator/ess", effective_sample_size(weights))  # Kish ESS / n of the weighted estimate
        return scale_to_token_budget(loss_g, args.max_completion_length)
