"""A user's first contact: secrets, earlier runs, divergence, settings, resume faults, bad data, CLI errors.

Each test reproduces a way a new user lost data, secrets or time, through the public API or the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

import transformers.trainer
from helpers import StopAfter
from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, MLEConfig, MLETrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.cli import cache_dir, main
from hfcoop.data import load_any_dataset
from hfcoop.guards import CHECKPOINT_MARKER, NonFiniteTrainingError, OutputDirError
from hfcoop.tiny import build_tiny_model
from test_hub import FakeHub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "recipes", "data")
MLE_RECIPE = os.path.join(ROOT, "recipes", "coco", "mle_tiny.yaml")
COT_RECIPE = os.path.join(ROOT, "recipes", "coco", "cot_tiny.yaml")
SENTINEL = "hf_SENTINELtoken0123456789"


def flags(out: str, steps: int = 2, **extra: str) -> list[str]:
    base = {
        "dataset_name": os.path.join(DATA, "coco_train_sample.txt"),
        "eval_dataset_name": os.path.join(DATA, "coco_test_sample.txt"),
        "max_train_samples": "64", "max_eval_samples": "16", "quality_samples": "0", "tiny_model_hidden": "32",
        "tiny_model_layers": "1", "tiny_model_vocab_size": "400", "max_steps": str(steps),
        "per_device_train_batch_size": "8", "max_completion_length": "8", "logging_steps": "1", "save_steps": "2",
        "output_dir": out, "disable_tqdm": "true", "report_to": "none",
    }  # fmt: skip
    base.update(extra)
    return [w for k, v in base.items() for w in (f"--{k}", v)]


def config(cls, tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8, max_completion_length=8,
                report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True)  # fmt: skip
    base.update(kw)
    return cls(**base)


# ------------------------------------------------------------------------------------------------------- secrets
def test_hub_token_reaches_no_file_and_the_run_is_pushed_once(tmp_path, monkeypatch):
    """--hub_token on the command line: not in the card, args JSON, pickles, TensorBoard, checkpoints or uploads."""
    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = str(tmp_path / "run")
    main(["train", "cot", "--config", COT_RECIPE, *flags(out, steps=4, report_to="tensorboard", quality_samples="4",
                                                        push_to_hub="true", hub_token=SENTINEL, hub_strategy="end",
                                                        hub_include_reports="true")])  # fmt: skip
    written = [os.path.join(r, n) for r, _, names in os.walk(out) for n in names]
    assert any(p.endswith(".safetensors") for p in written) and any("tfevents" in p for p in written)
    leaks = [p for p in written if SENTINEL.encode() in open(p, "rb").read()]
    assert leaks == []
    assert len(hub.uploads) == 1, [u["files"].keys() for u in hub.uploads]  # save_model pushed; nothing twice
    uploaded = hub.uploads[0]["files"]
    assert "README.md" in uploaded and "quality.json" in uploaded
    assert all(SENTINEL.encode() not in content for content in uploaded.values())
    card = uploaded["README.md"].decode()
    assert "--hub_token ***" in card  # the reproduce command keeps the flag, not the value
    assert hub.created[0][1] == SENTINEL  # the token was still used to talk to the Hub


def test_pickled_config_drops_the_token(tmp_path):
    import pickle

    args = config(CoTConfig, tmp_path, hub_token=SENTINEL)
    assert SENTINEL.encode() not in pickle.dumps(args)
    assert SENTINEL not in args.to_json_string()
    assert args.hub_token == SENTINEL  # the live config keeps it


# ------------------------------------------------------------------------------------------------- earlier runs
def test_an_earlier_run_is_refused_overwritten_cleanly_or_resumed(tmp_path):
    out = str(tmp_path / "run")
    main(["train", "cot", "--config", COT_RECIPE, *flags(out, save_companion="true")])
    first_model = open(os.path.join(out, "model.safetensors"), "rb").read()
    (tmp_path / "run" / "my_notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds an earlier run"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(out)])
    assert open(os.path.join(out, "model.safetensors"), "rb").read() == first_model  # untouched
    # Overwrite: the MLE run must not sit beside CoT's mediator and checkpoints.
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, save_steps="100"), "--overwrite_output_dir", "true"])
    names = set(os.listdir(out))
    assert "mediator" not in names and "quality.json" not in names  # CoT's companion export is gone
    checkpoints = [n for n in names if n.startswith("checkpoint-")]
    assert all(not os.path.exists(os.path.join(out, c, "mediator")) for c in checkpoints)  # only MLE's own
    assert "my_notes.txt" in names  # not a run file: left alone
    assert json.load(open(os.path.join(out, "hfcoop_training_args.json")))["output_dir"] == out
    # Resuming continues the run in place instead of being refused.
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=4, save_steps="2"), "--overwrite_output_dir",
          "true"])  # fmt: skip
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=6, save_steps="2"), "--resume_from_checkpoint",
          "true"])  # fmt: skip
    assert json.load(open(os.path.join(out, "checkpoint-6", "trainer_state.json")))["global_step"] == 6


def test_trainer_refuses_an_earlier_run_before_training(tiny_lm, coco_text, tmp_path):
    finished = MLETrainer(tiny_lm, train_dataset=coco_text, args=config(MLEConfig, tmp_path))
    finished.train()
    finished.save_model()
    trainer = MLETrainer(tiny_lm, train_dataset=coco_text, args=config(MLEConfig, tmp_path))
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_unwritable_output_dir_is_refused_at_construction(tiny_lm, coco_text, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="cannot be written"):
        MLETrainer(tiny_lm, train_dataset=coco_text, args=config(MLEConfig, tmp_path, output_dir=str(blocker / "out")))


def test_cached_tiny_model_depends_on_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCOOP_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run")
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, save_steps="100")])
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, save_steps="100", tiny_model_hidden="48"),
          "--overwrite_output_dir", "true"])  # fmt: skip
    assert not any(n.startswith("tiny-base-model") for n in os.listdir(out))  # scratch lives outside the run
    tiny = [os.path.join(cache_dir(), n) for n in os.listdir(cache_dir())]
    assert len(tiny) == 2 and all(os.path.basename(t).startswith("tiny-base-model-") for t in tiny)  # no partial left
    widths = {json.load(open(os.path.join(t, "config.json")))["n_embd"] for t in tiny}
    assert widths == {32, 48}
    assert json.load(open(os.path.join(out, "config.json")))["n_embd"] == 48  # the run used the new settings


# ------------------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("algorithm", ["mle_noclip", "cot", "psi_mle", "gcn"])
def test_divergence_stops_with_an_error_and_exports_nothing(algorithm, tiny_lm, coco_text, tmp_path):
    classes = {"mle_noclip": (MLEConfig, MLETrainer, {"max_grad_norm": 0.0}), "cot": (CoTConfig, CoTTrainer, {}),
               "psi_mle": (PsiMLEConfig, PsiMLETrainer, {}), "gcn": (GCNConfig, GCNTrainer, {})}  # fmt: skip
    config_cls, trainer_cls, extra = classes[algorithm]
    args = config(config_cls, tmp_path, learning_rate=1e4, max_steps=6, save_strategy="steps", save_steps=1, **extra)
    trainer = trainer_cls(tiny_lm, train_dataset=coco_text, args=args)
    with pytest.raises(NonFiniteTrainingError, match=r"diverged at step \d+.*Lower learning_rate"):
        trainer.train()
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists()  # nothing exported
    step = trainer.state.global_step
    # The checkpoint holding the diverged weights is no longer resumable; earlier ones are.
    assert not (out / f"checkpoint-{step}" / CHECKPOINT_MARKER).exists()
    for name in os.listdir(out):
        if name.startswith("checkpoint-") and int(name.split("-")[1]) < step:
            assert (out / name / CHECKPOINT_MARKER).exists()


def test_non_finite_weights_are_never_saved(tiny_lm, coco_text, tmp_path):
    trainer = MLETrainer(tiny_lm, train_dataset=coco_text, args=config(MLEConfig, tmp_path))
    with torch.no_grad():
        next(trainer.pair.generator.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteTrainingError, match="refusing to save"):
        trainer.save_model()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_divergence_exits_non_zero_with_one_line(tmp_path):
    out = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "hfcoop.cli", "train", "mle", "--config", MLE_RECIPE,
         *flags(out, steps=6, learning_rate="1e4", max_grad_norm="0")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    last = [line for line in result.stderr.strip().splitlines() if line.startswith("hfcoop:")]
    assert last and "diverged at step" in last[-1]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(out, "model.safetensors"))


# ------------------------------------------------------------------------------------------------- settings
def test_zero_mediator_learning_rate_freezes_the_mediator(tiny_lm, coco_text, tmp_path):
    args = config(CoTConfig, tmp_path, mediator_learning_rate=0.0, learning_rate=1e-2)
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    before = {k: v.clone() for k, v in trainer.pair.companion.state_dict().items()}
    trainer.train()
    after = trainer.pair.companion.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    companion_ids = {id(p) for p in trainer.pair.companion.parameters()}
    lrs = {any(id(p) in companion_ids for p in g["params"]): g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs[True] == 0.0 and lrs[False] > 0  # the generator still learns at its own rate


@pytest.mark.parametrize(
    "field,value,message",
    [("max_steps", -5, "max_steps"), ("top_p", 0.0, "top_p"), ("top_p", 1.5, "top_p"), ("top_k", -1, "top_k"),
     ("temperature", 0.0, "temperature"), ("divergence_loss", 0.0, "divergence_loss")],
)  # fmt: skip
def test_bad_settings_are_refused(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        config(CoTConfig, tmp_path, **{field: value})


def test_all_empty_completions_are_refused(tiny_lm, tmp_path):
    data = Dataset.from_dict({"prompt": ["a man", "a dog"], "completion": ["", "  "]})
    with pytest.raises(ValueError, match="every 'completion' is empty"):
        MLETrainer(tiny_lm, train_dataset=data, args=config(MLEConfig, tmp_path))


def test_mediator_with_same_size_but_other_vocabulary_is_refused(tiny_lm, coco_text, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    other = [" ".join(reversed(line.split())) + " zebra quokka" for line in coco_text["text"]] * 3
    path = build_tiny_model(str(tmp_path / "other"), other, vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2,
                            n_positions=64)  # fmt: skip
    other_tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if len(other_tok) != len(tok):  # make the sizes equal so only the vocabularies differ
        model.resize_token_embeddings(len(tok))
        model.save_pretrained(path)
    assert other_tok.get_vocab() != tok.get_vocab()
    with pytest.raises(ValueError, match="different vocabulary"):
        CoTTrainer(tiny_lm, path, train_dataset=coco_text, args=config(CoTConfig, tmp_path))


# ------------------------------------------------------------------------------------------------- resume faults
def test_resume_true_skips_a_checkpoint_cut_short_and_refuses_one_without_state(tmp_path, capsys):
    out = str(tmp_path / "run")
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=4, save_steps="2", save_total_limit="5")])
    # A job killed while writing checkpoint-4: the marker (written last) and part of the state are missing.
    os.remove(os.path.join(out, "checkpoint-4", CHECKPOINT_MARKER))
    os.remove(os.path.join(out, "checkpoint-4", "optimizer.pt"))
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=6, save_steps="2", save_total_limit="5"),
          "--resume_from_checkpoint", "true"])  # fmt: skip
    state = json.load(open(os.path.join(out, "checkpoint-6", "trainer_state.json")))
    assert state["global_step"] == 6
    history = [h["step"] for h in state["log_history"] if "loss" in h]
    assert history[:2] == [1, 2] and 3 in history  # resumed from checkpoint-2: steps 3 and 4 were trained again
    # An explicit checkpoint without optimizer state, or without its completion marker, is refused (it would not
    # resume exactly).
    os.remove(os.path.join(out, "checkpoint-6", "optimizer.pt"))
    with pytest.raises(SystemExit, match="lacks optimizer state"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=8), "--resume_from_checkpoint",
              os.path.join(out, "checkpoint-6")])  # fmt: skip
    os.remove(os.path.join(out, "checkpoint-6", CHECKPOINT_MARKER))
    with pytest.raises(SystemExit, match="has no completion marker"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=8), "--resume_from_checkpoint",
              os.path.join(out, "checkpoint-6")])  # fmt: skip


# ------------------------------------------------------------------------------------------------- bad data
BAD_FILES = {
    "empty.txt": (b"", "is empty"),
    "blank.jsonl": (b"\n  \n\n", "is empty"),
    "malformed.jsonl": (b'{"text": "a man"}\n{"text": "a dog"\n{"text": "x"}\n', "line 2: not a JSON object"),
    "latin1.txt": ("a caf\u00e9 on a street\n".encode("latin-1"), "line 1: bytes that are not UTF-8"),
    "cells.csv": (b"prompt,completion\na man,riding\na dog,\n", "row 1 has no 'completion'"),
    "broken.json": (b'{"data": [ {"text": "a"}, ]', "not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_data_files_name_the_file_and_row(name, tmp_path, tiny_lm):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        data = load_any_dataset(str(path))
        MLETrainer(tiny_lm, train_dataset=data, args=config(MLEConfig, tmp_path))
    assert "row" in str(info.value) or name in str(info.value)


def test_cli_errors_are_one_actionable_line(tmp_path):
    bad = tmp_path / "malformed.jsonl"
    bad.write_bytes(BAD_FILES["malformed.jsonl"][0])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hfcoop.cli", "train", "mle", "--config", MLE_RECIPE,
           *flags(str(tmp_path / "o"), dataset_name=str(bad))]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"hfcoop: {bad}, line 2" in result.stderr
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_missing_config_and_model_path_say_so(tmp_path):
    with pytest.raises(SystemExit, match="--config file 'recipes/nope.yaml' does not exist"):
        main(["train", "cot", "--config", "recipes/nope.yaml"])
    with pytest.raises(SystemExit, match="path './no/such/model' does not exist"):
        main(["train", "cot", "--config", COT_RECIPE, *flags(str(tmp_path / "o")), "--model_name_or_path",
              "./no/such/model"])  # fmt: skip


def test_generate_truncates_prompts_longer_than_the_model(tiny_lm, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(" ".join(["a man riding a bike"] * 40) + "\n")  # 200 words, the model has 64 positions
    rows = main_rows(["generate", "--model_name_or_path", tiny_lm, "--prompts_file", str(prompts), "--num_samples",
                      "2", "--max_new_tokens", "6"], capsys)  # fmt: skip
    assert len(rows) == 2 and all(isinstance(r["completion"], str) for r in rows)


def main_rows(argv, capsys):
    main(argv)
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]


def test_card_of_a_script_run_redacts_tokens_from_sys_argv(tiny_lm, coco_text, tmp_path, monkeypatch):
    """API users run `python train.py --hub_token ...`: the card's reproduce command comes from sys.argv."""
    monkeypatch.setattr(sys, "argv", ["train.py", "--hub_token", SENTINEL, f"--other_token={SENTINEL}", "--lr", "1"])
    trainer = MLETrainer(tiny_lm, train_dataset=coco_text, args=config(MLEConfig, tmp_path))
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert SENTINEL not in card and "--hub_token ***" in card and "--other_token=***" in card and "--lr 1" in card
