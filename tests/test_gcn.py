"""GCN: the importance weights per sampler, resampling toward q ∝ p·D on an enumerable toy, GCNTrainer end to end
(every sampler, resume, bad input) and 2-process DDP for both scorer-companion trainers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2ForSequenceClassification

from helpers import assert_resume_is_bit_identical, launch

from hfcoop import GCNConfig, GCNTrainer
from hfcoop.cooperative_decoding import resample_indices, resample_log_weights
from hfcoop.losses import baseline_weights, discriminator_loss, gcn_log_weights, importance_weights, weighted_nll_loss

TESTS = os.path.dirname(os.path.abspath(__file__))


def gcn_args(tmp_path, **kw) -> GCNConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
        max_completion_length=6, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    base.update(kw)
    return GCNConfig(**base)


def tv(a: torch.Tensor, b: torch.Tensor) -> float:  # total variation
    return 0.5 * float((a - b).abs().sum())


# ---------------------------------------------------------------- enumerable toy: 9 sequences, p and D fixed
P = torch.tensor([0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.03, 0.02], dtype=torch.float64)
D = torch.tensor([0.05, 0.20, 0.50, 0.90, 0.95, 0.60, 0.85, 0.30, 0.99], dtype=torch.float64)
LOGIT = torch.log(D / (1 - D))


def target(weighting: str) -> torch.Tensor:
    q = P * (D if weighting == "d" else D / (1 - D))
    return q / q.sum()


def sir_distribution(weighting: str, k: int, draws: int = 20000, seed: int = 0) -> torch.Tensor:
    """Empirical output distribution of SIR: k candidates ~ p per draw, one kept ∝ D (the trainer's functions)."""
    g = torch.Generator().manual_seed(seed)
    candidates = torch.multinomial(P.float(), draws * k, replacement=True, generator=g).view(draws, k)
    log_w = resample_log_weights(LOGIT.float()[candidates].view(-1), weighting).view(draws, k)
    picked = candidates.gather(1, resample_indices(log_w, 1, generator=g)).squeeze(1)
    return torch.bincount(picked, minlength=9).double() / draws


@pytest.mark.parametrize("weighting, k_large", [("d", 64), ("ratio", 256)])
def test_resampling_distribution_approaches_q(weighting, k_large):
    """SIR's output tends to q ∝ p·D (or p·D/(1-D)) as the candidate count K grows.

    Thresholds: with 20000 draws the sampling noise alone gives an expected TV of
    1/2 Σ sqrt(2 q_i (1 - q_i) / (π n)) ≈ 0.008. SIR's own bias is O(1/K) times the spread of the weights
    (the normaliser Σ_j w_j is estimated from K candidates); measured with 10^5 draws it is 0.0085 at K = 64 for
    w = D, and 0.067 at K = 64 / 0.017 at K = 256 for w = D/(1-D), whose weights reach 99 on a sequence of
    p = 0.02. So the large K must come within TV 0.03 of q and beat K = 4, while K = 1 (plain sampling from p)
    is TV(p, q) ≥ 0.37 away: the test tells a correct resampler from one that ignores or misuses D.
    """
    q = target(weighting)
    assert tv(sir_distribution(weighting, 1), q) > 0.3
    errors = [tv(sir_distribution(weighting, k), q) for k in (4, k_large)]
    assert errors[1] < 0.03 and errors[1] < errors[0]


@pytest.mark.parametrize("weighting", ["d", "ratio"])
def test_model_sampler_weights_estimate_q(weighting):
    """Sampler "model": self-normalised weights w_i = D(y_i)/Σ_j D(y_j) on samples of p make the weighted
    empirical distribution converge to q (the slides' q̂ = p case). Same TV budget as SIR (n = 20000)."""
    g = torch.Generator().manual_seed(1)
    samples = torch.multinomial(P.float(), 20000, replacement=True, generator=g)
    w = importance_weights(gcn_log_weights(LOGIT.float()[samples], weighting, "model"))
    estimate = torch.zeros(9, dtype=torch.float64).index_add(0, samples, w.double())
    assert tv(estimate, target(weighting)) < 0.03
    assert tv(estimate, P) > 0.25


def test_importance_weights_per_sampler():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(gcn_log_weights(logits, "d", "model"), F.logsigmoid(logits))  # w = D
    assert torch.allclose(gcn_log_weights(logits, "ratio", "model"), logits)  # w = D/(1-D)
    for sampler in ("resample", "mcts"):  # the sampler already targets q: w = 1
        assert torch.equal(gcn_log_weights(logits, "d", sampler), torch.zeros(3))
    w = importance_weights(gcn_log_weights(logits, "d", "model"))
    d = torch.sigmoid(logits)
    assert torch.allclose(w, d / d.sum())  # the slides: D(y_i) / Σ_j D(y_j)
    with pytest.raises(ValueError, match="weighting"):
        gcn_log_weights(logits, "exp")


def test_optimal_discriminator_makes_the_ratio_weighting_exact():
    """Minimising the discriminator loss exactly over free logits gives D* = p_data/(p_data + p_theta); with it
    q ∝ p_theta·D*/(1-D*) is p_data and q ∝ p_theta·D* is p_theta p_data/(p_data + p_theta)."""
    p_data = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64) + 1e-3
    p_data = p_data / p_data.sum()
    s = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([s], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)
    p_model = P[:4] / P[:4].sum()

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((p_data * F.softplus(-s)).sum() + (p_model * F.softplus(s)).sum())
        loss.backward()
        return loss

    opt.step(closure)
    d = torch.sigmoid(s.detach())
    assert torch.allclose(d, p_data / (p_data + p_model), atol=1e-6)
    w = importance_weights(gcn_log_weights(s.detach(), "ratio"), p_model)
    assert torch.allclose(w, p_data, atol=1e-6)
    # and the batch version of the loss is the same objective
    assert torch.allclose(discriminator_loss(torch.tensor([2.0]), torch.tensor([-1.0])),
                          0.5 * (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))))  # fmt: skip


