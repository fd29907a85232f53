"""GENERE (black-box Algorithm 2): mixture learning, λ = 0 == MLE, generator validation, exact resume."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
import random

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hfcoop import GenereConfig, GenereTrainer, MLEConfig, MLETrainer
from hfcoop.tasks.text_to_equation import (
    EQUATION_GENERATORS,
    MATCHING_GENERATOR,
    build_equation_model,
    compute_words,
    equation_dataset,
    run_text_to_equation,
)
from hfcoop.losses import genere_gamma_scores, genere_gamma_update, genere_mixture_proportions

RECIPE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "configs", "genere_text_to_equation.yaml")


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model runs 2-4x faster on one thread than on two busy shared cores (measured); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def equation_lm(tmp_path_factory) -> str:
    """Tiny GPT-2 (2 layers x 64) whose word-level tokenizer covers every generator's vocabulary."""
    return build_equation_model(str(tmp_path_factory.mktemp("equation_lm")))


def config(out, cls=GenereConfig, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2, max_prompt_length=32,
        max_completion_length=16, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    return cls(**{**base, **kw})


# ----------------------------------------------------------------------------------------------- pure functions
def test_gamma_update_moves_toward_generators_above_the_baseline():
    """The sign of Alg. 2 line 8 as Sec. 3.2/3.5 intend: γ moves toward Δ when log p > µ, away when below."""
    delta = torch.tensor([[1.5, -0.5, 0.0], [0.0, 2.0, -1.0]], dtype=torch.float64)
    logprobs = torch.tensor([-2.0, -9.0])  # row 0 (pushed toward generator 0) beats µ; row 1 does not
    scores = genere_gamma_scores(logprobs, -5.0, delta, perturbation_std=2.0)
    torch.testing.assert_close(scores, torch.tensor([[3.0], [-4.0]], dtype=torch.float64) * delta / 4.0)
    gamma = genere_gamma_update(torch.zeros(3, dtype=torch.float64), scores.sum(0), 2, learning_rate=0.1)
    assert gamma[0] > 0 > gamma[1]  # toward what row 0 was drawn with, away from what row 1 was drawn with
    torch.testing.assert_close(gamma, 0.1 * scores.mean(0))


def test_mixture_proportions_estimator():
    pi = genere_mixture_proportions(torch.zeros(5, dtype=torch.float64))
    assert torch.equal(pi, torch.full((5,), 0.2, dtype=torch.float64))  # symmetrised draws: exactly uniform
    gamma = torch.tensor([2.0, 0.5, 0.0, -1.0], dtype=torch.float64)
    pi = genere_mixture_proportions(gamma, 1.0, 4096)
    torch.manual_seed(0)
    reference = torch.softmax(gamma + torch.randn(400_000, 4, dtype=torch.float64), -1).mean(0)
    torch.testing.assert_close(pi, reference, atol=0.01, rtol=0)
    assert math.isclose(float(pi.sum()), 1.0)
    assert torch.equal(pi, genere_mixture_proportions(gamma, 1.0, 4096))  # deterministic (fixed draws)
    # the perturbation flattens the mixture: E[softmax(γ+Δ)] is less peaked than softmax(γ)
    assert pi[0] < torch.softmax(gamma, -1)[0]


# ----------------------------------------------------------------------------------- the paper's experiment
def test_learns_the_matching_generator(equation_lm, tmp_path):
    """Sec. 3.2: one of K = 5 base generators made the real data; GENERE must find it (π ≥ 0.7).

    Settings (see recipes/genere/README.md for the seed sweep): σ = 1 and α = 0.98 as in the paper; λ = 1 so half
    of every batch is generated (enough generated rows per step, 16 of 32, to average the REINFORCE noise); 50 warm-up
    steps of MLE (the paper initialises with 200) so that log pθ reflects the real data before γ moves; η_γ = 0.03:
    the first γ steps see advantages of ±20 nats, and a larger η_γ lets their noise decide between the matching
    generator and the compatible "word order" distractor before the likelihood gap does (η_γ = 0.05 failed on 1 of
    20 seeds, 0.1 on 1 of 8); 300 steps leave about 3x the steps π needs to pass 0.9.
    """
    args = config(
        tmp_path, max_steps=300, per_device_train_batch_size=32, learning_rate=3e-3, lr_scheduler_type="constant",
        generative_weight=1.0, mixture_learning_rate=0.03, perturbation_std=1.0, baseline_smoothing=0.98,
        mle_warmup_steps=50, logging_steps=50, likelihood_normalization="sum", mixture_shrinkage=1.0,
    )  # fmt: skip
    trainer = GenereTrainer(
        equation_lm, EQUATION_GENERATORS, args=args, train_dataset=equation_dataset(256, seed=1000),
        eval_dataset=equation_dataset(64, seed=1001),
    )  # fmt: skip
    trainer.train()
    pi = trainer.mixture_proportions
    print("learned proportions:", dict(zip(trainer.generator_names, [round(p, 3) for p in pi])))
    assert len(pi) == len(EQUATION_GENERATORS) and math.isclose(sum(pi), 1.0)
    assert pi[MATCHING_GENERATOR] >= 0.7
    # π is logged every optimizer step (averaged over each logging window) ...
    logged = [h for h in trainer.state.log_history if "companion/pi_0" in h]
    assert len(logged) == 6 and all(f"companion/pi_{k}" in logged[-1] for k in range(len(pi)))
    assert logged[0]["companion/pi_0"] == pytest.approx(0.2)  # warm-up: γ untouched
    # ... and saved beside the exported generator.
    trainer.save_model(str(tmp_path / "export"))
    with open(tmp_path / "export" / "genere_mixture.json") as f:
        saved = json.load(f)
    assert saved["mixture_proportions"] == pi and saved["generators"][MATCHING_GENERATOR] == "compute_words"
    assert saved["mixture_logits"] == trainer.mixture_logits and saved["baseline"] == trainer.baseline != 0.0
    assert saved["global_step"] == trainer.state.global_step == 300
    assert os.path.isfile(tmp_path / "export" / "model.safetensors")


# ------------------------------------------------------------------------------------------------ λ = 0 is MLE
def test_lambda_zero_is_exactly_mle(equation_lm, tmp_path):
    calls = []

    def counted(rng):
        calls.append(1)
        return compute_words(rng)

    data = equation_dataset(24, seed=5)
    common = dict(max_steps=6, gradient_accumulation_steps=2, seed=3)
    mle = MLETrainer(equation_lm, args=config(tmp_path / "mle", MLEConfig, **common), train_dataset=data)
    mle.train()
    args = config(tmp_path / "genere", generative_weight=0.0, **common)
    genere = GenereTrainer(equation_lm, [counted, *EQUATION_GENERATORS[1:]], args=args, train_dataset=data)
    genere.train()
    assert len(calls) == 1  # the validation call at construction only: no row was ever generated
    a, b = mle.pair.generator.state_dict(), genere.pair.generator.state_dict()
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"weights differ from MLE: {changed[:3]}"
    assert genere.mixture_logits == [0.0] * 5 and genere.baseline is None


# ------------------------------------------------------------------------------------------ generator validation
def raises_value_error(rng):
    raise ValueError("template file not found")


def wrong_keys(rng):
    return {"question": "compute one plus one", "answer": "X = 1 + 1"}


def non_string(rng):
    return {"prompt": "compute one plus one", "completion": 2}


def not_a_dict(rng):
    return ("compute one plus one", "X = 1 + 1")


def text_row(rng):
    return {"text": "compute one plus one X = 1 + 1"}


@pytest.mark.parametrize(
    "bad, error, detail",
    [
        (raises_value_error, RuntimeError, "raised ValueError: template file not found"),
        (wrong_keys, ValueError, "missing \\['prompt', 'completion'\\]"),
        (non_string, ValueError, "non-string 'completion' \\(int\\)"),
        (not_a_dict, ValueError, "returned a tuple"),
        (text_row, ValueError, "'prompt_completion' format"),
    ],
)
def test_bad_generator_is_named_before_any_compute(bad, error, detail, tmp_path):
    # The model path does not exist: the generator check must fire before anything is loaded.
    with pytest.raises(error, match=rf"generators\[1\] \({bad.__name__}\).*{detail}"):
        GenereTrainer(
            str(tmp_path / "no-such-model"), [compute_words, bad], args=config(tmp_path),
            train_dataset=equation_dataset(8, seed=0),
        )  # fmt: skip


def test_generator_failing_during_training_is_named(equation_lm, tmp_path):
    calls = []

    def flaky(rng):
        calls.append(1)
        if len(calls) > 1:  # passes the validation call, fails the first time training needs it
            return {"prompt": "compute one", "completion": None}
        return compute_words(rng)

    trainer = GenereTrainer(
        equation_lm, [flaky], args=config(tmp_path, max_steps=2, generative_weight=math.inf),
        train_dataset=equation_dataset(8, seed=0),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"generators\[0\] \(flaky\) returned a non-string 'completion'"):
        trainer.train()


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="generative_weight"):
        config(tmp_path, generative_weight=-1.0)
    with pytest.raises(ValueError, match="baseline_smoothing"):
        config(tmp_path, baseline_smoothing=1.0)
    assert config(tmp_path, baseline_smoothing=0.0).baseline_smoothing == 0.0  # µ = the last reward: allowed
    with pytest.raises(ValueError, match=r"mixture_shrinkage must be in \(0, 1\], got 0.0"):
        config(tmp_path, mixture_shrinkage=0.0)  # 0 would freeze γ
    with pytest.raises(ValueError, match="likelihood_normalization must be one of .*, got 'mean'"):
        config(tmp_path, likelihood_normalization="mean")
    with pytest.raises(ValueError, match=r"^GENERE needs at least one generator\.$"):
        GenereTrainer("unused", [], args=config(tmp_path), train_dataset=equation_dataset(4, seed=0))
    with pytest.raises(TypeError, match="list of callables"):
        GenereTrainer("unused", compute_words, args=config(tmp_path), train_dataset=equation_dataset(4, seed=0))


