"""The `hfcoop` command end to end on bundled data and a tiny model built by the CLI itself."""

import glob
import json
import os
import subprocess
import sys

import pytest

from hfcoop.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "recipes", "data")
RECIPE = os.path.join(ROOT, "recipes", "coco", "cot_tiny.yaml")


def small_run_flags(out):
    return [
        "--dataset_name", os.path.join(DATA, "coco_train_sample.txt"),
        "--eval_dataset_name", os.path.join(DATA, "coco_test_sample.txt"),
        "--max_train_samples", "256", "--max_eval_samples", "64", "--quality_samples", "16",
        "--tiny_model_hidden", "32", "--tiny_model_layers", "1", "--tiny_model_vocab_size", "800",
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "8",
        "--logging_steps", "2", "--save_steps", "2", "--output_dir", out, "--disable_tqdm", "true",
    ]  # fmt: skip


def test_train_generate_evaluate(tmp_path, capsys):
    out = str(tmp_path / "run")
    main(["train", "cot", "--config", RECIPE, *small_run_flags(out)])
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "bleu-2" in printed
    quality = json.load(open(os.path.join(out, "quality.json")))
    assert set(quality) == {"before", "after"}
    assert quality["before"]["nll_per_token"] != quality["after"]["nll_per_token"]
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert os.path.isfile(os.path.join(out, "training_curves.png"))
    card = open(os.path.join(out, "README.md")).read()
    assert "hfcoop train cot" in card
    assert f"| nll_per_token | {quality['before']['nll_per_token']:.4f} | {quality['after']['nll_per_token']:.4f} |" in card
    assert "datasets:" not in card.split("---")[1]  # local files are no Hub dataset ids
    assert "**Evaluation data:** " + os.path.join(DATA, "coco_test_sample.txt") in card

    main(["generate", "--model_name_or_path", out, "--num_samples", "3", "--max_new_tokens", "6"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["completion"], str) for r in rows)

    metrics_file = str(tmp_path / "metrics.json")
    main(["evaluate", "--model_name_or_path", out, "--dataset_name", os.path.join(DATA, "coco_test_sample.txt"),
          "--max_eval_samples", "50", "--num_samples", "8", "--max_new_tokens", "8", "--output_file", metrics_file])  # fmt: skip
    metrics = json.load(open(metrics_file))
    assert {"bleu-2", "self-bleu-2", "distinct-1", "nll_per_token"} <= set(metrics)
    assert abs(metrics["nll_per_token"] - quality["after"]["nll_per_token"]) > 0  # a real, separate evaluation


def test_resume_from_checkpoint_through_the_cli(tmp_path):
    out = str(tmp_path / "run")
    recipe = RECIPE.replace("cot_tiny", "mle_tiny")
    main(["train", "mle", "--config", recipe, *small_run_flags(out), "--quality_samples", "0"])
    main(["train", "mle", "--config", recipe, *small_run_flags(out), "--quality_samples", "0", "--max_steps", "6",
          "--resume_from_checkpoint", os.path.join(out, "checkpoint-4")])  # fmt: skip
    state = json.load(open(os.path.join(out, "checkpoint-6", "trainer_state.json")))
    assert state["global_step"] == 6


