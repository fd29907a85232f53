"""The path a user takes outside the checkout: an installed package, TRL's habits, the exported model, a push.

Each test runs what a new user runs (a wheel in an empty folder, TRL's flags, ``pipeline`` on the export) rather
than the repository's own shortcuts.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_hfcoop_and_its_quantization_stack_prints_nothing(tmp_path):
    """bitsandbytes printed "Failed to load CPU gemm_4bit_forward from kernels-community" on every import (the
    kernels library refuses the untrusted Hub kernel; the fallback is bitsandbytes' own): nothing a user can act on."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = "import hfcoop, bitsandbytes, peft, hfcoop.trainers"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "publisher trust" not in done.stderr, done.stderr
    # The filter is narrow: the same logger's other messages still reach the user.
    probe = code + "; import logging; logging.getLogger('bitsandbytes.backends.cpu.ops').warning('other message')"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "other message" in done.stderr
