"""How long ``hfcoop --help`` and ``hfcoop train <algorithm> --help`` take, beside a bare Python start and TRL's
``trl sft --help`` measured in the same rounds.

Each command runs ``--repeats`` times as a fresh process, the commands interleaved round by round (so a load change
hits all of them); medians in seconds, and the per-round ratio of ``hfcoop train cot --help`` to ``trl sft --help``.

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, git_state, markdown_table  # noqa: E402


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    a = parser.parse_args()
    hfcoop = shutil.which("hfcoop") or os.path.join(os.path.dirname(sys.executable), "hfcoop")
    trl = shutil.which("trl") or os.path.join(os.path.dirname(sys.executable), "trl")
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "hfcoop --help": [hfcoop, "--help"],
        "hfcoop train cot --help": [hfcoop, "train", "cot", "--help"],
        "trl sft --help": [trl, "sft", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(a.repeats):
        for name, cmd in commands.items():
            times[name].append(seconds(cmd))
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["python -c pass (baseline)"]
    rows = [[name, f"{s:.3f}", f"{s / base:.1f}"] for name, s in median.items()]
    ratios = [h / t for h, t in zip(times["hfcoop train cot --help"], times["trl sft --help"])]
    text = "\n".join([
        "# CLI start-up",
        "",
        f"Median of {a.repeats} fresh processes each, seconds, on {os.cpu_count()} CPU cores shared with other jobs; "
        f"code: {git_state()}.",
        "",
        markdown_table(["command", "seconds", "× python -c pass"], rows),
        "",
        "`hfcoop train cot --help` / `trl sft --help`, per round: " + ", ".join(f"{r:.2f}" for r in ratios)
        + f" (median {statistics.median(ratios):.2f}); load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
    ])  # fmt: skip
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "cli_startup.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