def test_baseline_weights_hand_computed():
    w = torch.tensor([0.1, 0.3, 0.2, 0.4])
    assert torch.allclose(baseline_weights(w), w - 0.25)
    groups = torch.tensor([7, 7, 3, 3])
    assert torch.allclose(baseline_weights(w, groups), torch.tensor([-0.1, 0.1, -0.1, 0.1]))


def test_baseline_keeps_the_expected_update_and_removes_the_noise():
    """Exact enumeration: 3 outcomes, 2 samples from p_theta per step. The baselined update has the same
    expectation over all sample pairs as the slides' step 4, and is exactly 0 when D is uninformative."""
    logits = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(logits, 0)
    p = logp.exp().detach()

    def expected_update(d: torch.Tensor, baseline: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        total, per_pair = torch.zeros(3, dtype=torch.float64), []
        for a in range(3):
            for b in range(3):
                rows = torch.tensor([a, b])
                w = importance_weights(gcn_log_weights(torch.logit(d[rows]), "d", "model"))
                w = baseline_weights(w) if baseline else w
                (grad,) = torch.autograd.grad(weighted_nll_loss(logp[rows], w), logits, retain_graph=True)
                per_pair.append(grad)
                total += p[a] * p[b] * grad
        return total, per_pair

    d = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64)
    plain, _ = expected_update(d, baseline=False)
    centred, _ = expected_update(d, baseline=True)
    assert plain.abs().max() > 1e-2 and torch.allclose(plain, centred, atol=1e-12)
    flat = torch.full((3,), 0.5, dtype=torch.float64)
    _, noisy = expected_update(flat, baseline=False)
    _, quiet = expected_update(flat, baseline=True)
    assert max(float(g.abs().max()) for g in noisy) > 0.1  # each step moves although E[update] = 0
    assert max(float(g.abs().max()) for g in quiet) == 0.0


