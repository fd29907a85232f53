"""Conversational data (TRL's formats) rendered by a chat template, and instruct models with several EOS ids.

The tiny instruct model (:func:`hfcoop.tiny.build_tiny_model` with ``chat=True``) has a ChatML-style template
whose end-of-turn token ``<|im_end|>`` is *not* the tokenizer's EOS but a second id in
``generation_config.eos_token_id`` — the harder case (Llama 3, Qwen base tokenizers): only a trainer that reads the
generation config stops there.
"""

import json
import math
import os
import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from hfcoop import (
    CoTConfig,
    CoTTrainer,
    GCNConfig,
    GCNTrainer,
    GenereConfig,
    GenereTrainer,
    MLEConfig,
    MLETrainer,
    PsiMLEConfig,
    PsiMLETrainer,
)
from hfcoop.cli import main
from hfcoop.data import load_any_dataset, render_conversation, to_conversational, tokenize_row, validate_dataset
from hfcoop.evaluation import generation_quality
from hfcoop.modeling import eos_token_ids, load_causal_lm, load_tokenizer
from hfcoop.tiny import TURN_END, build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "recipes", "data")
CHAT_TRAIN = os.path.join(DATA, "squad_qg_chat_train.jsonl")
CHAT_TEST = os.path.join(DATA, "squad_qg_chat_test.jsonl")
SYSTEM = "Ask the question that the given answer answers, using the context."


@pytest.fixture(scope="module")
def chat_rows() -> list[dict]:
    return [json.loads(line) for line in open(CHAT_TRAIN)]


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory, chat_rows) -> str:
    texts = [m["content"] for r in chat_rows for m in r["messages"]]
    path = str(tmp_path_factory.mktemp("chat_lm"))
    return build_tiny_model(path, texts, vocab_size=2000, n_layer=1, n_embd=32, n_head=2, n_positions=96,
                            chat=True)


@pytest.fixture(scope="module")
def tok(chat_lm):
    return load_tokenizer(None, chat_lm)


def ids_of(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


# ----------------------------------------------------------------------------- rendering and tokenisation
def test_tiny_instruct_model_has_a_template_and_two_eos_ids(chat_lm, tok):
    model = load_causal_lm(chat_lm)
    eot, eos = ids_of(tok, TURN_END, tok.eos_token)
    assert tok.chat_template and eot != eos
    assert model.generation_config.eos_token_id == [eot, eos]
    assert eos_token_ids(tok, model) == [eos, eot]  # the tokenizer's EOS first: the one appended to real text


def test_rendering_matches_trl_apply_chat_template(tok):
    from trl.data_utils import apply_chat_template

    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "context: the sky\nanswer: blue"}]
    completion = [{"role": "assistant", "content": "what colour is the sky?"}]
    trl = apply_chat_template({"prompt": prompt, "completion": completion}, tok)
    eos_ids = ids_of(tok, tok.eos_token, TURN_END)
    ours = render_conversation({"prompt": prompt, "completion": completion}, tok, eos_ids)
    assert ours["prompt"] == trl["prompt"] and ours["prompt"].endswith("<|im_start|>assistant\n")
    # TRL keeps the template's text after the end-of-turn token ("\n"); a sampled completion stops at it.
    assert trl["completion"] == "what colour is the sky?<|im_end|>\n"
    assert ours["completion"] == "what colour is the sky?<|im_end|>"
    # A messages row is the same conversation: prompt = every turn before the last assistant one.
    assert render_conversation({"messages": prompt + completion}, tok, eos_ids) == ours
    # Without the end-of-turn id among the EOS ids, the completion goes on to the tokenizer's EOS (the fallback).
    assert render_conversation({"messages": prompt + completion}, tok)["completion"] == trl["completion"] + tok.eos_token


def test_tokenised_chat_rows_end_with_end_of_turn_not_eos(tok, chat_rows):
    eot, eos = ids_of(tok, TURN_END, tok.eos_token)
    row = tokenize_row(chat_rows[0], tok, "conversational", None, 64, [eos, eot])
    question = chat_rows[0]["messages"][-1]["content"]
    assert row["completion_input_ids"] == tok(question, add_special_tokens=False)["input_ids"] + [eot]
    assert tok.convert_ids_to_tokens(row["prompt_input_ids"][-2:]) == ["<|im_start|>", "assistant"]
    assert row["prompt_input_ids"].count(ids_of(tok, "<|im_start|>")[0]) == 3  # system, user, generation prompt
    # Truncated like any completion: the budget counts the end-of-turn token, which a cut completion lacks.
    short = tokenize_row(chat_rows[0], tok, "conversational", 8, 3, [eos, eot])
    assert short["completion_input_ids"] == row["completion_input_ids"][:3] and len(short["prompt_input_ids"]) == 8


