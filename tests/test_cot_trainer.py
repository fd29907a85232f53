"""CoTTrainer end to end: the toy distribution, resume, gradient accumulation, DDP, PEFT, saving, bad input."""

import json
import math
import os
import warnings

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from helpers import DeterministicSampleCoT, StopAfter, launch, state_close
from hfcoop import CoTConfig, CoTTrainer, MLEConfig, MLETrainer
from toy import build_toy_model, data_distribution, jsd, model_distribution, total_variation, toy_dataset

TESTS = os.path.dirname(os.path.abspath(__file__))


def cot_args(tmp_path, **kw) -> CoTConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
        max_completion_length=8, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    base.update(kw)
    return CoTConfig(**base)


# ---------------------------------------------------------------- exactly enumerable toy distribution
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = build_toy_model(str(tmp_path_factory.mktemp("toy")))
    tok = AutoTokenizer.from_pretrained(path)
    return path, tok, data_distribution(tok)


def toy_args(tmp_path, steps, **kw):
    settings = dict(max_steps=steps, per_device_train_batch_size=64, learning_rate=1e-2, max_completion_length=3,
                    lr_scheduler_type="constant", logging_steps=50)  # fmt: skip
    return cot_args(tmp_path, **{**settings, **kw})


def test_mediator_converges_to_the_mixture_with_frozen_generator(toy, tmp_path):
    """Lemma 1: training M on balanced real+generated batches gives M -> (p_data + G)/2.

    With the generator frozen (learning rate 0) the target is fixed and far from both p_data and G
    (TV(G0, p_data) ~ 0.9), so closeness to the mixture is not closeness to either end.
    """
    path, tok, p = toy
    g0 = model_distribution(AutoModelForCausalLM.from_pretrained(path), tok)
    trainer = CoTTrainer(path, train_dataset=toy_dataset(), args=toy_args(tmp_path, 300, mediator_learning_rate=1e-2,
                                                                            learning_rate=0.0))  # fmt: skip
    trainer.train()
    g = model_distribution(trainer.pair.generator, tok)
    m = model_distribution(trainer.pair.companion, tok)
    assert torch.allclose(g, g0)  # the generator really was frozen
    target = (p + g0) / 2
    tv_target, tv_data, tv_gen = total_variation(m, target), total_variation(m, p), total_variation(m, g0)
    # The two ends are ~0.45 TV from the target each; SGD noise with batches of 64 real + 64 sampled
    # sequences over 85 outcomes leaves a few hundredths (measured 0.03-0.06): 0.12 separates the cases.
    assert tv_target < 0.12, (tv_target, tv_data, tv_gen)
    assert tv_data > 2 * tv_target and tv_gen > 2 * tv_target


def test_cot_reduces_exact_jsd_and_mediator_tracks_mixture(toy, tmp_path):
    path, tok, p = toy
    g0 = model_distribution(AutoModelForCausalLM.from_pretrained(path), tok)
    jsd0 = jsd(g0, p)
    # 1000 optimizer steps: 500 mediator steps and 500 generator steps, each against the updated mediator. Measured
    # JSD (paper order, two runs): 0.18 / 0.09 / 0.009-0.085 after 100 / 300 / 600 generator steps (a plateau near
    # 0.09, then a drop at varying times); the earlier simultaneous schedule (generator against the mediator before
    # its update, both every step): 0.063 / 0.018 after 100 / 300 steps.
    trainer = CoTTrainer(path, train_dataset=toy_dataset(), args=toy_args(tmp_path, 1000))
    trainer.train()
    g = model_distribution(trainer.pair.generator, tok)
    m = model_distribution(trainer.pair.companion, tok)
    # JSD starts at ~0.61 nats (of ln 2 = 0.69 max). Asking for a 4x drop leaves margin over the plateau while
    # failing for a generator that does not learn (or learns the wrong signal).
    assert jsd(g, p) < 0.25 * jsd0, (jsd(g, p), jsd0)
    assert total_variation(m, (p + g) / 2) < 0.15
    logged = [e for e in trainer.state.log_history if "companion/loss" in e]
    # Sec. 4.1.2: the balanced NLL falls as training progresses; its floor is H(p_data) = 1.28 nats.
    assert logged[-1]["companion/loss"] < logged[0]["companion/loss"]
    assert logged[-1]["companion/loss"] > 1.28 - 0.05