# ---------------------------------------------------------------- the trainer end to end
@pytest.mark.parametrize(
    "sampler, data, extra",
    [("model", "text", {"mle_weight": 0.3, "save_companion": True, "weight_baseline": True}),
     ("resample", "prompt_completion", {"weighting": "ratio"}),
     ("mcts", "prompt_completion", {"num_simulations": 5, "mcts_top_k": 4, "max_completion_length": 4})],
)  # fmt: skip
def test_trainer_end_to_end(sampler, data, extra, tiny_lm, coco_text, coco_prompt_completion, tmp_path):
    dataset = coco_text if data == "text" else coco_prompt_completion
    args = gcn_args(tmp_path, sampler=sampler, discriminator_learning_rate=1e-2, **extra)
    trainer = GCNTrainer(tiny_lm, train_dataset=dataset, args=args)
    before = {k: v.clone() for k, v in trainer.pair.companion.state_dict().items()}
    trainer.train()
    # The papers' order: step 1 trains D alone, step 2 the generator alone (against the updated D).
    d_logs = [e for e in trainer.state.log_history if "companion/accuracy" in e]
    logs = [e for e in trainer.state.log_history if "generator/loss" in e]
    assert [e["step"] for e in d_logs] == [1] and [e["step"] for e in logs] == [2]
    for key in ("companion/accuracy", "companion/d_real", "companion/d_generated", "companion/loss"):
        assert math.isfinite(d_logs[0][key]) and key not in logs[0], key
    for key in ("generator/weight_mean", "generator/weight_max", "generator/ess", "generator/loss"):
        assert math.isfinite(logs[0][key]) and key not in d_logs[0], key
    assert abs(d_logs[0]["companion/loss"] - math.log(2)) < 1e-4  # zero head: D ≡ 1/2 at the start
    after = trainer.pair.companion.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if sampler == "model":
        assert "generator/mle_nll" in logs[0]
        out = tmp_path / "export"
        trainer.save_model(str(out))
        AutoModelForCausalLM.from_pretrained(str(out))
        assert (out / "discriminator" / "config.json").exists()
        assert "Generative Cooperative Networks" in (out / "README.md").read_text()
    else:
        assert logs[0]["generator/weight_max"] == 1.0  # w = 1 for the resampling / MCTS proposals
    if sampler == "resample":
        assert 0 < logs[0]["samples/resample_ess"] <= 1 + 1e-6


