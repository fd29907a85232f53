"""How long ``hfcoop --help`` takes, beside a bare Python start and the eager import it used to do.

Each command runs ``--repeats`` times as a fresh process; medians in seconds. ``import hfcoop.trainers`` (torch +
transformers + trl) is what ``hfcoop --help`` paid before ``hfcoop/__init__.py`` became lazy.

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


def median_seconds(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    a = parser.parse_args()
    hfcoop = shutil.which("hfcoop") or os.path.join(os.path.dirname(sys.executable), "hfcoop")
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "hfcoop --help": [hfcoop, "--help"],
        "python -m hfcoop.cli --help": [sys.executable, "-m", "hfcoop.cli", "--help"],
        "python -c 'import hfcoop.trainers' (the old eager import)": [sys.executable, "-c", "import hfcoop.trainers"],
    }
    seconds = {name: median_seconds(cmd, a.repeats) for name, cmd in commands.items()}
    base = seconds["python -c pass (baseline)"]
    rows = [[name, f"{s:.3f}", f"{s / base:.1f}"] for name, s in seconds.items()]
    text = "\n".join([
        "# CLI start-up",
        "",
        f"Median of {a.repeats} fresh processes each, seconds, on {os.cpu_count()} CPU cores shared with other jobs; "
        f"code: {git_state()}.",
        "",
        markdown_table(["command", "seconds", "× python -c pass"], rows),
        "",
    ])  # fmt: skip
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "cli_startup.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
