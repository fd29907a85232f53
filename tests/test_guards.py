"""A run is never lost, mixed with another, resumed from a bad state, or told a secret (issue 21, cases 1-7, 10).

Each test reproduces a case through the CLI (in-process ``main``) or the trainer API on the tiny COCO recipe.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import TrainerCallback

from hfcoop import CoTConfig, MLEConfig, MLETrainer
from hfcoop.cli import main
from hfcoop.guards import (CHECKPOINT_MARKER, checkpoint_problem, check_output_dir, NonFiniteTrainingError,
                           OutputDirError, resolve_resume)
from test_first_contact import COT_RECIPE, MLE_RECIPE, config, flags

TESTS = os.path.dirname(os.path.abspath(__file__))


def written_files(folder) -> list[str]:
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names]


# ------------------------------------------------------------------------------------------------ 1: secrets
def test_every_secret_the_run_knows_reaches_no_written_file(tmp_path, monkeypatch):
    """Case 1: distinct secrets in a flag, both token variables, the generator's kwargs (flag, JSON) and the
    companion's kwargs (YAML); every byte of every file the run writes is scanned for each."""
    secrets = {name: f"hf_{name}Secret0123456789" for name in ("flag", "envA", "envB", "model", "companion")}
    monkeypatch.setenv("HF_TOKEN", secrets["envA"])
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", secrets["envB"])
    recipe = yaml.safe_load(open(COT_RECIPE))
    recipe["companion_init_kwargs"] = {"token": secrets["companion"]}
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = str(tmp_path / "run")
    main(["train", "cot", "--config", str(recipe_path),
          *flags(out, steps=2, save_steps="1", report_to="tensorboard", quality_samples="4",
                 log_completions_steps="1", hub_token=secrets["flag"],
                 model_init_kwargs=json.dumps({"token": secrets["model"]}))])  # fmt: skip
    written = written_files(out)
    assert any("tfevents" in p for p in written) and any("completions_" in p for p in written)
    assert os.path.isfile(os.path.join(out, "checkpoint-2", "hfcoop_training_args.json"))
    assert os.path.isfile(os.path.join(out, "README.md"))
    leaks = {name: [p for p in written if secret.encode() in open(p, "rb").read()] for name, secret in secrets.items()}
    assert leaks == {name: [] for name in secrets}
    card = open(os.path.join(out, "README.md")).read()
    assert '--model_init_kwargs \'{"token": "***"}\'' in card  # the command keeps its shape


def test_secret_keys_at_any_depth_of_init_kwargs_are_redacted(tmp_path):
    """``*api_key*`` / ``*secret*`` / ``*password*`` / ``*_token`` keys nested in init kwargs (a quantization config):
    not in the args JSON, the pickle or the trackers' dict; the live config keeps them for loading."""
    kwargs = {"token": "tok_top_level_1", "quantization_config": {"load_in_4bit": True, "hub_api_key": "key_nested_2",
              "deep": [{"db_password": "pw_in_a_list_3", "my_secret_thing": "sec_deeper_4"}]}}  # fmt: skip
    args = config(CoTConfig, tmp_path, model_init_kwargs=kwargs, companion_init_kwargs={"auth_token": "tok_comp_5"})
    written = [args.to_json_string(), json.dumps(args.to_sanitized_dict()), pickle.dumps(args).decode("latin-1")]
    for secret in ("tok_top_level_1", "key_nested_2", "pw_in_a_list_3", "sec_deeper_4", "tok_comp_5"):
        assert all(secret not in text for text in written), secret
    assert args.model_init_kwargs["quantization_config"]["deep"][0]["db_password"] == "pw_in_a_list_3"
    import copy

    assert copy.deepcopy(args).model_init_kwargs["token"] == "tok_top_level_1"  # a copy in memory still loads


# ------------------------------------------------------------------------------------------------ 2, 7: output_dir
def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {os.path.relpath(p, folder): open(p, "rb").read() for p in written_files(folder)}


def test_a_folder_of_user_files_is_never_overwritten(tmp_path):
    """Case 2: ``--output_dir .`` in a user's checkout replaced its README.md with the model card; with
    ``--overwrite_output_dir`` too a file hfcoop did not write is never replaced."""
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "README.md").write_text("my project\n" * 200)
    with pytest.raises(SystemExit, match=r"is not empty and holds no hfcoop run \(\.git, README\.md\)\. .*"
                                         r"--overwrite_output_dir true\); hfcoop never replaces or removes files"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(str(checkout))])
    with pytest.raises(SystemExit, match=r"would replace \(README\.md\); hfcoop never replaces or removes them"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(str(checkout)), "--overwrite_output_dir", "true"])
    assert (checkout / "README.md").read_text() == "my project\n" * 200
    assert sorted(os.listdir(checkout)) == [".git", "README.md"]  # nothing written, nothing removed


