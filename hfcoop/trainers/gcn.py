"""Generative Cooperative Networks (GCN), Lamprier et al., ICML 2022 — the algorithm of the slides:

    repeat
        1. sample documents from the generator p_theta
        2. train the discriminator D (real vs generated)
        3. generate M samples y_i ~ q̂  (a proposal for q ∝ p_theta · D)
        4. θ ← θ + ε / (Σ_i w_i) Σ_i w_i ∇θ log p_theta(y_i),   w_i = q(y_i) / q̂(y_i)

In this order, one model per optimizer step: a step trains D (2) on the real batch and fresh samples of p_theta;
the next step draws q̂'s samples (3; the resampling and MCTS proposals use the *updated* D) and updates the
generator (4) with self-normalised weights from the updated D (a dropout-free forward without grad;
``CooperativeTrainer.is_generator_step``).

Importance weights per ``sampler`` (q̂), for ``weighting="d"`` (q ∝ p·D) / ``"ratio"`` (q ∝ p·D/(1-D)):

- ``"model"``: q̂ = p_theta, ``num_candidates`` samples per prompt. ``w_i = q/q̂ ∝ D(y_i)`` (resp.
  ``D(y_i)/(1 - D(y_i))``); the slides' ``q̂ = p`` case, ``w_i = D(y_i) / Σ_j D(y_j)``.
- ``"resample"``: q̂ = sampling-importance-resampling: ``num_candidates`` samples per prompt from p_theta, one
  kept ∝ D (resp. D/(1-D)). ``w_i = 1``: the resampling already applied q/p, and q̂ → q as the candidate
  count grows (its bias is O(1/num_candidates)). In expectation over the resampling this equals ``"model"``
  on the same candidates, at the cost of one generator forward per prompt instead of ``num_candidates``.
- ``"mcts"``: q̂ = MCTS guided by p·D (:func:`hfcoop.cooperative_decoding.mcts_decode`). ``w_i = 1``: the
  search's density is intractable, so its samples are treated as draws from q (the paper's choice of
  decoding "closer to q").

Self-normalisation runs per prompt for conditional data (``q(y|x)`` has its own normaliser for each ``x``)
and over the whole micro-batch for unconditional data (every prompt is BOS).
"""

from __future__ import annotations

import torch
from torch import nn

from ..batching import pad_to_common_width
from ..cooperative_decoding import mcts_decode, resample_indices, resample_log_weights
from ..losses import (
    baseline_weights,
    discriminator_loss,
    effective_sample_size,
    gcn_log_weights,
    importance_weights,
    packed_token_logprobs,
    scale_to_token_budget,
    weighted_nll_loss,
)
from ..sampling import generation_mode
from ..scorers import ScorerCompanionMixin, SequenceScorer
from .base import CooperativeTrainer, warn_distorted_sampling
from .gcn_config import GCNConfig

GCN_CITATION = """@inproceedings{lamprier2022gcn,
  title     = {Generative Cooperative Networks for Natural Language Generation},
  author    = {Lamprier, Sylvain and Scialom, Thomas and Chaffin, Antoine and Claveau, Vincent and Kijak, Ewa and
               Piwowarski, Benjamin and Staiano, Jacopo},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning},
  pages     = {11891--11905},
  year      = {2022}
}"""


