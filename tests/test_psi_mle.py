"""ψ-MLE: Table 4's Bregman objectives, Eq. 18/19 weights, the ratio estimator on an enumerable toy, the scorer
companion, and PsiMLETrainer end to end (save, resume, bad input)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from helpers import assert_resume_is_bit_identical
from hfcoop import PsiMLEConfig, PsiMLETrainer
from hfcoop.losses import (
    BREGMAN_FUNCTIONS,
    bregman_f,
    density_ratio_loss,
    importance_weights,
    mixture_to_data_log_ratio,
    weighted_nll_loss,
)
from hfcoop.scorers import ScorerInputs, load_scorer
from hfcoop.tiny import build_tiny_model
from hfcoop.trainers.psi_mle import check_finite_log_ratios, psi_mle_ratio_loss


def psi_args(tmp_path, **kw) -> PsiMLEConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
        max_completion_length=8, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    base.update(kw)
    return PsiMLEConfig(**base)


def f_prime(t: torch.Tensor, name: str) -> torch.Tensor:
    t = t.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(bregman_f(t, name).sum(), t)
    return g


# ---------------------------------------------------------------- Table 4 / Eq. 11
def table4(name: str, r_den: torch.Tensor, r_num: torch.Tensor) -> torch.Tensor:
    """Table 4's objectives written out as printed (the logistic row with the sign of its first term fixed)."""
    if name == "squared":
        return 0.5 * (r_den**2 - 1).mean() - (r_num - 1).mean()
    if name == "logistic":
        return torch.log(r_den + 1).mean() - torch.log(r_num / (r_num + 1)).mean()
    return (torch.sigmoid(r_den) * r_den - torch.log1p(torch.exp(r_den))).mean() - torch.sigmoid(r_num).mean()


@pytest.mark.parametrize("name", BREGMAN_FUNCTIONS)
def test_bregman_objectives_match_table4_and_eq16(name):
    g = torch.Generator().manual_seed(0)
    s_num, s_den = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    r_num, r_den = s_num.exp(), s_den.exp()
    loss = density_ratio_loss(s_num.double(), s_den.double(), name).double()
    # Eq. 16 with f' by autograd: E_den[f'(r) r - f(r)] - E_num[f'(r)]
    generic = (f_prime(r_den, name) * r_den - bregman_f(r_den, name)).mean() - f_prime(r_num, name).mean()
    assert torch.allclose(loss, generic.double(), atol=1e-5)
    assert torch.allclose(loss, table4(name, r_den, r_num).double(), atol=1e-5)


def test_table4_logistic_row_as_printed_is_unbounded():
    """Table 4 prints E_mix[-log(r+1)] - E_data[log(r/(r+1))]; that decreases without bound as r grows, so the
    implemented sign (+log(r+1), from f'(t)t - f(t)) is the consistent one."""
    printed = lambda s: -F.softplus(s).mean() - (s - F.softplus(s)).mean()  # noqa: E731
    s = torch.zeros(4)
    assert printed(s + 50) < printed(s + 10) < printed(s)
    assert density_ratio_loss(s + 50, s + 50) > density_ratio_loss(s, s)


@pytest.mark.parametrize("name", BREGMAN_FUNCTIONS)
def test_eq11_is_the_bregman_divergence_to_the_true_ratio(name):
    """loss(r) + E_q[f(r*)] = E_q[BR'_f(r* || r)] (Eq. 10-11): >= 0, and 0 exactly at r = r* = p/q."""
    g = torch.Generator().manual_seed(1)
    p = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    p, q = p / p.sum(), q / q.sum()
    r_star = p / q
    const = (q * bregman_f(r_star, name)).sum()
    for s in (torch.randn(9, generator=g, dtype=torch.float64), r_star.log()):
        r = s.exp()
        br = bregman_f(r_star, name) - bregman_f(r, name) - f_prime(r, name) * (r_star - r)
        lhs = density_ratio_loss(s, s, name, num_weights=p, den_weights=q).double() + const
        assert torch.allclose(lhs, (q * br).sum(), atol=1e-6)
    assert abs(float(density_ratio_loss(r_star.log(), r_star.log(), name, p, q) + const)) < 1e-6


