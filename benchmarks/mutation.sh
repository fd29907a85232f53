#!/usr/bin/env bash
# Mutation testing with mutmut 3 (pip install mutmut==3.8), as reported in benchmarks/results/mutation.md.
# mutmut copies the project into mutants/ and first runs every selected test once to map tests to functions, so it
# runs in a scratch folder holding the package and the selected tests only.
#
#   bash benchmarks/mutation.sh losses   [SCRATCH_DIR]   # hfcoop/losses.py, pure-function tests: ~15-25 CPU min
#   bash benchmarks/mutation.sh trainers [SCRATCH_DIR] [MUTANT_PATTERN...]
#        # the five trainer files with the trainer tests (in-process ones: a subprocess imports the installed package,
#        # not mutmut's copy). Every test trains tiny models, so a full run is hours on 2 cores: pass mutmut mutant
#        # names or patterns (benchmarks/mutation_sample.py draws a seeded sample) to run a subset.
#   then: cd SCRATCH_DIR && mutmut results
set -euo pipefail
TARGET="${1:?usage: mutation.sh losses|trainers [SCRATCH_DIR] [MUTANT_PATTERN...]}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="${2:-$(mktemp -d)}"
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$SCRATCH/tests_mut"
if [ ! -d "$SCRATCH/hfcoop" ]; then cp -r "$ROOT/hfcoop" "$ROOT/recipes" "$SCRATCH/"; fi
mkdir -p "$SCRATCH/benchmarks" && cp -r "$ROOT/benchmarks/configs" "$SCRATCH/benchmarks/"  # recipes some tests run
case "$TARGET" in
  losses)
    PATHS="hfcoop/losses.py"
    TESTS="test_cot_losses.py test_losses_fused.py test_losses_by_hand.py test_psi_mle.py test_gcn.py test_genere.py"
    # the trainer tests would run for every mutant of a loss they call: hours on 2 cores
    SLOW="not trainer and not resume and not ddp and not two_process and not end_to_end and not learns_the_matching"
    SLOW="$SLOW and not whatever_the_lengths and not layout and not recipe and not generator_failing"
    SLOW="$SLOW and not unconditional and not lambda_zero and not bad_ and not distorted and not scorer"
    SLOW="$SLOW and not generator_weights_at and not mismatched and not non_finite and not config"
    SLOW="$SLOW and not ratio_model_needs and not seeded_black and not old_name" ;;
  trainers)
    PATHS=""
    for a in cot psi_mle gcn genere mle; do PATHS="$PATHS hfcoop/trainers/$a.py hfcoop/trainers/${a}_config.py"; done
    TESTS="test_cot_trainer.py test_psi_mle.py test_gcn.py test_genere.py test_update_order.py test_companion_signal.py"
    TESTS="$TESTS test_update_order_simultaneous.py test_companion_warmup.py test_cot_packed.py test_algorithms.py"
    TESTS="$TESTS test_watching.py"
    # multi-process and subprocess tests run the installed package, not the mutant; bf16 only re-runs a path
    SLOW="not two_process and not ddp and not processes and not bf16 and not batch_layout and not benchmarks_read and not readme and not conditional_benchmark" ;;
  *) echo "unknown target '$TARGET' (losses or trainers)" >&2; exit 2 ;;
esac
for f in conftest.py helpers.py toy.py $TESTS; do cp "$ROOT/tests/$f" "$SCRATCH/tests_mut/"; done
# mutmut 3.8's harness reads `item._nodeid`, which pytest 9 no longer has.
if ! grep -q "_nodeid = property" "$SCRATCH/tests_mut/conftest.py"; then cat >> "$SCRATCH/tests_mut/conftest.py" <<'PY'


import _pytest.nodes  # noqa: E402

if not hasattr(_pytest.nodes.Node, "_nodeid"):
    _pytest.nodes.Node._nodeid = property(lambda self: self.nodeid)
PY
fi
cat > "$SCRATCH/setup.cfg" <<CFG
[mutmut]
source_paths=
$(for p in $PATHS; do echo "    $p"; done)
tests_dir=tests_mut/
also_copy=
    hfcoop/
    recipes/
    benchmarks/
    tests_mut/
pytest_add_cli_args=
    -p
    no:cacheprovider
    -k
    $SLOW
CFG
cd "$SCRATCH"
unset PYTHONPATH  # mutmut imports the package from its mutants/ copy
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 10 mutmut run --max-children 1 "$@"
mutmut results