class GCNTrainer(ScorerCompanionMixin, CooperativeTrainer):
    """Generative Cooperative Networks: weighted MLE on proposals scored by a discriminator (signature: ``__init__``).

    ``discriminator``: a single-logit ``AutoModelForSequenceClassification`` or its path/Hub id
    (``D = sigmoid(logit)``, scoring the completion given the prompt); None builds it from the generator's own
    weights with a zero head (``D ≡ 1/2`` at the start). It may use another tokenizer (``scorer_tokenizer``).
    """

    config_class = GCNConfig
    algorithm = "gcn"
    companion_name = "discriminator"
    scorer_role = "discriminator"
    paper = (
        "Generative Cooperative Networks for Natural Language Generation (Lamprier et al., ICML 2022), "
        "arXiv:2201.12320"
    )
    citation = GCN_CITATION

    samples_from_generator = True

    def __init__(self, model, discriminator=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None, optimizers=(None, None),
                 compute_metrics=None, preprocess_logits_for_metrics=None) -> None:  # fmt: skip
        super().__init__(model, discriminator, args, train_dataset, eval_dataset, processing_class, peft_config,
                         callbacks, optimizers, compute_metrics, preprocess_logits_for_metrics)  # fmt: skip
        if self.args.sampler == "model" and self.args.num_candidates < 2 and self.data_format != "text":
            raise ValueError(
                "GCN with sampler='model' on prompt/completion data self-normalises the weights per prompt, so "
                "num_candidates=1 would give every sample weight 1 (no discriminator signal): use num_candidates >= 2."
            )

    def check_sampling_settings(self, args: GCNConfig) -> None:
        # D learns real vs samples of p_theta and the weights w = q/q̂ assume q̂ = p_theta (or candidates from it).
        warn_distorted_sampling(args, "GCN", "D then learns real vs samples of the distorted sampler p' and the "
                                "weights w = q/q̂ assume samples of p_theta itself, which biases the generator's update.")

    # ----------------------------------------------------------------- q̂ samplers (no grad)
    def _discriminator_scores(self) -> SequenceScorer:
        return SequenceScorer(self.pair.companion, self.scorer_inputs)

    def sample_proposal(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q̂'s samples for the generator (step 3): ``(ids, mask, rows)``, ``rows[i]`` the prompt row of sample i.
        'model': ``num_candidates`` samples of p_theta per prompt; 'resample' / 'mcts': one per prompt, from
        candidates resampled by D or from the search guided by D (the updated D: this runs in generator steps)."""
        args, batch = self.args, prompt_ids.shape[0]
        if args.sampler == "model":
            ids, mask = self.sample(prompt_ids, prompt_mask, args.num_candidates)
            return ids, mask, torch.arange(batch, device=ids.device).repeat_interleave(args.num_candidates)
        rows = torch.arange(batch, device=prompt_ids.device)
        if args.sampler == "resample":
            k = args.num_candidates
            cand_ids, cand_mask = self.sample(prompt_ids, prompt_mask, k)
            with generation_mode(self.pair.companion, self.accelerator, self.model_wrapped):
                logits = self._discriminator_scores()(
                    prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0), cand_ids, cand_mask
                )
            log_w = resample_log_weights(logits, args.weighting)
            picked = resample_indices(log_w.view(batch, k)).squeeze(1)
            probs = torch.softmax(log_w.view(batch, k), dim=1)
            self.log_metric("samples/resample_ess", (1.0 / probs.pow(2).sum(1) / k).mean())  # Kish ESS / K per prompt
            chosen = rows * k + picked
            return cand_ids[chosen], cand_mask[chosen], rows
        pair = self.pair
        # D scores prefixes inside the generator's sampling context: gathered with it under ZeRO-3.
        with generation_mode(pair.generator, self.accelerator, self.model_wrapped, scorers=(pair.companion,)) as g:
            ids, mask = mcts_decode(
                g, prompt_ids, prompt_mask, self._discriminator_scores(),
                max_new_tokens=args.max_completion_length, eos_token_id=self.eos_token_ids,
                pad_token_id=self.processing_class.pad_token_id, num_simulations=args.num_simulations,
                top_k=args.mcts_top_k, c_puct=args.c_puct, temperature=args.temperature,
                visit_temperature=args.mcts_visit_temperature, filter_top_k=args.top_k, top_p=args.top_p,
            )  # fmt: skip
        self.log_metric("samples/mcts_completion_length", mask.sum(1).float().mean())
        return ids, mask, rows

    # ----------------------------------------------------------------- one step
    def companion_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Step 2: D on the real batch vs plain p_theta samples (``num_candidates`` per prompt for 'model')."""
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        real_ids, real_mask = inputs["completion_input_ids"], inputs["completion_mask"]
        batch = real_ids.shape[0]
        k = self.args.num_candidates if self.args.sampler == "model" else 1
        neg_ids, neg_mask = self.sample(prompt_ids, prompt_mask, k)
        neg_rows = torch.arange(batch, device=neg_ids.device).repeat_interleave(k)
        (real_ids, real_mask), (neg_ids, neg_mask) = pad_to_common_width(
            [(real_ids, real_mask), (neg_ids, neg_mask)], self.processing_class.pad_token_id
        )
        d_rows = torch.cat([torch.arange(batch, device=neg_rows.device), neg_rows])
        _, d_logits = model(companion=self.companion_inputs(
            prompt_ids[d_rows], prompt_mask[d_rows], torch.cat([real_ids, neg_ids]), torch.cat([real_mask, neg_mask])
        ))  # fmt: skip
        return self._discriminator_loss(d_logits, batch, prompt_ids[neg_rows], neg_ids, neg_mask)

    def generator_update(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps 3-4: q̂'s samples and weighted MLE with self-normalised w = q/q̂ from the updated D (module
        docstring), plus λ teacher-forced MLE on the real batch."""
        args = self.args
        prompt_ids, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        real_ids, real_mask = inputs["completion_input_ids"], inputs["completion_mask"]
        batch = real_ids.shape[0]
        train_ids, train_mask, train_rows = self.sample_proposal(prompt_ids, prompt_mask)
        n_train = train_ids.shape[0]
        d_train = torch.zeros(n_train, device=train_ids.device)
        if args.sampler == "model":  # D of the samples (the other samplers' weights are 1)
            d_train = self.companion_signal(model, self.companion_inputs(
                prompt_ids[train_rows], prompt_mask[train_rows], train_ids, train_mask)).squeeze(-1).float()  # fmt: skip
            self.record_completions(prompt_ids[train_rows], train_ids, train_mask, D=torch.sigmoid(d_train))
        g_ids, g_mask, g_rows = train_ids, train_mask, train_rows
        if args.mle_weight > 0:
            (train_ids, train_mask), (real_ids, real_mask) = pad_to_common_width(
                [(train_ids, train_mask), (real_ids, real_mask)], self.processing_class.pad_token_id
            )
            g_ids, g_mask = torch.cat([train_ids, real_ids]), torch.cat([train_mask, real_mask])
            g_rows = torch.cat([train_rows, torch.arange(batch, device=train_rows.device)])
        gen_logits, _ = model(generator=self.lm_inputs(prompt_ids[g_rows], prompt_mask[g_rows], g_ids, g_mask,
                                                       packed=True))  # packed: the LM head on masked-in tokens only
        loss_g = self._generator_loss(packed_token_logprobs(gen_logits, g_ids, g_mask), n_train, d_train, train_rows)
        return scale_to_token_budget(loss_g, args.max_completion_length)

    def _discriminator_loss(
        self, d_logits: torch.Tensor, batch: int, neg_prompts: torch.Tensor, neg_ids: torch.Tensor,
        neg_mask: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """D's per-sequence loss (not scaled to the token budget), logged; the real rows come first."""
        d_logits = d_logits.squeeze(-1).float()
        if not torch.isfinite(d_logits).all():
            raise FloatingPointError(
                "GCN: the discriminator produced non-finite logits; lower discriminator_learning_rate."
            )
        d_real, d_gen = d_logits[:batch], d_logits[batch:]
        loss_d = discriminator_loss(d_real, d_gen)
        with torch.no_grad():
            self.log_metric("companion/loss", loss_d.detach())
            self.log_metric("companion/accuracy", 0.5 * ((d_real > 0).float().mean() + (d_gen < 0).float().mean()))
            self.log_metric("companion/d_real", torch.sigmoid(d_real).mean())
            self.log_metric("companion/d_generated", torch.sigmoid(d_gen).mean())
            # D of the plain p_theta samples (the generator's own), beside their prompts.
            self.record_completions(neg_prompts, neg_ids, neg_mask, D=torch.sigmoid(d_gen))
        return loss_d

    def _generator_loss(
        self, logprobs: torch.Tensor, n_train: int, d_train: torch.Tensor, train_rows: torch.Tensor
    ) -> torch.Tensor:
        """(1 - λ) weighted NLL of the first ``n_train`` rows (q̂'s samples, weights from D) + λ NLL of the rest (the
        real batch); ``logprobs`` are masked per-token log-probabilities."""
        args = self.args
        log_w = gcn_log_weights(d_train, args.weighting, args.sampler)
        groups = torch.zeros_like(train_rows) if self.data_format == "text" else train_rows
        weights = importance_weights(log_w, groups=groups)
        update_weights = baseline_weights(weights, groups) if args.weight_baseline else weights
        loss_gcn = weighted_nll_loss(logprobs[:n_train].sum(-1), update_weights)
        loss_g = (1 - args.mle_weight) * loss_gcn
        if args.mle_weight > 0:
            loss_mle = -logprobs[n_train:].sum(-1).mean()
            self.log_metric("generator/mle_nll", loss_mle.detach())
            loss_g = loss_g + args.mle_weight * loss_mle
        with torch.no_grad():
            raw = torch.exp(log_w)
            self.log_metric("generator/loss", loss_gcn.detach())
            self.log_metric("generator/weight_mean", raw.mean())
            self.log_metric("generator/weight_max", raw.max())
            self.log_metric("generator/ess", effective_sample_size(weights))
        return loss_g

