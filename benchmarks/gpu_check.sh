#!/usr/bin/env bash
# GPU readiness check (issue 13, item 5): one GPU, at most ~8 minutes, results under benchmarks/results/gpu_check/.
#
#   bash benchmarks/gpu_check.sh                 # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # the same steps and code paths on CPU with tiny sizes and
#                                                # fewer trainers/steps (checks the script itself; numbers meaningless)
#
# Steps (each under its own time limit; a failing step is reported and the next one still runs):
#   1. env      - GPU, driver and library versions
#   2. speed    - bf16, GPT-2-small shape (12 x 768): s/step, sampled tokens/s and peak GPU memory of every
#                 hfcoop trainer (and CoT in shared-base mode) beside TRL SFT / distillation / GRPO, interleaved
#                 (benchmarks/speed.py --device cuda --bf16)
#   3. memory   - bf16, 124M model: peak GPU memory per trainer, fresh process each, incl. LoRA-SFT vs shared-base
#                 (benchmarks/memory.py --device cuda --bf16)
#   4. zero2    - DeepSpeed ZeRO-2 on one GPU through the CLI with the shipped recipes/accelerate config: a few
#                 CoT steps, checkpoint and export
#   5. qlora    - the 4-bit QLoRA path: benchmarks/gpu_qlora_check.py when it exists (skipped otherwise)
# Exit status: 0 if every step that ran passed.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
export PY DRY
if [ $DRY = 1 ]; then
  OUT=${OUT_DIR:-$ROOT/benchmarks/results/gpu_check_cpu_dry_run}
else
  OUT=${OUT_DIR:-$ROOT/benchmarks/results/gpu_check}
fi
mkdir -p "$OUT"
WORK=$(mktemp -d -t hfcoop_gpu_check_XXXX)
export WORK
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SUMMARY="$OUT/summary.md"
FAILED=0
START=$(date +%s)
{
  echo "# GPU check ($([ $DRY = 1 ] && echo 'CPU dry run: tiny sizes, numbers meaningless' || echo 'one GPU'))"
  echo
  echo "\`bash benchmarks/gpu_check.sh $*\` on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| step | exit status | seconds | log / results |"
  echo "|---|---:|---:|---|"
} > "$SUMMARY"

# step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, its output in $OUT/NAME.log, one summary row.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  # via bash -c so that shell functions (exported below) run under `timeout` too
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  [ $rc -ne 0 ] && FAILED=1
  local note=""
  [ $rc -eq 124 ] && note=" (time limit)"
  echo "   exit $rc$note after ${dt}s"
  echo "| $name | $rc$note | $dt | $name.log $( [ -f "$OUT/$name.md" ] && echo ", $name.md") |" >> "$SUMMARY"
}

# ------------------------------------------------------------------ 1. environment
env_report() {
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import importlib.metadata as md
import torch
for name in ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "-")
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
EOF
}
export -f env_report
step env 60 env_report

# ------------------------------------------------------------------ 2. speed (bf16, GPT-2-small shape)
ALL=hfcoop_mle,trl_sft,hfcoop_cot,trl_distillation,hfcoop_psi_mle,hfcoop_gcn,trl_grpo,hfcoop_cot_shared
if [ $DRY = 1 ]; then
  # Dry-run limits are generous: on a shared 2-core CPU building the trainers alone can take minutes.
  step speed 1200 "$PY" benchmarks/speed.py --device cpu --steps 1 --warmup 1 --chunk 1 --repeats 1 --floor \
    --floor-repeats 1 --batch-size 4 --group-size 2 --length 8 --trainers trl_sft,hfcoop_cot,hfcoop_cot_shared \
    --output "$OUT/speed.md"
else
  step speed 190 "$PY" benchmarks/speed.py --device cuda --bf16 --n-layer 12 --n-embd 768 --n-head 12 \
    --batch-size 16 --group-size 4 --length 32 --steps 10 --warmup 3 --chunk 5 --repeats 1 --floor \
    --trainers "$ALL" --output "$OUT/speed.md"
fi

# ------------------------------------------------------------------ 3. memory (bf16, 124M)
if [ $DRY = 1 ]; then
  step memory 1200 "$PY" benchmarks/memory.py --tiny --trainers trl_sft,hfcoop_cot,trl_sft_lora,hfcoop_cot_shared \
    --output "$OUT/memory.md"
else
  step memory 170 "$PY" benchmarks/memory.py --device cuda --bf16 --batch-size 16 --output "$OUT/memory.md"
fi

# ------------------------------------------------------------------ 4. ZeRO-2 on one GPU through the CLI
zero2() {
  local extra=()
  if [ $DRY = 1 ]; then
    # DeepSpeed's CPU accelerator (gloo); its small C++ extension is compiled on first use (~60 s, then cached).
    export DS_ACCELERATOR=cpu
    extra=(--mixed_precision no --cpu)
  fi
  "$PY" -m accelerate.commands.launch --config_file recipes/accelerate/deepspeed_zero2.yaml --num_processes 1 \
    "${extra[@]}" -m hfcoop.cli train cot --config recipes/coco/cot_tiny.yaml --output_dir "$WORK/zero2" \
    --max_steps 4 --save_steps 2 --logging_steps 1 --quality_samples 0 --max_eval_samples 16 \
    $([ $DRY = 1 ] && echo "--use_cpu true" || echo "--bf16 true") &&
  ls "$WORK/zero2" "$WORK/zero2/checkpoint-4" &&
  # a DeepSpeed checkpoint has its engine state in global_step*/ (a silent fallback to plain DDP would not)
  { ls -d "$WORK/zero2/checkpoint-4"/global_step* || { echo "checkpoint-4 is not a DeepSpeed checkpoint"; false; }; } &&
  "$PY" - "$WORK/zero2" <<'EOF'
import sys
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])  # the exported generator loads back
print("exported generator:", type(model).__name__, sum(p.numel() for p in model.parameters()), "parameters")
EOF
}
export -f zero2
step zero2 $([ $DRY = 1 ] && echo 900 || echo 75) zero2

# ------------------------------------------------------------------ 5. 4-bit QLoRA
if [ -f benchmarks/gpu_qlora_check.py ]; then
  if [ $DRY = 1 ]; then
    if grep -q -- "--cpu-dry-run" benchmarks/gpu_qlora_check.py; then
      step qlora 120 "$PY" benchmarks/gpu_qlora_check.py --cpu-dry-run
    else
      echo "| qlora | skipped | 0 | gpu_qlora_check.py has no --cpu-dry-run (4-bit needs a GPU) |" >> "$SUMMARY"
    fi
  else
    step qlora 60 "$PY" benchmarks/gpu_qlora_check.py
  fi
else
  echo "| qlora | skipped | 0 | benchmarks/gpu_qlora_check.py not present |" >> "$SUMMARY"
fi

{
  echo
  echo "Total $(( $(date +%s) - START )) s. $([ $FAILED = 0 ] && echo 'Every step that ran passed.' || echo 'Some steps FAILED: see their logs.')"
  for f in speed memory; do
    if [ -f "$OUT/$f.md" ]; then echo; echo "---"; echo; sed 's/^# /## /' "$OUT/$f.md"; fi
  done
} >> "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