@pytest.mark.parametrize("name", BREGMAN_FUNCTIONS)
def test_exact_minimiser_is_the_density_ratio(name):
    """Full-expectation minimisation over a free log-ratio per point converges to log(p/q) (|error| < 1e-3:
    the objective is strictly convex in r with a unique minimum, so only optimiser tolerance is left)."""
    g = torch.Generator().manual_seed(2)
    p, q = torch.rand(9, generator=g, dtype=torch.float64) + 0.2, torch.rand(9, generator=g, dtype=torch.float64) + 0.2
    p, q = p / p.sum(), q / q.sum()
    s = torch.zeros(9, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([s], lr=0.5, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = density_ratio_loss(s, s, name, num_weights=p, den_weights=q)
        loss.backward()
        return loss

    opt.step(closure)
    assert (s.detach() - (p / q).log()).abs().max() < 1e-3


# ---------------------------------------------------------------- Eq. 18 / 19 and the Eq. 8 identity
def test_self_normalization_and_flattening():
    log_r = torch.tensor([0.0, math.log(4.0), math.log(0.25), math.log(2.0)])
    r = log_r.exp()
    w = importance_weights(log_r)  # Eq. 18: r_i / sum_j r_j
    assert torch.allclose(w, r / r.sum()) and torch.allclose(w.sum(), torch.tensor(1.0))
    assert torch.allclose(importance_weights(log_r + 123.0), w)  # invariant to the ratio's scale; no overflow
    assert torch.isfinite(importance_weights(torch.tensor([1000.0, 0.0]))).all()
    assert torch.allclose(importance_weights(log_r, alpha=0.0), torch.full((4,), 0.25))  # α = 0: uniform
    half = importance_weights(log_r, alpha=0.5)  # Eq. 19: r^α
    assert torch.allclose(half, r.sqrt() / r.sqrt().sum())
    raw = importance_weights(log_r, alpha=0.5, self_normalize=False)  # unnormalised c_i r_i^α with c_i = 1/N
    assert torch.allclose(raw, r.sqrt() / 4)
    c = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.allclose(importance_weights(log_r, c), c * r / (c * r).sum())
    groups = torch.tensor([0, 0, 1, 1])
    gw = importance_weights(log_r, groups=groups)  # each group normalised, mass 1/2 each
    assert torch.allclose(gw[:2], r[:2] / r[:2].sum() / 2) and torch.allclose(gw[2:], r[2:] / r[2:].sum() / 2)


def test_mixture_weights_recover_the_data_expectation():
    """Eq. 8: E_mix[(p_data/p_mix) log p_theta] = E_data[log p_theta], with the mixture taken as m/(1-m)-weighted
    real and generated samples and weights from either ratio target (the "model" one converted exactly)."""
    g = torch.Generator().manual_seed(3)
    p_data, p_model = torch.rand(9, generator=g, dtype=torch.float64), torch.rand(9, generator=g, dtype=torch.float64)
    p_data, p_model = p_data / p_data.sum(), p_model / p_model.sum()
    log_p_theta = torch.randn(9, generator=g, dtype=torch.float64)
    m = 0.3
    p_mix = m * p_data + (1 - m) * p_model
    expected = -(p_data * log_p_theta).sum()
    from_mixture = (p_data / p_mix).log()
    from_model = mixture_to_data_log_ratio((p_data / p_model).log(), m)
    assert torch.allclose(from_mixture, from_model)
    # the batch = every sequence once as "real" (weight m p_data) and once as "generated" (weight (1-m) p_model)
    log_w = torch.cat([from_mixture, from_mixture])
    c = torch.cat([m * p_data, (1 - m) * p_model])
    for self_normalize in (False, True):  # exact weights already sum to 1 here, so both agree
        w = importance_weights(log_w, c, self_normalize=self_normalize).double()
        assert torch.allclose(weighted_nll_loss(torch.cat([log_p_theta, log_p_theta]), w).double(), expected)


def test_ratio_loss_against_the_mixture_by_hand_at_m_03():
    """Eq. 11 / Table 4 (logistic) with p_den = p_mix = m p_data + (1 - m) p_theta, m = 0.3: the denominator's
    expectation weighs the real rows' mean by m and the generated rows' by 1 - m (written out by hand)."""
    real, gen = torch.tensor([0.2, -0.4]), torch.tensor([0.1, 0.7, -0.3])
    r_real, r_gen = real.exp(), gen.exp()
    den = 0.3 * torch.log1p(r_real).mean() + 0.7 * torch.log1p(r_gen).mean()
    expected = den - torch.log(r_real / (r_real + 1)).mean()
    loss = psi_mle_ratio_loss(real, gen, "logistic", "mixture", 0.3)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    swapped = 0.7 * torch.log1p(r_real).mean() + 0.3 * torch.log1p(r_gen).mean() - torch.log(r_real / (r_real + 1)).mean()
    assert abs(expected.item() - swapped.item()) > 1e-2  # the test sees an m / 1 - m swap
    model = psi_mle_ratio_loss(real, gen, "logistic", "model", 0.3)  # Alg. 1 line 8: p_den = p_theta, m unused
    assert model.item() == pytest.approx((torch.log1p(r_gen).mean() - torch.log(r_real / (r_real + 1)).mean()).item(),
                                         abs=1e-6)  # fmt: skip


@pytest.mark.parametrize("target", ["mixture", "model"])
def test_generator_weights_at_m_03_by_hand(target, tiny_lm, coco_text, tmp_path, monkeypatch):
    """The generator's step weighs its real rows by m and its samples by 1 - m (m = 0.3), times p_data/p_mix from
    the ratio model (converted from p_data/p_theta for target 'model'), self-normalised: every weight by hand."""
    import hfcoop.trainers.psi_mle as psi_module

    trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=psi_args(tmp_path, mixture_weight=0.3,
                                                                             ratio_target=target))  # fmt: skip
    torch.manual_seed(0)
    torch.nn.init.normal_(trainer.pair.companion.score.weight, std=0.5)  # log r varies across rows
    seen = []
    real = psi_module.importance_weights
    monkeypatch.setattr(psi_module, "importance_weights", lambda *a, **k: (seen.append(a), real(*a, **k))[1])
    scores = []
    signal = trainer.companion_signal
    trainer.companion_signal = lambda *a: (scores.append(signal(*a)), scores[-1])[1]
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.state.global_step = 1  # a generator step
    trainer.model.train()
    trainer.cooperative_step(trainer.model, batch)
    (log_w, c, alpha, self_normalize), = seen
    n = batch["completion_input_ids"].shape[0]
    assert torch.equal(c, torch.tensor([0.3 / n] * n + [0.7 / n] * n))
    log_r = scores[0].squeeze(-1).float().double()
    r = log_r.exp()
    ratio = r if target == "mixture" else r / (0.3 * r + 0.7)  # p_data/p_mix = r / (m r + 1 - m) for p_data/p_theta
    expected = c.double() * ratio / (c.double() * ratio).sum()
    weights = real(log_w, c, alpha, self_normalize).double()
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the estimator on an enumerable toy
VOCAB = ("a", "b", "c")
SEQS = list(itertools.product(VOCAB, repeat=2))  # 9 sequences of length 2
P_DATA = torch.tensor([0.30, 0.02, 0.08, 0.05, 0.25, 0.02, 0.08, 0.05, 0.15])
P_MODEL = torch.tensor([0.05, 0.20, 0.05, 0.15, 0.05, 0.20, 0.05, 0.20, 0.05])


def implied_data(log_r: torch.Tensor, target: str, m: float) -> torch.Tensor:
    """The data distribution an estimated ratio implies: r · p_den, normalised."""
    den = m * P_DATA + (1 - m) * P_MODEL if target == "mixture" else P_MODEL
    x = log_r.exp() * den
    return x / x.sum()


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def train_estimator(score_all, params, target, bregman, m=0.5, steps=600, batch=256, lr=0.05, seed=0):
    """Adam on minibatches drawn from the enumerated p_data and p_theta, through the trainer's loss."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)  # decaying lr: averages the noise out
    for _ in range(steps):
        real = torch.multinomial(P_DATA, batch, replacement=True, generator=g)
        gen = torch.multinomial(P_MODEL, batch, replacement=True, generator=g)
        s = score_all()
        loss = psi_mle_ratio_loss(s[real], s[gen], bregman, target, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return score_all().detach()


@pytest.mark.parametrize("bregman", BREGMAN_FUNCTIONS)
@pytest.mark.parametrize("target, m", [("mixture", 0.5), ("model", 0.5), ("mixture", 0.2)])
def test_ratio_estimator_approaches_its_target(target, m, bregman):
    """A free log-ratio per sequence trained by minibatch SGD converges to its target ratio.

    Threshold: the implied p_data (r̂ · p_den, normalised) must be within TV 0.04 of p_data. Each step sees
    256 + 256 samples and the learning rate decays to 0, so the estimate averages several thousand samples per
    class; the plug-in (frequency-count) estimate of p_data from 2000 samples has an expected TV of ~0.02
    here, so 0.04 allows the estimator twice that noise. The two targets differ by TV 0.27 (mixture ratio read
    as a model ratio and vice versa), so converging to the wrong target fails by far. At m = 0.2 the real rows'
    share of the mixture is 0.2, not 0.8: the ratio with m and 1 - m swapped implies a p_data 0.29 away.
    """
    s = torch.zeros(9, requires_grad=True)
    log_r = train_estimator(lambda: s, [s], target, bregman, m=m)
    assert tv(implied_data(log_r, target, m), P_DATA) < 0.04
    if m == 0.5:
        other = "model" if target == "mixture" else "mixture"
        assert tv(implied_data(log_r, other, m), P_DATA) > 0.15
    else:  # the ratio of m and 1 - m swapped is far from this one
        swapped = (P_DATA / (m * P_MODEL + (1 - m) * P_DATA)).log()
        assert tv(implied_data(swapped, target, m), P_DATA) > 0.25  # so a swapped estimator fails the 0.04 above


# ---------------------------------------------------------------- the scorer companion
def test_default_scorer_is_built_from_the_generator(tiny_lm):
    gen = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    scorer, scorer_tok = load_scorer(None, gen, tok, name="ratio model")
    assert scorer_tok is tok and scorer.config.num_labels == 1
    g, s = gen.transformer.state_dict(), scorer.transformer.state_dict()
    assert all(torch.equal(g[k], s[k]) for k in g)
    assert torch.count_nonzero(scorer.score.weight) == 0  # r ≡ 1 / D ≡ 1/2 at the start


def test_scorer_with_another_tokenizer_retokenises(tiny_lm, tmp_path):
    """Generator ids are decoded and re-tokenised as data.tokenize_row would tokenise the text."""
    gen_tok = AutoTokenizer.from_pretrained(tiny_lm)
    other = build_tiny_model(str(tmp_path / "other"), ["a man riding a horse", "the cat"], vocab_size=50, n_layer=1,
                             n_embd=16, n_head=2, n_positions=32)  # fmt: skip
    gen = AutoModelForCausalLM.from_pretrained(tiny_lm)
    scorer, scorer_tok = load_scorer(other, gen, gen_tok, name="ratio model")
    assert isinstance(scorer, GPT2ForSequenceClassification) and len(scorer_tok) != len(gen_tok)
    prompt = gen_tok(["a man", "the"], add_special_tokens=False)["input_ids"]
    completion = [gen_tok("riding a horse", add_special_tokens=False)["input_ids"] + [gen_tok.eos_token_id],
                  gen_tok("cat", add_special_tokens=False)["input_ids"]]  # fmt: skip
    from hfcoop.data import pad_left, pad_right

    p_ids, p_mask = pad_left(prompt, gen_tok.pad_token_id)
    c_ids, c_mask = pad_right(completion, gen_tok.pad_token_id)
    built = ScorerInputs(gen_tok, scorer_tok)(p_ids, p_mask, c_ids, c_mask)
    words = lambda text: scorer_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    expected = [scorer_tok("a man")["input_ids"] + words("riding a horse") + [scorer_tok.eos_token_id],
                scorer_tok("the")["input_ids"] + words("cat")]  # fmt: skip
    got = [row[m.bool()].tolist() for row, m in zip(built["input_ids"], built["attention_mask"])]
    assert got == expected
    # same tokenizer: prompt + completion packed contiguously, right-padded
    same = ScorerInputs(gen_tok, gen_tok)(p_ids, p_mask, c_ids, c_mask)
    got = [row[m.bool()].tolist() for row, m in zip(same["input_ids"], same["attention_mask"])]
    assert got == [p + c for p, c in zip(prompt, completion)]
    assert same["attention_mask"][:, 0].all()  # right padding: every row starts with a real token


# ---------------------------------------------------------------- the trainer end to end
def test_trainer_end_to_end_logs_saves_and_exports(tiny_lm, coco_text, tmp_path):
    args = psi_args(tmp_path, save_companion=True, flatten_alpha=0.5, ratio_learning_rate=5e-3)
    trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, eval_dataset=coco_text.select(range(16)), args=args)
    before = {k: v.clone() for k, v in trainer.pair.companion.state_dict().items()}
    trainer.train()
    # The papers' order: steps 1 and 3 train the ratio model, step 2 the generator (with the updated r).
    logs = [e for e in trainer.state.log_history if "companion/loss" in e]
    gen_logs = [e for e in trainer.state.log_history if "generator/loss" in e]
    assert [e["step"] for e in logs] == [1, 3] and [e["step"] for e in gen_logs] == [2]
    for key in ("companion/ratio_mean_real", "companion/ratio_mean_generated", "companion/ratio_max"):
        assert all(math.isfinite(e[key]) for e in logs), key
    for key in ("generator/weight_share_max", "generator/ess", "generator/loss"):
        assert math.isfinite(gen_logs[0][key]), key
    assert 0 < gen_logs[0]["generator/ess"] <= 1 + 1e-6
    # the logistic objective starts at 2·log 2 (r ≡ 1: zero head), and the ratio model learns
    assert abs(logs[0]["companion/loss"] - 2 * math.log(2)) < 1e-4
    after = trainer.pair.companion.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert {g["initial_lr"] for g in trainer.optimizer.param_groups} == {1e-3, 5e-3}  # the ratio model's own lr
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    out = tmp_path / "export"
    trainer.save_model(str(out))
    AutoModelForCausalLM.from_pretrained(str(out))  # a standard generator
    ratio = AutoModelForSequenceClassification.from_pretrained(str(out / "ratio_model"))
    assert ratio.config.num_labels == 1 and (out / "ratio_model" / "tokenizer.json").exists()
    assert "ψ-MLE" in (out / "README.md").read_text()


def test_trainer_with_another_tokenizer_and_model_target(tiny_lm, coco_prompt_completion, tmp_path):
    texts = [r["prompt"] + " " + r["completion"] for r in coco_prompt_completion]
    other = build_tiny_model(str(tmp_path / "other"), texts, vocab_size=300, n_layer=1, n_embd=16, n_head=2,
                             n_positions=64)  # fmt: skip
    args = psi_args(tmp_path, max_steps=2, ratio_target="model", bregman_f="softplus", mixture_weight=0.25)
    trainer = PsiMLETrainer(tiny_lm, ratio_model=other, train_dataset=coco_prompt_completion, args=args)
    assert not trainer.scorer_inputs.same_tokenizer
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


def test_resume_is_bit_identical(tiny_lm, coco_text, tmp_path):
    def run(out, resume=None, callbacks=None):
        args = psi_args(tmp_path, output_dir=str(tmp_path / out), max_steps=4, learning_rate=1e-2,
                        save_strategy="steps" if out == "cut" else "no", save_steps=2)  # fmt: skip
        trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=args, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.pair

    assert_resume_is_bit_identical(run, tmp_path, tiny_lm)


# ---------------------------------------------------------------- bad input
def test_config_rejects_bad_values(tmp_path):
    for kw, match in (({"mixture_weight": 1.5}, "mixture_weight"), ({"bregman_f": "kl"}, "bregman_f"),
                      ({"ratio_target": "data"}, "ratio_target"),
                      ({"flatten_alpha": -1.0}, "flatten_alpha")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            psi_args(tmp_path, **kw)


def test_ratio_model_needs_a_single_logit_head(tiny_lm, coco_text, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    two = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, num_labels=2,
                                                   bos_token_id=0, eos_token_id=0))  # fmt: skip
    with pytest.raises(ValueError, match="single-logit head"):
        PsiMLETrainer(tiny_lm, ratio_model=two, train_dataset=coco_text, args=psi_args(tmp_path))
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    with pytest.raises(ValueError, match="not a sequence classifier"):
        PsiMLETrainer(tiny_lm, ratio_model=lm, train_dataset=coco_text, args=psi_args(tmp_path))
    saved = tmp_path / "two"
    two.save_pretrained(saved)
    tok.save_pretrained(saved)
    with pytest.raises(ValueError, match="single-logit head"):
        PsiMLETrainer(tiny_lm, ratio_model=str(saved), train_dataset=coco_text, args=psi_args(tmp_path))


def test_mismatched_lengths_are_clear_errors(tiny_lm, coco_text, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    short = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2,
                                                     n_positions=4, num_labels=1, bos_token_id=0,
                                                     eos_token_id=0))  # fmt: skip
    with pytest.raises(ValueError, match="max_completion_length"):
        PsiMLETrainer(tiny_lm, ratio_model=short, train_dataset=coco_text, args=psi_args(tmp_path))
    with pytest.raises(ValueError, match="one weight per sequence"):
        weighted_nll_loss(torch.zeros(4), torch.ones(3))
    with pytest.raises(ValueError, match="weights of shape"):
        density_ratio_loss(torch.zeros(4), torch.zeros(4), den_weights=torch.ones(3))
    with pytest.raises(ValueError, match="one row per sequence"):
        ScorerInputs(tok, tok)(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long),
                               torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long))  # fmt: skip


def test_non_finite_ratios_are_clear_errors(tiny_lm, coco_text, tmp_path):
    with pytest.raises(FloatingPointError, match="the ratio model produced 1 non-finite log-ratios"):
        check_finite_log_ratios(torch.tensor([0.0, float("nan")]))
    trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=psi_args(tmp_path))
    with torch.no_grad():
        trainer.pair.companion.score.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="ratio_learning_rate"):
        trainer.train()


@pytest.mark.parametrize("target", ["mixture", "model"])
def test_companion_step_passes_its_settings_to_the_ratio_loss(target, tiny_lm, coco_text, tmp_path, monkeypatch):
    """The ratio model's step: real rows then as many samples, scored once, Eq. 11 with the configured Bregman
    function, target and m; the logged loss is the one returned."""
    import hfcoop.trainers.psi_mle as psi_module

    args = psi_args(tmp_path, mixture_weight=0.3, ratio_target=target, bregman_f="softplus")
    trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=args)
    seen = []
    real = psi_module.psi_mle_ratio_loss
    monkeypatch.setattr(psi_module, "psi_mle_ratio_loss", lambda *a: (seen.append(a), real(*a))[1])
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.state.global_step = 0  # a companion step
    trainer.model.train()
    trainer.cooperative_step(trainer.model, batch)
    (log_real, log_gen, bregman, got_target, m), = seen
    n = batch["completion_input_ids"].shape[0]
    assert (log_real.shape[0], log_gen.shape[0], bregman, got_target, m) == (n, n, "softplus", target, 0.3)
    logged = float(trainer._metrics["train"]["companion/loss"][-1])
    assert logged == pytest.approx(float(real(log_real, log_gen, "softplus", target, 0.3)), rel=1e-6)


def test_overflowing_ratios_are_a_clear_error(tiny_lm, coco_text, tmp_path):
    """Finite log-ratios whose exp overflows (the 'squared' Bregman function needs r itself) are named as such."""
    trainer = PsiMLETrainer(tiny_lm, train_dataset=coco_text, args=psi_args(tmp_path, bregman_f="squared"))
    # log r = 200 on every row: finite, but exp(200) = inf in float32
    trainer.pair.companion.score.register_forward_hook(lambda module, inputs, out: torch.full_like(out, 200.0))
    with pytest.raises(FloatingPointError, match=r"exp\(log-ratio\)"):
        trainer.train()