def test_resume_is_bit_identical(tiny_lm, coco_prompt_completion, tmp_path):
    """With the resampling sampler (global-RNG draws), MLE mixing and a companion warm-up that ends at the cut
    (the generator first learns after the resume), a resumed run equals an uninterrupted one."""

    def run(out, resume=None, callbacks=None):
        args = gcn_args(tmp_path, output_dir=str(tmp_path / out), max_steps=4, learning_rate=1e-2, sampler="resample",
                        mle_weight=0.5, companion_warmup_steps=2, save_strategy="steps" if out == "cut" else "no",
                        save_steps=2)  # fmt: skip
        trainer = GCNTrainer(tiny_lm, train_dataset=coco_prompt_completion, args=args, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.pair

    assert_resume_is_bit_identical(run, tmp_path, tiny_lm)


# ---------------------------------------------------------------- bad input
def test_bad_configs_and_inputs(tiny_lm, coco_text, coco_prompt_completion, tmp_path):
    for kw, match in (({"sampler": "beam"}, "sampler"), ({"weighting": "exp"}, "weighting"),
                      ({"mle_weight": 2.0}, "mle_weight"), ({"num_candidates": 0}, "num_candidates")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            gcn_args(tmp_path, **kw)
    with pytest.raises(ValueError, match="weight_baseline needs sampler='model'"):
        gcn_args(tmp_path, sampler="resample", weight_baseline=True)
    with pytest.raises(ValueError, match="exact p_theta samples"):
        gcn_args(tmp_path, weight_baseline=True, top_k=5)
    one_candidate = "sampler='model' on prompt/completion data self-normalises.*num_candidates >= 2"
    with pytest.raises(ValueError, match=one_candidate):
        GCNTrainer(tiny_lm, train_dataset=coco_prompt_completion, args=gcn_args(tmp_path, num_candidates=1))
    two = GPT2ForSequenceClassification(GPT2Config(vocab_size=600, n_layer=1, n_embd=16, n_head=2, num_labels=2,
                                                   bos_token_id=0, eos_token_id=0))  # fmt: skip
    with pytest.raises(ValueError, match="single-logit head"):
        GCNTrainer(tiny_lm, discriminator=two, train_dataset=coco_text, args=gcn_args(tmp_path))
    with pytest.raises(ValueError, match="must be a model, a path"):
        GCNTrainer(tiny_lm, discriminator=3, train_dataset=coco_text, args=gcn_args(tmp_path))
    trainer = GCNTrainer(tiny_lm, train_dataset=coco_text, args=gcn_args(tmp_path))
    with torch.no_grad():
        trainer.pair.companion.score.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="discriminator_learning_rate"):
        trainer.train()
    with pytest.raises(ValueError, match="non-finite log-weights"):
        resample_indices(torch.tensor([[float("nan"), 0.0]]))


# ---------------------------------------------------------------- 2-process DDP (both scorer-companion trainers)
DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from datasets import Dataset
    from conftest import coco_lines
    from safetensors.torch import save_file
    from hfcoop import GCNConfig, GCNTrainer, PsiMLEConfig, PsiMLETrainer

    model, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lines = coco_lines(32)
    text = Dataset.from_dict({"text": lines})
    pc = Dataset.from_dict({"prompt": [" ".join(l.split()[:3]) for l in lines],
                            "completion": [" ".join(l.split()[3:8]) for l in lines]})
    # top_k=1: greedy samples, the same whichever process draws them; per-sequence (psi-MLE without
    # self-normalisation) or per-prompt (GCN on prompt/completion data) weights: batch-decomposable losses.
    common = dict(max_steps=3, per_device_train_batch_size=batch, learning_rate=1e-2, max_completion_length=5,
                  top_k=1, train_sampling_strategy="sequential", save_strategy="no", report_to="none",
                  logging_steps=1, disable_tqdm=True, use_cpu=True)
    runs = [(PsiMLETrainer, PsiMLEConfig(output_dir=out + "/psi", self_normalize=False, **common), text),
            (GCNTrainer, GCNConfig(output_dir=out + "/gcn", num_candidates=2, mle_weight=0.5, **common), pc)]
    for cls, args, data in runs:
        trainer = cls(model, train_dataset=data, args=args)
        trainer.train()
        rank = trainer.accelerator.process_index
        save_file({k: v.detach().clone().contiguous() for k, v in trainer.pair.state_dict().items()},
                  f"{out}/{cls.algorithm}_rank{rank}.safetensors")
        if rank == 0:
            print("WORLD_SIZE", trainer.accelerator.num_processes, cls.algorithm, trainer.state.log_history[0]["loss"])
    """
)


def test_two_process_ddp_matches_one_process(tiny_lm, tmp_path):
    script = tmp_path / "ddp_scorers.py"
    script.write_text(DDP_SCRIPT)
    launch(str(script), [tiny_lm, str(tmp_path / "ddp"), "2"], 2)
    launch(str(script), [tiny_lm, str(tmp_path / "single"), "4"], 1)
    init = AutoModelForCausalLM.from_pretrained(tiny_lm).state_dict()
    for algorithm in ("psi_mle", "gcn"):
        rank0 = load_file(tmp_path / "ddp" / f"{algorithm}_rank0.safetensors")
        rank1 = load_file(tmp_path / "ddp" / f"{algorithm}_rank1.safetensors")
        single = load_file(tmp_path / "single" / f"{algorithm}_rank0.safetensors")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the processes stay in sync
        # same global batch of 4 (2 x 2 vs 1 x 4): equal up to float reduction order
        diff = max(float((rank0[k] - single[k]).abs().max()) for k in rank0)
        print(f"{algorithm}: max |2-process - 1-process| = {diff:.2e}")
        assert diff < 2e-5, (algorithm, diff)
        moved = max(float((rank0["generator." + k] - init[k]).abs().max()) for k in init)
        assert moved > 1e-3, algorithm  # and training really moved the generator


@pytest.mark.parametrize("setting", [{"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}])
def test_gcn_warns_about_distorted_sampling(setting, tiny_lm, coco_text, tmp_path):
    """The weights w = q/q̂ and D's negatives assume samples of p_theta itself, as CoT's objectives do."""
    import warnings

    with pytest.warns(UserWarning, match="GCN with .*: D then learns real vs samples of the distorted sampler .*"
                                         "biases the generator's update"):
        GCNTrainer(tiny_lm, train_dataset=coco_text, args=gcn_args(tmp_path, **setting))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # plain sampling: no such warning
        try:
            GCNTrainer(tiny_lm, train_dataset=coco_text, args=gcn_args(tmp_path))
        except UserWarning as w:
            assert "biases" not in str(w)


# ---------------------------------------------------------------- the step's pieces by hand (mutation survivors)
def test_discriminator_metrics_by_hand(tiny_lm, coco_text, tmp_path):
    """D's logged loss and accuracy for known logits: real rows first; a logit of exactly 0 counts as neither."""
    trainer = GCNTrainer(tiny_lm, train_dataset=coco_text, args=gcn_args(tmp_path))
    trainer.model.train()
    d = torch.tensor([[2.0], [-1.0], [0.5], [-3.0], [0.0]])  # 2 real rows, 3 generated
    empty = torch.zeros(3, 1, dtype=torch.long)
    loss = trainer._discriminator_loss(d, 2, empty, empty, empty)
    real, gen = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0, 0.0])
    expected = -0.5 * (F.logsigmoid(real).mean() + F.logsigmoid(-gen).mean())  # balanced binary cross-entropy
    torch.testing.assert_close(loss, expected)
    metrics = {k: float(v[-1]) for k, v in trainer._metrics["train"].items()}
    assert metrics["companion/accuracy"] == pytest.approx(0.5 * (1 / 2 + 1 / 3))
    assert metrics["companion/d_real"] == pytest.approx(float(torch.sigmoid(real).mean()))
    assert metrics["companion/d_generated"] == pytest.approx(float(torch.sigmoid(gen).mean()))


