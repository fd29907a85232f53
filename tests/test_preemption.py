"""Preemption (issue 21, deliverable 5): SIGTERM / SIGINT stop at the next step boundary with a complete checkpoint and
exit 143 / 130 with one line saying how to resume; a second signal stops at once; Ctrl-C prints no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from hfcoop import MLEConfig, MLETrainer
from hfcoop.cli import main
from hfcoop.guards import CHECKPOINT_MARKER, checkpoint_problem, resolve_resume
from test_first_contact import MLE_RECIPE, config, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_at_a_step_boundary_with_a_checkpoint_and_the_run_resumes(signum, code, tmp_path):
    out = str(tmp_path / "run")
    argv = ["train", "mle", "--config", MLE_RECIPE, *flags(out, steps=20, save_steps="1000")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": ROOT}
    run = subprocess.Popen([sys.executable, "-m", "hfcoop.cli", *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    for line in run.stdout:  # the first logged step: training is under way
        if line.startswith("{'loss'"):
            run.send_signal(signum)
            break
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout
    last = [line for line in stderr.splitlines() if line.startswith("hfcoop:")][-1]
    name = signal.Signals(signum).name
    checkpoint = resolve_resume(True, out)
    step = int(checkpoint.rsplit("-", 1)[1])
    assert last == (f"hfcoop: stopped by {name} after step {step} (checkpoint saved: {checkpoint}). Resume: the same "
                    "command with --resume_from_checkpoint true (API: trainer.train(resume_from_checkpoint=True)).")  # fmt: skip
    assert 1 <= step < 20 and checkpoint_problem(checkpoint) is None
    assert not os.path.exists(os.path.join(out, "model.safetensors"))  # an interrupted run exports nothing
    main([*argv, "--resume_from_checkpoint", "true"])
    state = json.load(open(os.path.join(out, "checkpoint-20", "trainer_state.json")))
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, 21))  # no step lost or repeated
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


def test_a_second_signal_stops_at_once_and_the_newest_complete_checkpoint_survives(tiny_lm, coco_text, tmp_path,
                                                                                      monkeypatch):  # fmt: skip
    """The first Ctrl-C asks for a checkpoint at the end of step 3; the second arrives while that checkpoint is being
    written and stops there: checkpoint-3 never becomes complete, checkpoint-2 stays resumable."""

    class CtrlCAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    real_save, second = torch.save, []

    def save(obj, f, *a, **kw):
        if str(f).endswith(os.path.join("checkpoint-3", "optimizer.pt")):
            second.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, inside the save
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    args = config(MLEConfig, tmp_path, max_steps=6, save_strategy="steps", save_steps=1)
    trainer = MLETrainer(tiny_lm, train_dataset=coco_text, args=args, callbacks=[CtrlCAtStep3()])
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.train()
    assert second  # the first Ctrl-C did not stop the run: it asked for the checkpoint of step 3
    assert type(info.value) is KeyboardInterrupt  # the second stopped at once, not the orderly TrainingInterrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    out = str(tmp_path / "out")
    assert not os.path.exists(os.path.join(out, "checkpoint-3", CHECKPOINT_MARKER))
    assert os.path.exists(os.path.join(out, "checkpoint-3", "model.safetensors"))  # cut inside the save
    assert not os.path.exists(os.path.join(out, "checkpoint-3", "scheduler.pt"))
    assert resolve_resume(True, out) == os.path.join(out, "checkpoint-2")
    monkeypatch.setattr(torch, "save", real_save)
    resumed = MLETrainer(tiny_lm, train_dataset=coco_text, args=args)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6 and checkpoint_problem(os.path.join(out, "checkpoint-6")) is None


def test_ctrl_c_outside_training_is_one_line_without_traceback(monkeypatch, capsys):
    """Case 10: Ctrl-C while data loads or models build printed a 15-frame traceback."""
    import hfcoop.cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(hfcoop.cli.VERBS, "env", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["env"])
    assert info.value.code == 130
    assert capsys.readouterr().err == "hfcoop: interrupted (Ctrl-C).\n"
