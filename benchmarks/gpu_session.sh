#!/usr/bin/env bash
# One lease on a CUDA machine: environment, the `gpu` tests, the kernel tests compiled for the device (no
# interpreter), and the kernel benchmarks with their JSON. Each phase has its own time limit so that one hang does not
# cost the others; logs land in $OUT (the device tool's folder) or ./gpu-out.
#
#   bash benchmarks/gpu_session.sh [gpu-tests|bench|tune|kernel-tests|all ...]   (the environment is always logged)
#
# With no argument it runs `gpu-tests bench` (at most 7 minutes), which fits a 15-minute device budget with the
# machine's start and one rerun; `all` adds the compiled kernel suite (up to 5 more minutes).
set -o pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
phases=${*:-gpu-tests bench}

run_phase() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25
    echo "=== $name exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/env.txt"
$PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/env.txt"

for phase in $phases; do
    case $phase in
    gpu-tests | all)
        run_phase gpu-tests 180 $PY -m pytest -m gpu tests -q -p no:cacheprovider ;;&
    bench | all)
        run_phase bench 240 $PY -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
            --benchmark-json="$OUT/bench.json" --benchmark-columns=median,min,max,rounds ;;&
    tune)
        run_phase tune 360 $PY benchmarks/tune_flash_attention.py --budget 300 --json "$OUT/tune.json" ;;&
    kernel-tests | all)
        run_phase kernel-tests "${KERNEL_TESTS_LIMIT:-300}" $PY -m pytest tests/kernels \
            tests/distributed/test_block_attention.py -v -n 14 -p no:benchmark -p no:cacheprovider --tb=short ;;
    esac
done