def test_unknown_algorithm_verb_field_and_bad_yaml(tmp_path):
    with pytest.raises(SystemExit, match="unknown algorithm 'gan'"):
        main(["train", "gan", "--config", RECIPE])
    with pytest.raises(SystemExit, match="unknown command 'fit'"):
        main(["fit"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [1\n")
    with pytest.raises(SystemExit, match="not valid YAML"):
        main(["train", "cot", "--config", str(bad)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("dataset_name: x.txt\nlearning_rte: 0.1\n")
    with pytest.raises(SystemExit, match="learning_rte"):
        main(["train", "cot", "--config", str(unknown)])


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "hfcoop.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


def test_sweep_writes_curve_png_and_csv(tmp_path, tiny_lm):
    out = str(tmp_path / "sweep")
    rows = main_sweep(["sweep", "--model_name_or_path", tiny_lm, "--dataset_name",
                       os.path.join(DATA, "coco_test_sample.txt"), "--max_eval_samples", "40", "--num_samples", "12",
                       "--max_new_tokens", "6", "--temperatures", "0.5", "1.5", "--output_dir", out])  # fmt: skip
    assert os.path.isfile(os.path.join(out, "sweep.png"))
    lines = open(os.path.join(out, "sweep.csv")).read().strip().splitlines()
    assert len(lines) == 3 and "self-bleu-4" in lines[0]
    # a colder temperature gives less diverse samples: more shared n-grams between them
    cold, hot = rows
    assert cold["self-bleu-2"] > hot["self-bleu-2"]


def main_sweep(argv):
    from hfcoop.cli import sweep_cli

    return sweep_cli(argv[1:])


def test_generate_with_cooperative_decoding(tmp_path, tiny_lm, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    disc = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2,
                                                    n_positions=64, num_labels=1, pad_token_id=tok.pad_token_id))  # fmt: skip
    disc_dir = str(tmp_path / "disc")
    disc.save_pretrained(disc_dir)
    tok.save_pretrained(disc_dir)
    for decoding in ("resample", "mcts"):
        main(["generate", "--model_name_or_path", tiny_lm, "--num_samples", "2", "--max_new_tokens", "3",
              "--decoding", decoding, "--discriminator_name_or_path", disc_dir, "--num_simulations", "11"])  # fmt: skip
        rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert len(rows) == 2
    with pytest.raises(SystemExit, match="needs --discriminator_name_or_path"):
        main(["generate", "--model_name_or_path", tiny_lm, "--decoding", "mcts"])


@pytest.mark.parametrize(
    "file_name, task, n_rows",
    [("xsum_sample.json", "summarization", 10), ("squad_sample.json", "question_generation", 8),
     ("scitldr_sample.jsonl", "auto", 100), ("squad_qg_sample.jsonl", "auto", 300)],
)  # fmt: skip
def test_task_presets_on_real_samples(file_name, task, n_rows):
    from hfcoop.data import apply_task, load_any_dataset

    data = apply_task(load_any_dataset(os.path.join(DATA, file_name)), task)
    assert data.column_names == ["prompt", "completion"] and len(data) == n_rows
    row = data[0]
    assert row["completion"].startswith(" ") and len(row["completion"]) > 3
    assert row["prompt"].endswith("question:" if "squad" in file_name else "TL;DR:")


def test_task_preset_errors_name_the_columns():
    from datasets import Dataset

    from hfcoop.data import apply_task

    with pytest.raises(ValueError, match="match no preset"):
        apply_task(Dataset.from_dict({"article": ["x"]}), "summarization")
    with pytest.raises(ValueError, match="Unknown task"):
        apply_task(Dataset.from_dict({"article": ["x"]}), "translation")


def test_report_to_tensorboard_writes_namespaced_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = str(tmp_path / "run")
    main(["train", "cot", "--config", RECIPE, *small_run_flags(out), "--quality_samples", "0",
          "--report_to", "tensorboard", "--logging_steps", "1"])  # fmt: skip
    (events,) = glob.glob(os.path.join(out, "runs", "*", "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/companion/loss", "train/generator/kl_per_token"} <= tags


def test_train_genere_through_the_cli(tmp_path):
    out = str(tmp_path / "genere")
    recipe = os.path.join(ROOT, "recipes", "genere", "genere_tiny.yaml")
    main(["train", "genere", "--config", recipe, "--dataset_name", os.path.join(DATA, "equations_train.jsonl"),
          "--eval_dataset_name", os.path.join(DATA, "equations_test.jsonl"), "--max_steps", "4",
          "--mle_warmup_steps", "1", "--quality_samples", "0", "--tiny_model_hidden", "32", "--output_dir", out,
          "--disable_tqdm", "true"])  # fmt: skip
    mixture = json.load(open(os.path.join(out, "genere_mixture.json")))
    assert mixture["generators"][0] == "compute_words" and abs(sum(mixture["mixture_proportions"]) - 1) < 1e-6
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