def test_a_template_without_end_of_turn_gets_eos_appended(tok):
    plain = AutoTokenizer.from_pretrained(tok.name_or_path)
    plain.chat_template = "{% for m in messages %}{{ m['content'] + ' ' }}{% endfor %}"
    row = {"prompt": [{"role": "user", "content": "the sky"}], "completion": [{"role": "assistant", "content": "blue"}]}
    out = tokenize_row(row, plain, "conversational", None, 8, [plain.eos_token_id])
    assert out["completion_input_ids"] == tok("blue", add_special_tokens=False)["input_ids"] + [plain.eos_token_id]


def test_format_detection_and_row_errors():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert validate_dataset(Dataset.from_list([{"messages": msgs}]), "d") == "conversational"
    assert validate_dataset(Dataset.from_list([{"prompt": msgs[:1], "completion": msgs[1:]}]), "d") == "conversational"
    assert validate_dataset(Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}), "d") == "prompt_completion"
    with pytest.raises(ValueError, match="must end with the assistant turn"):
        validate_dataset(Dataset.from_list([{"messages": msgs[::-1]}]), "d")
    with pytest.raises(ValueError, match="must be assistant turns"):
        validate_dataset(Dataset.from_list([{"prompt": msgs[:1], "completion": msgs[:1]}]), "d")
    converted = to_conversational(Dataset.from_dict({"prompt": ["a"], "completion": [" b"]}), system_prompt="s")
    assert converted[0]["completion"] == [{"role": "assistant", "content": "b"}]
    assert [m["role"] for m in converted[0]["prompt"]] == ["system", "user"]


def test_no_chat_template_is_an_early_error(tiny_lm):
    data = Dataset.from_list([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    args = MLEConfig(output_dir="unused", report_to="none")
    # The model path does not exist: the template error must come first, before any model is loaded.
    with pytest.raises(ValueError, match="no chat template"):
        MLETrainer("no/such-model", args=args, train_dataset=data, processing_class=load_tokenizer(None, tiny_lm))


# ----------------------------------------------------------------------------- several EOS ids
def test_samples_stop_on_either_eos_and_masks_treat_them_alike(chat_lm, tok, tmp_path, chat_rows):
    """A generator whose logits are 0 except +4.5 on both EOS ids (≈ 10% each per token): rows end on either."""
    eot, eos = ids_of(tok, TURN_END, tok.eos_token)
    args = MLEConfig(output_dir=str(tmp_path), max_completion_length=40, report_to="none", seed=3)
    trainer = MLETrainer(chat_lm, args=args, train_dataset=Dataset.from_list(chat_rows[:4]))
    assert trainer.generation_config.eos_token_id == [eos, eot]
    generator = trainer.pair.generator
    with torch.no_grad():
        generator.transformer.ln_f.weight.zero_()
        generator.transformer.ln_f.bias.zero_()
    bias = torch.zeros(generator.config.vocab_size)
    bias[[eos, eot]] = 4.5
    generator.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    prompts = torch.tensor([trainer.train_dataset[0]["prompt_input_ids"]] * 96)
    ids, mask = trainer.sample(prompts, torch.ones_like(prompts))
    ended_by = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        stops = [i for i, t in enumerate(row) if t in (eos, eot)]
        length = stops[0] + 1 if stops else len(row)
        assert m == [1] * length + [0] * (len(row) - length)  # masked in up to and including the first stop only
        assert all(t == tok.pad_token_id for t in row[length:])
        if stops:
            ended_by.append(row[stops[0]])
    assert ended_by.count(eot) >= 20 and ended_by.count(eos) >= 20  # both ids end sequences
    eos_rate = trainer._metrics["train"]["samples/eos_rate"][-1].item()
    assert eos_rate == pytest.approx(len(ended_by) / 96)


# ----------------------------------------------------------------------------- every algorithm, API
def question_generator(rng: random.Random) -> dict:
    """A black-box GENERE generator of conversational rows (prompt/completion message lists)."""
    thing = rng.choice(["the team", "the city", "the river"])
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"context: {thing}\nanswer: {thing}"}],
            "completion": [{"role": "assistant", "content": f"what is {thing}?"}]}  # fmt: skip


CHAT_GENERATORS = [question_generator]