# ---------------------------------------------------------------- resume, accumulation, DDP
def test_resume_is_bit_identical(tiny_lm, coco_text, tmp_path):
    def run(out, resume=None, stop=None):
        args = cot_args(tmp_path, output_dir=str(tmp_path / out), max_steps=6, save_strategy="steps", save_steps=3)
        trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args, callbacks=[StopAfter(stop)] if stop else None)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.pair

    full = run("full")
    interrupted = run("interrupted", stop=3)
    assert not torch.equal(interrupted.generator.state_dict()["lm_head.weight"], full.generator.state_dict()["lm_head.weight"])
    resumed = run("interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    for a, b in ((full.generator, resumed.generator), (full.companion, resumed.companion)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and training really moved the weights (the comparison is not between two untouched models)
    init = AutoModelForCausalLM.from_pretrained(tiny_lm).state_dict()
    assert state_close(full.generator.state_dict(), init, 0) > 1e-4


def test_gradient_accumulation_matches_large_batch(tiny_lm, coco_prompt_completion, tmp_path):
    def run(batch, accumulation):
        args = cot_args(tmp_path, output_dir=str(tmp_path / f"b{batch}"), per_device_train_batch_size=batch,
                        gradient_accumulation_steps=accumulation, train_sampling_strategy="sequential",
                        optim="sgd", learning_rate=0.5, max_steps=3)  # fmt: skip
        # SGD, not Adam: Adam's first steps move every weight by ~lr * sign(grad), so float-rounding noise
        # on near-zero gradients would flip signs and hide the comparison under lr-sized differences.
        trainer = DeterministicSampleCoT(tiny_lm, train_dataset=coco_prompt_completion, args=args)
        trainer.train()
        return trainer.pair.state_dict(), trainer.state.log_history

    (big, log_big), (acc, log_acc) = run(16, 1), run(8, 2)
    assert state_close(big, acc, 0) < 2e-5
    assert abs(log_big[0]["loss"] - log_acc[0]["loss"]) < 1e-4 * abs(log_big[0]["loss"])
    assert abs(log_big[0]["grad_norm"] - log_acc[0]["grad_norm"]) < 1e-4 * log_big[0]["grad_norm"]


def _launch(num_processes, model, out, batch):
    stdout = launch(os.path.join(TESTS, "scripts", "ddp_cot.py"), [model, out, str(batch)], num_processes)
    assert "BACKWARD_CALLS 4" in stdout  # 4 steps, one backward each (mediator, generator, mediator, generator)
    return load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(out, "mediator", "model.safetensors"))


def test_two_process_ddp_matches_one_process(tiny_lm, tmp_path):
    """DDP (find_unused_parameters on: each step trains one model) trains exactly like one process with the whole
    batch."""
    gen2, med2 = _launch(2, tiny_lm, str(tmp_path / "ddp"), 4)
    gen1, med1 = _launch(1, tiny_lm, str(tmp_path / "single"), 8)
    init = load_file(os.path.join(tiny_lm, "model.safetensors"))
    assert state_close(gen1, init, 0) > 1e-3  # both runs trained
    assert state_close(gen1, gen2, 0) < 2e-5
    assert state_close(med1, med2, 0) < 2e-5


# ---------------------------------------------------------------- formats, PEFT, saving
def test_prompt_completion_losses_concern_the_completion_only(tiny_lm, coco_prompt_completion, tmp_path):
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_prompt_completion, args=cot_args(tmp_path, max_steps=2))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["prompt_attention_mask"][:, -1] == 1).all()  # prompts are left-padded
    assert (batch["completion_mask"][:, 0] == 1).all()  # completions right-padded
    trainer.train()
    # Changing the prompt tokens' targets cannot change the mediator loss: only completions are scored.
    ids, mask = trainer.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    assert ids.shape[0] == 4 and mask.shape == ids.shape
    assert all(e.get("companion/nll_real", 1) > 0 for e in trainer.state.log_history)


def test_sampling_seed_differs_across_steps_and_is_reproducible(tiny_lm, coco_text, tmp_path):
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path))
    prompt = torch.full((4, 1), trainer.processing_class.bos_token_id)
    mask = torch.ones_like(prompt)
    a, _ = trainer.sample(prompt, mask)
    b, _ = trainer.sample(prompt, mask)  # second call in the same step: a new stream
    trainer._sample_step = None  # a resumed process starts its counters afresh
    c, _ = trainer.sample(prompt, mask)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_mle_baseline_trains_under_the_same_harness(tiny_lm, coco_text, tmp_path):
    args = MLEConfig(output_dir=str(tmp_path / "mle"), max_steps=5, per_device_train_batch_size=8, learning_rate=1e-2,
                     report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)  # fmt: skip
    trainer = MLETrainer(tiny_lm, train_dataset=coco_text, eval_dataset=coco_text, args=args)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.1
    # the logged per-token NLL: ~ln |V| from the near-uniform initial model, falling as it trains
    nll = [h["generator/nll_per_token"] for h in trainer.state.log_history if "generator/nll_per_token" in h]
    assert len(nll) == 5
    assert abs(nll[0] - math.log(len(trainer.processing_class))) < 0.5 and nll[-1] < nll[0] - 0.1