@pytest.mark.parametrize("mle_weight", [0.0, 0.3])
def test_generator_loss_with_the_mle_term_by_hand(mle_weight, tiny_lm, coco_text, tmp_path):
    """(1 - λ) · self-normalised D-weighted NLL of q̂'s samples + λ · mean NLL of the real rows (per sequence)."""
    trainer = GCNTrainer(tiny_lm, train_dataset=coco_text, args=gcn_args(tmp_path, mle_weight=mle_weight))
    trainer.model.train()
    logprobs = -torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.0], [0.25, 0.25, 0.5], [1.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    d = torch.tensor([1.0, -1.0, 0.5])  # D's logits of the 3 sampled rows; rows 3 and 4 are real
    loss = trainer._generator_loss(logprobs, 3, d, torch.zeros(3, dtype=torch.long))
    w = torch.sigmoid(d)  # weighting 'd' (default), sampler 'model': w = D, self-normalised over the text batch
    w = w / w.sum()
    nll = torch.tensor([1.5, 2.0, 1.0])
    expected = (1 - mle_weight) * (w * nll).sum() + mle_weight * (4.0 + 4.0) / 2
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    assert ("generator/mle_nll" in trainer._metrics["train"]) == (mle_weight > 0)


def test_mcts_sampler_passes_its_settings_and_logs_lengths(tiny_lm, coco_prompt_completion, tmp_path, monkeypatch):
    import hfcoop.trainers.gcn as gcn_module

    seen = []
    real = gcn_module.mcts_decode
    monkeypatch.setattr(gcn_module, "mcts_decode", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    args = gcn_args(tmp_path, sampler="mcts", num_simulations=6, mcts_top_k=3, top_k=7, top_p=0.9, c_puct=2.0,
                    mcts_visit_temperature=0.5, max_steps=2)  # fmt: skip
    with pytest.warns(UserWarning, match="top_k=7, top_p=0.9"):
        trainer = GCNTrainer(tiny_lm, train_dataset=coco_prompt_completion, args=args)
    trainer.train()
    (kw,) = seen  # step 1 trains D on plain samples, step 2 the generator on MCTS samples
    assert (kw["num_simulations"], kw["top_k"], kw["filter_top_k"], kw["top_p"], kw["c_puct"]) == (6, 3, 7, 0.9, 2.0)
    assert (kw["max_new_tokens"], kw["visit_temperature"]) == (6, 0.5)
    assert any("samples/mcts_completion_length" in h for h in trainer.state.log_history)
    with pytest.raises(ValueError, match="num_simulations"):
        gcn_args(tmp_path, sampler="mcts", num_simulations=2, mcts_top_k=4)  # fewer simulations than children
    gcn_args(tmp_path, sampler="model", num_simulations=2, mcts_top_k=4)  # only the MCTS sampler searches