ALGORITHMS = {
    "mle": (MLEConfig, MLETrainer, {}),
    "cot": (CoTConfig, CoTTrainer, {}),
    "psi_mle": (PsiMLEConfig, PsiMLETrainer, {}),
    "gcn": (GCNConfig, GCNTrainer, {"num_candidates": 2}),
    "gcn_mcts": (GCNConfig, GCNTrainer, {"sampler": "mcts", "num_simulations": 3, "mcts_top_k": 2}),
    "genere": (GenereConfig, GenereTrainer, {"mle_warmup_steps": 0}),
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_trains_on_chat_data(name, chat_lm, tok, chat_rows, tmp_path):
    config_cls, trainer_cls, extra = ALGORITHMS[name]
    args = config_cls(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, max_prompt_length=48,
                      max_completion_length=10, logging_steps=1, report_to="none", save_strategy="no",
                      learning_rate=1e-3, disable_tqdm=True, **extra)  # fmt: skip
    companion = (CHAT_GENERATORS,) if name == "genere" else ()
    train = Dataset.from_list(chat_rows[:16])
    trainer = trainer_cls(chat_lm, *companion, args=args, train_dataset=train,
                          eval_dataset=load_any_dataset(CHAT_TEST).select(range(8)))  # fmt: skip
    eot, eos = ids_of(tok, TURN_END, tok.eos_token)
    assert trainer.eos_token_ids == [eos, eot] and trainer.generation_config.eos_token_id == [eos, eot]
    completions = trainer.train_dataset["completion_input_ids"]
    assert all(c[-1] == eot for c in completions if len(c) < 10) and not any(eos in c for c in completions)
    assert sum(len(c) < 10 for c in completions) >= 4  # (longer ones are truncated to the budget, without a stop)
    before = {k: v.clone() for k, v in trainer.pair.generator.state_dict().items()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = trainer.pair.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the generator learned
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    quality = generation_quality(trainer.pair.generator, tok, load_any_dataset(CHAT_TEST), num_samples=4,
                                 max_new_tokens=10, max_prompt_length=48)  # fmt: skip
    assert {"rougeL", "nll_per_token"} <= set(quality) and math.isfinite(quality["nll_per_token"])


def test_evaluation_scores_chat_references_as_training_tokenises(chat_lm, tok, tmp_path):
    """NLL of the references = the trainer's teacher-forced eval loss on the same rows (same rendering)."""
    test = load_any_dataset(CHAT_TEST).select(range(6))
    args = MLEConfig(output_dir=str(tmp_path), max_prompt_length=48, max_completion_length=40, report_to="none",
                     per_device_eval_batch_size=6)  # fmt: skip
    trainer = MLETrainer(chat_lm, args=args, eval_dataset=test)
    loss = trainer.evaluate()["eval_loss"]
    quality = generation_quality(trainer.pair.generator, tok, test, num_samples=6, max_new_tokens=40,
                                 max_prompt_length=48)  # fmt: skip
    assert quality["nll_per_token"] == pytest.approx(loss, rel=1e-5)


# ----------------------------------------------------------------------------- every algorithm, CLI
def chat_cli_flags(out: str) -> list[str]:
    return [
        "--dataset_name", CHAT_TRAIN, "--eval_dataset_name", CHAT_TEST, "--tiny_model", "true",
        "--max_train_samples", "32", "--max_eval_samples", "8", "--quality_samples", "4",
        "--tiny_model_hidden", "32", "--tiny_model_layers", "1", "--tiny_model_vocab_size", "2000",
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
        "--max_prompt_length", "48", "--logging_steps", "1", "--save_strategy", "no", "--output_dir", out,
        "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip


CLI_EXTRA = {
    "mle": [],
    "cot": ["--model_init_kwargs", '{"dtype": "float32", "attn_implementation": "eager"}',
            "--companion_init_kwargs", '{"attn_implementation": "sdpa"}'],
    "psi_mle": ["--config", os.path.join(ROOT, "recipes", "question_generation", "psi_mle_chat_tiny.yaml")],
    "gcn": ["--num_candidates", "2"],
    "genere": ["--generators", "test_chat:CHAT_GENERATORS", "--mle_warmup_steps", "0"],
}


@pytest.mark.parametrize("name", list(CLI_EXTRA))
def test_every_algorithm_on_chat_data_through_the_cli(name, tmp_path):
    out = str(tmp_path / name)
    extra = CLI_EXTRA[name]
    if name == "mle":  # the same keys in a YAML recipe (a mapping, as in TRL's recipes)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text("model_init_kwargs:\n  dtype: float32\n  attn_implementation: eager\n")
        extra = ["--config", str(recipe)]
    report = main_train(name, extra + chat_cli_flags(out))
    assert all(math.isfinite(v) for v in report["after"].values())
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template
    generation = json.load(open(os.path.join(out, "generation_config.json")))
    assert sorted(generation["eos_token_id"]) == sorted(ids_of(saved, TURN_END, saved.eos_token))
    args = json.load(open(os.path.join(out, "hfcoop_training_args.json")))
    if name in ("mle", "cot"):  # YAML mappings and JSON strings on the command line both become dicts
        assert args["model_init_kwargs"] == {"dtype": "float32", "attn_implementation": "eager"}
    if name == "cot":
        assert args["companion_init_kwargs"] == {"attn_implementation": "sdpa"}
    if name == "mle":  # evaluate / sweep a saved instruct model on conversational rows
        metrics_file = str(tmp_path / "metrics.json")
        main(["evaluate", "--model_name_or_path", out, "--dataset_name", CHAT_TEST, "--num_samples", "4",
              "--max_new_tokens", "8", "--max_prompt_length", "48", "--output_file", metrics_file])  # fmt: skip
        metrics = json.load(open(metrics_file))
        assert metrics["nll_per_token"] == pytest.approx(report["after"]["nll_per_token"], rel=1e-4)  # same rows
        rows = main_sweep(["--model_name_or_path", out, "--dataset_name", CHAT_TEST, "--num_samples", "4",
                           "--max_new_tokens", "8", "--max_prompt_length", "48", "--temperatures", "1.0",
                           "--output_dir", str(tmp_path / "sweep")])  # fmt: skip
        assert "rougeL" in rows[0] and "distinct-2" in rows[0]


def main_train(name: str, argv: list[str]) -> dict:
    from hfcoop.cli import train

    return train([name, *argv])


def main_sweep(argv: list[str]) -> list[dict]:
    from hfcoop.cli import sweep_cli

    return sweep_cli(argv)


def test_generate_from_conversational_rows(chat_lm, tok, tmp_path, capsys):
    """`hfcoop generate --dataset_name` on chat rows: prompts rendered by the template (as training renders them,
    special tokens not added twice), completions stop at the end-of-turn id, references are the plain answers."""
    from hfcoop.cli import main

    out = tmp_path / "gen.jsonl"
    main(["generate", "--model_name_or_path", chat_lm, "--dataset_name", CHAT_TEST, "--max_eval_samples", "3",
          "--max_new_tokens", "8", "--output_file", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    test_rows = [json.loads(line) for line in open(CHAT_TEST)][:3]
    assert len(rows) == 3
    for row, source in zip(rows, test_rows):
        rendered = tok.apply_chat_template(source["prompt"], tokenize=False, add_generation_prompt=True)
        assert row["prompt"] == rendered
        answer = source["completion"][0]["content"]  # as the word-level tokenizer spells it (lower case, no OOV words)
        assert row["reference"] == tok.decode(tok(answer, add_special_tokens=False)["input_ids"],
                                              skip_special_tokens=True).strip()  # fmt: skip
        assert TURN_END not in row["reference"] and isinstance(row["completion"], str)


def test_cooperative_generate_on_chat_rows_adds_no_second_bos(chat_lm, tmp_path, monkeypatch):
    """`hfcoop generate --decoding resample|mcts` on chat rows: the rendered prompt already holds the template's
    special tokens, so a tokenizer that prepends BOS must not prepend it again (as plain sampling already did)."""
    import shutil

    from tokenizers.processors import TemplateProcessing

    import hfcoop.cooperative_decoding as cd

    model_dir = str(tmp_path / "bos_lm")
    shutil.copytree(chat_lm, model_dir)
    bos_tok = load_tokenizer(None, chat_lm)
    bos_tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos_tok.bos_token} $A", special_tokens=[(bos_tok.bos_token, bos_tok.bos_token_id)]
    )
    bos_tok.save_pretrained(model_dir)
    bos_tok = load_tokenizer(None, model_dir)
    assert bos_tok("a")["input_ids"][0] == bos_tok.bos_token_id  # this tokenizer really prepends BOS
    seen: list[list[int]] = []
    prompt_rows = cd.prompt_rows
    monkeypatch.setattr(cd, "prompt_rows", lambda *a, **k: seen.extend(prompt_rows(*a, **k)) or seen[-len(a[1]):])
    monkeypatch.setattr(cd, "_discriminator_score_fn", lambda *a: (lambda p, pm, c, cm: torch.zeros(p.shape[0])))
    data = tmp_path / "short_chat.jsonl"  # prompts short enough that no truncation drops their first token
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}],
                                        "completion": [{"role": "assistant", "content": "a question"}]}) + "\n"
                            for q in ("what is the answer", "who wrote it")))  # fmt: skip
    out = tmp_path / "gen.jsonl"
    main(["generate", "--model_name_or_path", model_dir, "--dataset_name", str(data), "--max_eval_samples", "2",
          "--max_new_tokens", "4", "--decoding", "resample", "--discriminator_name_or_path", "flat",
          "--num_candidates", "2", "--output_file", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and len(seen) == 2
    for row, ids in zip(rows, seen):
        assert ids == bos_tok(row["prompt"], add_special_tokens=False)["input_ids"]