def test_lora_generator_save_then_from_pretrained_generate(tiny_lm, coco_text, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    args = cot_args(tmp_path, max_steps=3, learning_rate=1e-2)
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args, peft_config=peft_config)
    assert type(trainer.pair.generator).__name__ == "PeftModelForCausalLM"
    assert type(trainer.pair.companion).__name__ == "GPT2LMHeadModel"  # LoRA on the mediator only if asked
    trainable = {n for n, p in trainer.pair.generator.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    out = str(tmp_path / "export")
    trainer.save_model(out)
    assert os.path.isfile(os.path.join(out, "adapter_model.safetensors"))
    assert not os.path.exists(os.path.join(out, "mediator"))
    model = AutoModelForCausalLM.from_pretrained(out)  # resolves the base model from the adapter config
    tok = AutoTokenizer.from_pretrained(out)
    ids = model.generate(torch.tensor([[tok.bos_token_id]]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert ids.shape[1] > 1


def test_lora_on_the_mediator_too(tiny_lm, coco_text, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path, companion_peft=True),
                         peft_config=peft_config)  # fmt: skip
    assert type(trainer.pair.companion).__name__ == "PeftModelForCausalLM"
    trainer.train()


def test_save_model_exports_generator_with_card_and_optional_mediator(tiny_lm, coco_text, tmp_path):
    args = cot_args(tmp_path, max_steps=2)
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    trainer.train()
    out = str(tmp_path / "export")
    trainer.save_model(out)
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # safetensors only
    assert "mediator" not in files
    card = open(os.path.join(out, "README.md")).read()
    assert "Cooperative Training (CoT)" in card and "lu2019cot" in card and "mediator_steps" in card
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for k, v in trainer.pair.generator.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k])
    trainer.args.save_companion = True
    trainer.save_model(out)
    assert os.path.isfile(os.path.join(out, "mediator", "model.safetensors"))
    with open(os.path.join(out, "hfcoop_training_args.json")) as f:
        assert json.load(f)["mediator_steps"] == 1


def test_mediator_steps_skip_generator_updates(tiny_lm, coco_text, tmp_path):
    args = cot_args(tmp_path, max_steps=6, mediator_steps=2)
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    assert args.ddp_find_unused_parameters is True
    trainer.train()
    with_generator = [e for e in trainer.state.log_history if "generator/loss" in e]
    with_mediator = [e for e in trainer.state.log_history if "companion/loss" in e]
    assert [e["step"] for e in with_generator] == [3, 6]  # Alg. 1: N_m = 2 mediator steps, then the generator
    assert [e["step"] for e in with_mediator] == [1, 2, 4, 5]


def test_companion_learning_rate_gets_its_own_param_groups(tiny_lm, coco_text, tmp_path):
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path, mediator_learning_rate=5e-4))
    optimizer = trainer.create_optimizer()
    mediator = {id(p) for p in trainer.pair.companion.parameters()}
    lrs = {(id(g["params"][0]) in mediator, g["lr"]) for g in optimizer.param_groups}
    assert lrs == {(False, 1e-3), (True, 5e-4)}
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(trainer.pair.parameters()))


def test_gamma_reinforce_term_runs(tiny_lm, coco_text, tmp_path):
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path, gamma=0.5, max_steps=2))
    trainer.train()
    assert any("generator/loss" in e for e in trainer.state.log_history)


# ---------------------------------------------------------------- bad input: clear errors before compute
def test_missing_column_is_a_clear_error(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="'text' column"):
        CoTTrainer(tiny_lm, train_dataset=Dataset.from_dict({"sentence": ["a b"]}), args=cot_args(tmp_path))