# ------------------------------------------------------------------------------------------------ exact resume
def test_resume_restores_gamma_and_baseline_exactly(equation_lm, tmp_path):
    """7 optimizer steps (2 warm-up) with gradient accumulation 2, checkpoints every 3; resume from step 3."""
    data = equation_dataset(40, seed=7)  # 10 micro-batches per epoch: the resume lands mid-epoch

    def make(out):
        args = config(
            out, max_steps=7, save_strategy="steps", save_steps=3, gradient_accumulation_steps=2, generative_weight=1.0,
            mixture_learning_rate=0.05, mle_warmup_steps=2,
        )  # fmt: skip
        return GenereTrainer(equation_lm, EQUATION_GENERATORS, args=args, train_dataset=data)

    full = make(tmp_path / "full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    state = load_file(str(checkpoint / "genere_state" / "mixture.safetensors"))
    assert os.path.isfile(checkpoint / "genere_state" / "rng_process_0.json")
    assert os.path.isfile(checkpoint / "genere_mixture.json")
    assert not torch.equal(state["mixture_logits"], torch.tensor(full.mixture_logits, dtype=torch.float64))

    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 7
    assert resumed.mixture_logits == full.mixture_logits  # bit-identical floats
    assert resumed.baseline == full.baseline and full.baseline is not None
    assert resumed._rng.getstate() == full._rng.getstate()
    a, b = full.pair.generator.state_dict(), resumed.pair.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ the recipe
def test_recipe_runs_end_to_end(tmp_path):
    result = run_text_to_equation(
        RECIPE, tiny_model_dir=str(tmp_path / "tiny"), output_dir=str(tmp_path / "run"), max_steps=4,
        mle_warmup_steps=2, per_device_train_batch_size=8, num_real_examples=16, num_eval_examples=8, eval_steps=2,
        save_steps=2, logging_steps=2,
    )  # fmt: skip
    assert set(result["mixture_proportions"]) == {g.__name__ for g in EQUATION_GENERATORS}
    assert math.isfinite(result["eval_loss"])
    assert os.path.isfile(tmp_path / "run" / "genere_mixture.json")
    assert os.path.isfile(tmp_path / "run" / "checkpoint-4" / "genere_state" / "mixture.safetensors")


def test_generators_are_seeded_black_boxes():
    """Same RNG state -> same rows (what exact resume relies on); the real data matches Sec. 3.2's spec."""
    for generator in EQUATION_GENERATORS:
        assert generator(random.Random(3)) == generator(random.Random(3))
    rows = equation_dataset(200, seed=0)
    for row in rows:
        assert row["prompt"].startswith("compute ") and row["completion"].startswith("X = ")
        numbers = [int(t) for t in row["completion"][4:].split() if t not in "+-"]
        assert 2 <= len(numbers) <= 3 and all(-20 <= n <= 20 for n in numbers)


def test_unconditional_text_rows(equation_lm, tmp_path):
    """`text` datasets take `{"text": str}` generators; generated rows start from BOS like real ones."""
    from datasets import Dataset

    def text_generator(rng):
        row = compute_words(rng)
        return {"text": f"{row['prompt']} {row['completion']}"}

    real = Dataset.from_dict({"text": [f"{r['prompt']} {r['completion']}" for r in equation_dataset(8, seed=0)]})
    trainer = GenereTrainer(
        equation_lm, [text_generator, text_generator], args=config(tmp_path, max_steps=3, generative_weight=3.0),
        train_dataset=real,
    )  # fmt: skip
    trainer.train()
    assert trainer.baseline is not None and trainer.generator_format == "text"
    with pytest.raises(ValueError, match=r"generators\[0\] \(wrong_keys\).*missing \['text'\]"):
        GenereTrainer(equation_lm, [wrong_keys], args=config(tmp_path), train_dataset=real)


# ------------------------------------------------------------------------- generators whose lengths differ
LENGTH_WORDS = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"]


def words_generator(length: int):
    def generate(rng):
        return {"text": " ".join(rng.choice(LENGTH_WORDS) for _ in range(length))}

    generate.__name__ = f"uniform_words_{length}"
    return generate


@pytest.mark.parametrize(
    "normalization, micro_batch", [("per_token", 32), ("per_token", 1), ("sum", 32)],
    ids=["per_token", "per_token_micro_batch_1", "sum"],
)
def test_the_matching_generator_wins_whatever_the_lengths(normalization, micro_batch, tmp_path):
    """The data are 6 uniform words; the black boxes emit the same words, 1, 6 (the match) or 10 at a time.

    A model trained on the data gives every word ~ln 8 = 2.1 nats and EOS only after 6 words, so a 1-word row
    sums to ~-2.1 - (an unlikely EOS) ≈ -6, far above a matching row's ~-12.5: the summed reward of the paper
    crowns the shortest generator. Per token (on the sum's scale) the matching rows score best, also at micro-batch 1
    x accumulation 32 (the reward was once scaled by the micro-batch's mean length: at micro-batch 1 the paper's sum,
    π_short 0.975). Defaults otherwise (η_γ 0.1, shrinkage 0.99)."""
    from datasets import Dataset

    from hfcoop.tiny import build_tiny_model

    rng = random.Random(0)
    real = Dataset.from_dict({"text": [" ".join(rng.choice(LENGTH_WORDS) for _ in range(6)) for _ in range(256)]})
    model = build_tiny_model(str(tmp_path / "lm"), [" ".join(LENGTH_WORDS)], vocab_size=20, n_layer=1, n_embd=32,
                             n_head=2, n_positions=32)  # fmt: skip
    generators = [words_generator(1), words_generator(6), words_generator(10)]
    args = config(tmp_path / "out", max_steps=120, per_device_train_batch_size=micro_batch,
                  gradient_accumulation_steps=32 // micro_batch, learning_rate=1e-2,
                  lr_scheduler_type="constant", mle_warmup_steps=40, logging_steps=40,
                  likelihood_normalization=normalization)  # fmt: skip
    trainer = GenereTrainer(model, generators, args=args, train_dataset=real)
    trainer.train()
    pi = trainer.mixture_proportions
    print(normalization, "learned proportions:", [round(p, 3) for p in pi])
    if normalization == "per_token":  # measured π = (0.004, 0.971, 0.026) after 80 γ steps (0.47 unscaled)
        assert pi[1] > 0.8, pi
    else:  # the paper's reward: the shortest generator wins (measured π_short = 0.95), why it is not the default
        assert pi[0] > 0.8, pi


def test_the_old_mixture_rate_name_is_gone(tmp_path):
    """``generator_learning_rate`` (γ's step size under an old name) is no field: nothing released needs it."""
    from hfcoop import GenereConfig

    with pytest.raises(TypeError, match="generator_learning_rate"):
        GenereConfig(output_dir=str(tmp_path), generator_learning_rate=0.07)


# ------------------------------------------------------------------------- the batch layout
def test_gamma_does_not_depend_on_the_batch_layout(tiny_lm, tmp_path):
    """The same 32 rows per optimizer step as micro-batch 32, micro-batch 1 x accumulation 32, and 2 processes x 16
    give the same γ and µ (to float rounding). The per-token reward was rescaled by the *micro-batch's* mean length,
    which at micro-batch 1 is the row's own: the paper's summed reward, the one that crowns the shortest generator."""
    from helpers import launch, row_keyed_genere_gamma, TESTS

    one = row_keyed_genere_gamma(tiny_lm, str(tmp_path / "mb32"), 32, 1)
    many = row_keyed_genere_gamma(tiny_lm, str(tmp_path / "mb1"), 1, 32)
    script = os.path.join(TESTS, "scripts", "genere_layout.py")
    stdout = launch(script, [tiny_lm, str(tmp_path / "ddp"), "16", "1"], 2)
    ddp = json.loads(stdout.split("GENERE ", 1)[1].splitlines()[0])
    assert max(abs(g) for g in one["gamma"]) > 0.05  # γ moved: the comparison is not between zeros
    for other in (many, ddp):
        assert other["gamma"] == pytest.approx(one["gamma"], abs=1e-6)
        assert other["baseline"] == pytest.approx(one["baseline"], abs=1e-5)


def test_initial_mixture_logits_are_checked_and_used(equation_lm, tmp_path):
    three = EQUATION_GENERATORS[:3]
    with pytest.raises(ValueError, match=r"^initial_mixture_logits has 2 values for 3 generators\.$"):
        GenereTrainer(str(tmp_path / "no-such-model"), three, args=config(tmp_path, initial_mixture_logits=[0.0, 1.0]),
                      train_dataset=equation_dataset(4, seed=0))  # fmt: skip
    trainer = GenereTrainer(equation_lm, three, args=config(tmp_path, initial_mixture_logits=[1.0, 0.0, -1.0]),
                            train_dataset=equation_dataset(4, seed=0))  # fmt: skip
    assert trainer.mixture_logits == [1.0, 0.0, -1.0]


CHAT = Dataset.from_dict({"messages": [[{"role": "user", "content": "compute one"},
                                        {"role": "assistant", "content": "X = 1"}]] * 4})  # fmt: skip


@pytest.mark.parametrize(
    "row, data, detail",
    [
        ({"foo": "x"}, None, r"The row of generators\[0\] \(one_row\)"),  # no data: the first row sets the format
        ({"foo": [1]}, CHAT, r"generators\[0\] \(one_row\) returned keys \['foo'\]: conversational data needs "
                             r"'messages' or 'prompt'/'completion' message lists\.$"),
        ({"messages": "not a list"}, CHAT, r"The row of generators\[0\] \(one_row\)"),
    ],
)
def test_malformed_generated_rows_are_named(row, data, detail, tmp_path):
    def one_row(rng):
        return row

    with pytest.raises(ValueError, match=detail):
        GenereTrainer(str(tmp_path / "no-such-model"), [one_row], args=config(tmp_path), train_dataset=data)


def test_a_well_formed_conversational_generator_passes_the_check(tmp_path):
    def chat_row(rng):
        return {"messages": [{"role": "user", "content": "compute two"}, {"role": "assistant", "content": "X = 2"}]}

    with pytest.raises(Exception) as failure:  # the generators pass; the missing model is what fails
        GenereTrainer(str(tmp_path / "no-such-model"), [chat_row], args=config(tmp_path), train_dataset=CHAT)
    assert "generators[" not in str(failure.value) and "no-such-model" in str(failure.value)
