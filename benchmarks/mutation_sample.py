"""A seeded sample of mutmut's mutant names per file, for `benchmarks/mutation.sh trainers` (a full run is hours).

    cd SCRATCH && mutmut results --all true > all.txt
    python benchmarks/mutation_sample.py all.txt --per-file 60 --seed 0 > sample.txt
    bash benchmarks/mutation.sh trainers SCRATCH $(cat sample.txt)

Sampling is uniform within each file, so a file's kill rate on its sample estimates its rate over all its mutants.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="output of `mutmut results --all true`")
    p.add_argument("--per-file", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files", nargs="*", default=None, help="module names to sample (default: all)")
    a = p.parse_args()
    by_module: dict[str, list[str]] = defaultdict(list)
    with open(a.results) as f:
        for line in f:
            name = line.strip().split(":")[0]
            match = re.match(r"^(hfcoop(?:\.\w+)+?)\.x", name)
            if match:
                by_module[match.group(1)].append(name)
    rng = random.Random(a.seed)
    for module in sorted(by_module):
        if a.files and module.rsplit(".", 1)[-1] not in a.files:
            continue
        names = sorted(by_module[module])
        for name in sorted(rng.sample(names, min(a.per_file, len(names)))):
            print(name)


if __name__ == "__main__":
    main()
