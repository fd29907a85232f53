"""Watching a run: completions tables with companion scores, generation metrics at evaluation, compute_metrics."""

import glob
import json
import math
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, MLEConfig, MLETrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.watching import markdown_table

SMALL = dict(per_device_train_batch_size=4, max_completion_length=6, use_cpu=True, disable_tqdm=True,
             save_strategy="no", seed=0)  # fmt: skip

# Each companion starts uninformative, so its score of the first step's samples is known exactly: the mediator is
# a copy of G (KL(G||M) = 0), the ratio model and the discriminator have a zero head (r = e^0 = 1, D = sigmoid(0)).
FIRST_STEP = [
    (CoTConfig, CoTTrainer, "kl_per_token", 0.0),
    (PsiMLEConfig, PsiMLETrainer, "r", 1.0),
    (GCNConfig, GCNTrainer, "D", 0.5),
]


def rendered_prompts(trainer, dataset) -> set[str]:
    """The dataset's prompts as the tokenizer renders them (the word-level tiny tokenizer drops unknown words)."""
    tok = trainer.processing_class
    return {tok.decode(tok(p)["input_ids"], skip_special_tokens=True) for p in dataset["prompt"]}


def tensorboard_events(out: str) -> EventAccumulator:
    (folder,) = {os.path.dirname(p) for p in glob.glob(os.path.join(out, "**", "events.out.tfevents.*"), recursive=True)}
    events = EventAccumulator(folder, size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return events


@pytest.mark.parametrize("config_cls,trainer_cls,score,first_value", FIRST_STEP, ids=["cot", "psi_mle", "gcn"])
def test_completions_table_with_companion_scores_in_tensorboard(
    tiny_lm, coco_text, tmp_path, config_cls, trainer_cls, score, first_value
):
    out = str(tmp_path / "run")
    args = config_cls(output_dir=out, max_steps=2, learning_rate=5e-2, log_completions_steps=1,
                      num_completions_to_log=3, logging_steps=1, report_to=["tensorboard"], **SMALL)  # fmt: skip
    trainer = trainer_cls(tiny_lm, args=args, train_dataset=coco_text)
    trainer.train()

    tables = {}
    for step in (1, 2):
        with open(os.path.join(out, "completions", f"completions_{step:05d}.jsonl")) as f:
            tables[step] = [json.loads(line) for line in f]
        rows = tables[step]
        assert len(rows) == 3 and {r["step"] for r in rows} == {step}
        assert set(rows[0]) == {"step", "prompt", "completion", score}
        assert all(isinstance(r["completion"], str) and r["prompt"] == "" for r in rows)  # unconditional: BOS only
    assert [r[score] for r in tables[1]] == pytest.approx([first_value] * 3, abs=1e-5)
    assert any(abs(r[score] - first_value) > 1e-4 for r in tables[2])  # a live score: the companion learnt

    texts = tensorboard_events(out).Tensors("completions/text_summary")
    assert [t.step for t in texts] == [1, 2]
    assert texts[0].tensor_proto.string_val[0].decode() == markdown_table(tables[1])


def test_completions_table_only_on_its_steps_and_prompts_are_decoded(tiny_lm, coco_prompt_completion, tmp_path):
    out = str(tmp_path / "run")
    args = PsiMLEConfig(output_dir=out, max_steps=4, log_completions_steps=2, num_completions_to_log=2, **SMALL)
    trainer = PsiMLETrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion)
    trainer.train()
    files = sorted(os.listdir(os.path.join(out, "completions")))
    assert files == ["completions_00002.jsonl", "completions_00004.jsonl"]
    rows = [json.loads(line) for line in open(os.path.join(out, "completions", files[0]))]
    assert all(r["prompt"] in rendered_prompts(trainer, coco_prompt_completion) for r in rows)


def test_markdown_table_escapes_pipes_and_newlines():
    assert markdown_table([{"prompt": "a|b\nc", "D": 0.123456}]) == "| prompt | D |\n|---|---|\n| a\\|b<br>c | 0.1235 |"


def test_generation_metrics_logged_at_each_evaluation(tiny_lm, coco_prompt_completion, tmp_path):
    out = str(tmp_path / "run")
    args = MLEConfig(output_dir=out, max_steps=4, learning_rate=1e-2, eval_strategy="steps", eval_steps=2,
                     eval_generation_samples=8, logging_steps=2, report_to=["tensorboard"], **SMALL)  # fmt: skip
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion,
                         eval_dataset=coco_prompt_completion.select(range(16)))  # fmt: skip
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4]
    keys = {"eval_generation/bleu", "eval_generation/rouge1", "eval_generation/rouge2", "eval_generation/rougeL",
            "eval_generation/distinct-1"}  # fmt: skip
    for entry in evals:
        assert keys <= set(entry)
        assert all(0.0 <= entry[k] <= 1.0 for k in keys)  # one scale: BLEU in [0, 1] like ROUGE
    # Logged values are those of the model at that step: the last evaluation is the final model's.
    again = trainer.generation_metrics()
    assert evals[-1]["eval_generation/rougeL"] == pytest.approx(again["generation/rougeL"], abs=1e-12)
    assert evals[0]["eval_generation/rougeL"] != evals[-1]["eval_generation/rougeL"]
    scalars = tensorboard_events(out).Scalars("eval/generation/rougeL")
    assert [s.step for s in scalars] == [2, 4]