def test_a_folder_of_user_files_is_written_only_with_overwrite_and_left_byte_identical(tmp_path):
    """A non-empty folder that is no hfcoop run was written into without any flag; now the flag is asked for, and
    with it the run writes beside the user's files, which it (and overwriting it later) leaves byte for byte."""
    notes = tmp_path / "notes"
    (notes / "data").mkdir(parents=True)
    (notes / "my_notes.txt").write_text("mine")
    (notes / "data" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    before = snapshot(notes)
    with pytest.raises(SystemExit) as info:
        main(["train", "mle", "--config", MLE_RECIPE, *flags(str(notes))])
    assert str(info.value.code).splitlines()[0] == (
        f"hfcoop: output_dir '{notes}' is not empty and holds no hfcoop run (data, my_notes.txt). Choose an empty or "
        "new output_dir, or write beside these files with overwrite_output_dir=True (CLI: --overwrite_output_dir "
        "true); hfcoop never replaces or removes files it did not write."
    )
    assert sorted(os.listdir(notes)) == ["data", "my_notes.txt"]  # refused before anything was written
    main(["train", "mle", "--config", MLE_RECIPE, *flags(str(notes)), "--overwrite_output_dir", "true"])
    assert (notes / "model.safetensors").exists() and (notes / "_hfcoop_run.json").exists()
    assert {k: v for k, v in snapshot(notes).items() if k in before} == before
    # Now an hfcoop run: replacing it removes only what the run wrote.
    main(["train", "mle", "--config", MLE_RECIPE, *flags(str(notes)), "--overwrite_output_dir", "true"])
    assert (notes / "model.safetensors").exists()
    assert {k: v for k, v in snapshot(notes).items() if k in before} == before


def test_an_empty_folder_is_written_and_only_hfcoops_own_files_count_as_empty(tmp_path):
    """An existing empty folder (the CLI has taken its lock in it by the check) and one holding only a killed run's
    lock and write probe are written without a flag; a single hidden file of the user's is not ignored."""
    empty = tmp_path / "empty"
    empty.mkdir()
    main(["train", "mle", "--config", MLE_RECIPE, *flags(str(empty))])
    assert (empty / "model.safetensors").exists()
    check_output_dir(str(empty), overwrite=True, resuming=False)  # an earlier run's folder: overwrite as before
    assert not (empty / "model.safetensors").exists()
    leftovers = tmp_path / "leftovers"
    leftovers.mkdir()
    (leftovers / "_hfcoop_run.lock").write_text('{"pid": 999999999}')
    (leftovers / ".hfcoop-write-test-999999999").write_text("ok")
    (leftovers / "_hfcoop_run.json.tmp").write_text("{")
    check_output_dir(str(leftovers), overwrite=False, resuming=False)
    assert (leftovers / "_hfcoop_run.json").exists()
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".env").write_text("KEY=1")
    with pytest.raises(OutputDirError, match=r"is not empty and holds no hfcoop run \(\.env\)"):
        check_output_dir(str(hidden), overwrite=False, resuming=False)
    assert os.listdir(hidden) == [".env"]


