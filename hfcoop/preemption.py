"""Preemption: SIGTERM (a cluster taking the node back) and SIGINT (Ctrl-C) stop training at the next step boundary.

The first signal asks the run to stop: at the end of the step being computed it writes a complete checkpoint and
``train`` raises :class:`TrainingInterrupted` (the CLI exits 143 for SIGTERM, 130 for SIGINT, with one line saying
how to resume). A second signal stops at once; the checkpoint being written then has no completion marker, so the
newest *complete* checkpoint is still the one a resume picks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

from transformers import TrainerCallback

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal(TrainerCallback):
    """Holds the signal that asked to stop; at each step end turns it into "save a checkpoint and stop"."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second signal: stop now, as the signal's default would
            restore_default(signum)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\nhfcoop: {signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
              "(send it again to stop at once).", file=sys.stderr, flush=True)  # fmt: skip

    def requested(self) -> bool:
        """Whether any process was asked to stop (every process must stop at the same step under DDP)."""
        asked = self.signum is not None
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:
            import torch

            flag = torch.tensor([float(asked)], device=accelerator.device)
            asked = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        return asked

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested():
            self.signum = self.signum or signal.SIGTERM  # a process told by another rank
            control.should_save = True
            control.should_training_stop = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers, for the duration of training (only the main thread can install them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def restore_default(signum: int) -> None:
    signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
