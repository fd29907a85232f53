"""Fault injection (issue 21, deliverable 6): a run that saves every step is killed with SIGKILL at 20 points (inside
steps, inside each phase of a checkpoint's save, inside the pruning of old checkpoints) and resumed each time; its
final generator and companion equal the uninterrupted run's bit for bit. CoT and GENERE run side by side, each in
its own process (tests/scripts/fault_injection.py forks one child per run, so a kill costs no interpreter start)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "fault_injection.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_twenty_sigkills_then_resumes_end_where_the_uninterrupted_run_ends(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    runs = {}
    for algorithm in ("cot", "genere"):
        (tmp_path / algorithm).mkdir()
        cache = {"HFCOOP_CACHE": str(tmp_path / algorithm / "cache")}  # this run's own tiny base model, and no other
        runs[algorithm] = subprocess.Popen([sys.executable, SCRIPT, algorithm, str(tmp_path / algorithm)], env={**env, **cache},
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for algorithm, run in runs.items():
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, f"{algorithm}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        assert stdout.count("killed at step") == 20 and "FAULT INJECTION OK: 20 kills" in stdout, stdout
        assert "checkpoint: " in stdout and "equal bit for bit" in stdout