def test_an_earlier_run_is_refused_resumed_or_replaced_as_before(tmp_path):
    """An hfcoop run's folder (its marker) keeps its rule: refused unless resumed or overwritten; an overwrite
    removes the run's files and keeps the user's, which the strict rule for foreign folders does not refuse."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "_hfcoop_run.json").write_text("{}")
    (out / "model.safetensors").write_text("old weights")
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"holds an earlier run \(model\.safetensors\)"):
        check_output_dir(str(out), overwrite=False, resuming=False)
    check_output_dir(str(out), overwrite=False, resuming=True)
    assert (out / "model.safetensors").exists()
    check_output_dir(str(out), overwrite=True, resuming=False)
    assert sorted(os.listdir(out)) == ["_hfcoop_run.json", "my_notes.txt"]
    check_output_dir(str(out), overwrite=False, resuming=False)  # a run's folder without its results: written


def test_overwrite_removes_the_old_runs_completions(tmp_path):
    """Case 7: ``--overwrite_output_dir`` left the old run's completions/ beside the new run's files."""
    out = str(tmp_path / "run")
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, log_completions_steps="1")])
    assert os.listdir(os.path.join(out, "completions"))
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out), "--overwrite_output_dir", "true"])
    assert not os.path.exists(os.path.join(out, "completions"))


# ------------------------------------------------------------------------------------------------ 3: one run per folder
def test_a_second_live_run_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    """Case 5: two runs on one output_dir both succeeded; the one finishing last silently won."""
    out = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hfcoop.run_lock import acquire_run_lock; "
         "acquire_run_lock(sys.argv[1]); print('locked', flush=True); time.sleep(120)", out],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(TESTS)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=rf"is in use by another hfcoop run \(pid {holder.pid} on host"):
            main(["train", "mle", "--config", MLE_RECIPE, *flags(out)])
        assert not os.path.exists(os.path.join(out, "model.safetensors"))
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a process that is gone
        holder.wait()
    capsys.readouterr()
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out)])
    assert f"taking over the lock of an earlier run in '{out}' that is no longer running (pid {holder.pid}" in (
        capsys.readouterr().err
    )
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert not os.path.exists(os.path.join(out, "_hfcoop_run.lock"))  # released at the end


# ------------------------------------------------------------------------------------------------ 4: resume checks
def test_resume_skips_the_diverged_checkpoint(tiny_lm, coco_text, tmp_path):
    """Case 3: after "diverged ... Last good checkpoint: checkpoint-1", resume=True took the diverged checkpoint."""
    class DivergeAfterSavingStep2(TrainerCallback):  # checkpoint-2 holds weights whose next loss is NaN
        def on_save(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.generator.parameters()).fill_(float("inf"))

    args = config(MLEConfig, tmp_path, max_steps=6, save_strategy="steps", save_steps=1)
    trainer = MLETrainer(tiny_lm, train_dataset=coco_text, args=args, callbacks=[DivergeAfterSavingStep2()])
    out = str(tmp_path / "out")
    with pytest.raises(NonFiniteTrainingError, match=f"diverged at step 3.*Last good checkpoint: {out}/checkpoint-1"):
        trainer.train()
    assert "diverged" in checkpoint_problem(os.path.join(out, "checkpoint-2"))
    assert resolve_resume(True, out) == os.path.join(out, "checkpoint-1")


def test_save_only_model_checkpoints_are_refused_for_resume(tmp_path):
    """Case 4: weights-only checkpoints were marked complete and resumed without optimizer and scheduler."""
    out = str(tmp_path / "run")
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=2, save_steps="1", save_only_model="true")])
    with pytest.raises(SystemExit, match=r"no complete checkpoint \(checkpoint-2: it was saved with save_only_model"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=4), "--resume_from_checkpoint", "true"])
    with pytest.raises(SystemExit, match=r"checkpoint-1': it was saved with save_only_model=True"):
        main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=4), "--resume_from_checkpoint",
              os.path.join(out, "checkpoint-1")])  # fmt: skip


@pytest.mark.parametrize(
    "change, difference",
    [
        (["--max_train_samples", "56"], r"its tokenizer differs from this run's"),  # case 6: same size, other order
        (["--tiny_model_hidden", "48"], r"parameter '\S+' has shape \[96\] in the checkpoint, \[144\] in this run \(another model size\)"),
        (["--algorithm", "cot"], r"it was saved by a mle run, this run is cot"),
    ],
)  # fmt: skip
def test_resume_with_another_tokenizer_size_or_algorithm_is_refused_in_one_line(change, difference, tmp_path):
    """Cases 6 and 10: a changed data set rebuilt the tiny tokenizer (same size, other order) and the checkpoint's
    weights were loaded into it; another algorithm / model size failed deep inside the optimizer's state."""
    out = str(tmp_path / "run")
    small_vocab = {"tiny_model_vocab_size": "60", "save_steps": "2"}  # both data sets fill 60 words: same shapes
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=2, **small_vocab)])
    algorithm, recipe = ("cot", COT_RECIPE) if change[0] == "--algorithm" else ("mle", MLE_RECIPE)
    extra = [] if change[0] == "--algorithm" else change
    with pytest.raises(SystemExit) as info:
        main(["train", algorithm, "--config", recipe, *flags(out, steps=4, **small_vocab), *extra,
              "--resume_from_checkpoint", "true"])  # fmt: skip
    message = str(info.value.code).splitlines()[0]
    assert message.startswith(f"hfcoop: cannot resume from '{out}/checkpoint-2': ")
    assert __import__("re").search(difference, message), message


# ------------------------------------------------------------------------------------------------ 10: disk full
@pytest.mark.parametrize("failure", ["oserror", "torch"])
def test_disk_full_during_a_save_is_one_line_and_keeps_the_newest_complete_checkpoint(failure, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    real_save = torch.save

    def save(obj, f, *a, **kw):
        if str(f).endswith(os.path.join("checkpoint-2", "optimizer.pt")):
            if failure == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit) as info:
        main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=3, save_steps="1")])
    reason = "No space left on device" if failure == "oserror" else r"a file write failed \(is the disk full\?\)"
    assert __import__("re").match(
        rf"hfcoop: saving checkpoint-2 failed: {reason}; the newest complete checkpoint is {out}/checkpoint-1 "
        r"\(intact\)\. Free space", str(info.value.code))  # fmt: skip
    assert checkpoint_problem(os.path.join(out, "checkpoint-1")) is None
    assert not os.path.exists(os.path.join(out, "checkpoint-2"))  # the partial save is gone
    monkeypatch.setattr(torch, "save", real_save)
    main(["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=3, save_steps="1"), "--resume_from_checkpoint",
          "true"])  # fmt: skip
    assert json.load(open(os.path.join(out, "checkpoint-3", CHECKPOINT_MARKER)))["global_step"] == 3
