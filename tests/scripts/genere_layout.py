"""GENERE's γ after 2 steps over fixed rows (tests/helpers.row_keyed_genere_gamma), under `accelerate launch`.

usage: genere_layout.py MODEL_DIR OUTPUT_DIR PER_DEVICE_BATCH ACCUMULATION
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import row_keyed_genere_gamma  # noqa: E402

result = row_keyed_genere_gamma(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
if int(os.environ.get("RANK", "0")) == 0:
    print("WORLD_SIZE", result["world_size"])
    print("GENERE", json.dumps(result))