def test_empty_dataset_is_a_clear_error(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        CoTTrainer(tiny_lm, train_dataset=Dataset.from_dict({"text": []}), args=cot_args(tmp_path))


def test_vocabulary_mismatch_is_a_clear_error(tiny_lm, coco_text, tmp_path):
    other = GPT2LMHeadModel(GPT2Config(vocab_size=123, n_layer=1, n_embd=16, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="Vocabulary mismatch: the generator has 600 output tokens but the mediator has "
                                         "123. The mediator must use the generator's tokenizer"):
        CoTTrainer(tiny_lm, mediator=other, train_dataset=coco_text, args=cot_args(tmp_path))
    with pytest.raises(ValueError, match="gamma"):  # the REINFORCE weight is in [0, 1]
        cot_args(tmp_path, gamma=1.5)


def test_encoder_only_generator_is_refused(tiny_lm, coco_text, tmp_path):
    bert = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    with pytest.raises(ValueError, match="causal"):
        CoTTrainer(bert, train_dataset=coco_text, processing_class=tok, args=cot_args(tmp_path))
    bert_dir = str(tmp_path / "bert")
    bert.save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    with pytest.raises(ValueError, match="encoder-only"):
        CoTTrainer(bert_dir, train_dataset=coco_text, args=cot_args(tmp_path))
    with pytest.raises(ValueError, match="^mediator .* is an encoder-only model"):  # names the model at fault
        CoTTrainer(tiny_lm, mediator=bert_dir, train_dataset=coco_text, args=cot_args(tmp_path))


def test_mediator_step_logs_the_two_halves_of_its_balanced_nll(tiny_lm, coco_text, tmp_path):
    """Eq. 9: the logged mediator loss is the mean of the per-sequence NLLs of the real and the generated rows."""
    # batch 3 (< the 8-token completions): a sum over the wrong axis cannot give the same mean
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path, max_steps=1,
                                                                         per_device_train_batch_size=3))  # fmt: skip
    trainer.train()
    (first,) = [h for h in trainer.state.log_history if "companion/loss" in h]
    real, generated = first["companion/nll_real"], first["companion/nll_generated"]
    assert real > 1.0 and generated > 1.0 and real != generated  # per sequence: several tokens of ~ln|V| each
    assert first["companion/loss"] == pytest.approx(0.5 * (real + generated), rel=1e-5)


def test_tokenizer_without_pad_token_is_fixed_up(tiny_lm, coco_text, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    tok.pad_token = None
    assert tok.pad_token_id is None
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, processing_class=tok, args=cot_args(tmp_path, max_steps=1))
    assert trainer.processing_class.pad_token_id == trainer.processing_class.eos_token_id
    trainer.train()


def test_tokenizer_without_eos_is_refused_with_the_fix(tiny_lm, coco_text, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        CoTTrainer(tiny_lm, train_dataset=coco_text, processing_class=tok, args=cot_args(tmp_path))


def test_bf16_autocast_and_activation_checkpointing(tiny_lm, coco_text, tmp_path):
    args = cot_args(tmp_path, max_steps=2, bf16=True, use_cpu=True, activation_checkpointing=True)
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    trainer.train()
    # sampling switches checkpointing off (it disables the KV cache) and must switch it back on
    assert trainer.pair.generator.is_activation_checkpointing
    assert trainer.pair.companion.is_activation_checkpointing
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


def test_lengths_beyond_the_model_positions_are_a_clear_error(tiny_lm, coco_prompt_completion, tmp_path):
    # the tiny model has 64 positions
    with pytest.raises(ValueError, match="must fit the model.s 64 positions: set max_prompt_length to at most 56"):
        CoTTrainer(tiny_lm, train_dataset=coco_prompt_completion,
                   args=cot_args(tmp_path, max_prompt_length=60, max_completion_length=8))  # fmt: skip


def test_cot_warns_about_distorted_sampling(tiny_lm, coco_text, tmp_path):
    with pytest.warns(UserWarning, match=r"CoT with temperature=0.7, top_k=0, top_p=1.0: the mediator then learns "
                                         r"\(p_data \+ G'\)/2 .* and the generator's KL\(G\|\|M\) is estimated on "
                                         r"G' samples, which biases both objectives"):
        CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path, temperature=0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            CoTTrainer(tiny_lm, train_dataset=coco_text, args=cot_args(tmp_path))
        except UserWarning as w:
            assert "biases" not in str(w)


def test_completions_table_kl_of_a_sample_that_stopped_early(tiny_lm, coco_text, tmp_path):
    """The generator step's table score is KL(G||M) averaged over each sample's own tokens: a sample that stopped
    early (padding after its EOS) gets the mean over its real tokens, finite, equal to the step's per-token KL."""
    import hfcoop.trainers.cot as cot_module

    args = cot_args(tmp_path, max_steps=2, log_completions_steps=1, num_completions_to_log=2,
                    per_device_train_batch_size=2)  # fmt: skip
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    sample = trainer.sample

    def stopping_early(prompt_ids, prompt_mask, *rest):
        ids, mask = sample(prompt_ids, prompt_mask, *rest)
        mask = mask.clone()
        mask[0, 2:] = 0  # the first sample ends after 2 tokens
        return ids.masked_fill(mask == 0, trainer.processing_class.pad_token_id), mask

    trainer.sample = stopping_early
    kls = []
    real_kl = cot_module.per_token_kl
    cot_module.per_token_kl = lambda *a: (kls.append(real_kl(*a)), kls[-1])[1]
    try:
        trainer.train()
    finally:
        cot_module.per_token_kl = real_kl
    with open(os.path.join(args.output_dir, "completions", "completions_00002.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    first = float(kls[-1].squeeze(0)[:2].mean())  # the generator step's packed KL: row 0's 2 tokens come first
    assert rows[0]["kl_per_token"] == pytest.approx(first, rel=1e-4) and math.isfinite(rows[1]["kl_per_token"])