def test_generation_metrics_unconditional_are_bleu_and_self_bleu(tiny_lm, coco_text):
    args = MLEConfig(output_dir="unused", eval_generation_samples=8, report_to=[], **SMALL)
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=coco_text, eval_dataset=coco_text.select(range(32)))
    metrics = trainer.evaluate()
    assert {"eval_generation/bleu-2", "eval_generation/self-bleu-2", "eval_loss"} <= set(metrics)
    assert "eval_generation/nll_per_token" not in metrics  # eval_loss is already the NLL


@pytest.mark.parametrize("config_cls,trainer_cls", [(MLEConfig, MLETrainer), (CoTConfig, CoTTrainer)])
def test_compute_metrics_gets_aligned_logits_and_labels(tiny_lm, coco_prompt_completion, config_cls, trainer_cls):
    """As in Trainer: compute_metrics(EvalPrediction) - here the NLL recomputed from it must equal eval_loss."""
    seen = {}

    def compute_metrics(pred):
        logits, labels = torch.as_tensor(pred.predictions), torch.as_tensor(pred.label_ids)
        keep = labels != -100
        logprobs = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        seen["shape"] = tuple(labels.shape)
        return {"nll": float(-(logprobs[keep]).mean()), "tokens": int(keep.sum())}

    eval_ds = coco_prompt_completion.select(range(12))
    args = config_cls(output_dir="unused", per_device_eval_batch_size=16, eval_generation_samples=0, report_to=[],
                      **SMALL)  # fmt: skip
    trainer = trainer_cls(tiny_lm, args=args, train_dataset=coco_prompt_completion, eval_dataset=eval_ds,
                          compute_metrics=compute_metrics)  # fmt: skip
    metrics = trainer.evaluate()
    assert seen["shape"][0] == 12
    assert metrics["eval_nll"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    tokenizer = trainer.processing_class
    expected = sum(min(len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1, 6) for c in eval_ds["completion"])
    assert metrics["eval_tokens"] == expected
    assert math.isfinite(metrics["eval_nll"])


def test_preprocess_logits_for_metrics_is_applied(tiny_lm, coco_prompt_completion):
    args = MLEConfig(output_dir="unused", eval_generation_samples=0, report_to=[], **SMALL)
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion,
                         eval_dataset=coco_prompt_completion.select(range(8)),
                         compute_metrics=lambda p: {"ndim": p.predictions.ndim},
                         preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))  # fmt: skip
    assert trainer.evaluate()["eval_ndim"] == 2


def test_completions_gathered_from_every_process_and_eval_metrics_under_ddp(tmp_path):
    """2 gloo processes: the table holds both processes' rows (gather_object), evaluation logs generation metrics."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = os.path.join(root, "recipes", "data")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "hfcoop.cli", "train", "psi_mle", "--tiny_model", "true",
        "--dataset_name", os.path.join(data, "coco_train_sample.txt"),
        "--eval_dataset_name", os.path.join(data, "coco_test_sample.txt"),
        "--max_train_samples", "64", "--max_eval_samples", "16", "--quality_samples", "0",
        "--tiny_model_hidden", "32", "--tiny_model_layers", "1", "--tiny_model_vocab_size", "300",
        "--max_steps", "2", "--per_device_train_batch_size", "3", "--max_completion_length", "5",
        "--log_completions_steps", "1", "--num_completions_to_log", "16", "--eval_strategy", "steps",
        "--eval_steps", "2", "--eval_generation_samples", "8", "--save_strategy", "no", "--report_to", "none",
        "--output_dir", str(out), "--disable_tqdm", "true", "--use_cpu", "true",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    for step in (1, 2):
        rows = [json.loads(line) for line in open(out / "completions" / f"completions_{step:05d}.jsonl")]
        assert len(rows) == 2 * 3  # 3 samples on each of the 2 processes
        if step == 1:
            assert all(r["r"] == 1.0 for r in rows)  # the ratio model's zero head before its first update
    assert "eval_generation/self-bleu-2" in result.stdout


def test_mle_draws_samples_only_for_its_completions_table(tiny_lm, coco_prompt_completion, tmp_path):
    out = str(tmp_path / "run")
    args = MLEConfig(output_dir=out, max_steps=2, log_completions_steps=2, num_completions_to_log=3, **SMALL)
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion)
    trainer.train()
    assert os.listdir(os.path.join(out, "completions")) == ["completions_00002.jsonl"]
    rows = [json.loads(line) for line in open(os.path.join(out, "completions", "completions_00002.jsonl"))]
    assert len(rows) == 3 and set(rows[0]) == {"step", "prompt", "completion"}  # no companion, no score
    assert all(r["prompt"] in rendered_prompts(trainer, coco_prompt_completion) for r in rows)
