#!/usr/bin/env bash
# One GPU lease, one command: build the extension, record the environment, run the tests and
# the benchmarks, leave logs and results under $OUT (default ./gpu-out).
#   bash benchmarks/gpu_session.sh COMMIT [build] [tests-gpu] [tests-all] [bench-mixed]
#        [bench-search] [bench-pcdarts] [bench-second-order] [bench-methods] [profile] [a pytest path] ...
# Stages run in the order given; a failed build stops the rest.
set -uo pipefail
COMMIT=${1:?commit}; shift
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FASTDARTS_COMMIT=$COMMIT PYTHONPATH=$PWD
DEV=$(python3 -c "import torch; n=torch.cuda.get_device_name(0); print(n.split()[1] if n.startswith('NVIDIA') else n.split()[0])")
STAMP=$DEV-$(date +%F)-$COMMIT
for stage in "$@"; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    build)
      MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps -e . \
        >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -m fastdarts.info | tee "$OUT/$STAMP-info.txt" ;;
    tests-gpu)
      python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/kernels tests/test_readme.py "tests/test_accuracy.py::test_half_precision_supernets_are_as_accurate_as_pytorch" -rs 2>&1 \
        | tee "$OUT/$STAMP-tests-gpu.log" | tail -40 ;;
    tests-all)
      python3 -m pytest -q -p no:cacheprovider -n 12 tests -rs 2>&1 \
        | tee "$OUT/$STAMP-tests.log" | tail -25 ;;
    bench-mixed)
      for b in triton cuda; do
        FASTDARTS_BACKEND=$b python3 -m pytest -q -p no:cacheprovider \
          benchmarks/bench_mixed_op.py --benchmark-json="$OUT/$STAMP-mixed_op-$b.json" 2>&1 | tail -5
        python3 benchmarks/summarize.py "$OUT/$STAMP-mixed_op-$b.json" > "$OUT/$STAMP-mixed_op-$b.md"
        cat "$OUT/$STAMP-mixed_op-$b.md"
      done ;;
    bench-search)
      python3 -m pytest -q -p no:cacheprovider benchmarks/bench_search_step.py \
        --benchmark-json="$OUT/$STAMP-search_step.json" 2>&1 | tail -5
      python3 benchmarks/summarize.py "$OUT/$STAMP-search_step.json" \
        | tee "$OUT/$STAMP-search_step.md"
      python3 -m benchmarks.bench_search_step 10 | tee "$OUT/$STAMP-search_step-interleaved.json" ;;
    bench-pcdarts)
      python3 -m pytest -q -p no:cacheprovider benchmarks/bench_pcdarts.py \
        --benchmark-json="$OUT/$STAMP-imagenet_supernets.json" 2>&1 | tail -5
      python3 benchmarks/summarize.py "$OUT/$STAMP-imagenet_supernets.json" \
        | tee "$OUT/$STAMP-imagenet_supernets.md" ;;
    bench-second-order)
      python3 -m pytest -q -p no:cacheprovider benchmarks/bench_second_order.py \
        --benchmark-json="$OUT/$STAMP-second_order.json" 2>&1 | tail -5
      python3 benchmarks/summarize.py "$OUT/$STAMP-second_order.json" \
        | tee "$OUT/$STAMP-second_order.md" ;;
    profile)
      for space in darts nb201; do
        python3 -m benchmarks.profile_step --space $space 2>/dev/null \
          > "$OUT/$STAMP-profile-$space.txt"
        grep "^==" "$OUT/$STAMP-profile-$space.txt"
      done ;;
    bench-methods)
      python3 benchmarks/compare_methods.py --device cuda --epochs 3 --layers 3 \
        --out "$OUT/$STAMP-methods" 2>&1 | tail -12 ;;
    *) python3 -m pytest -q -p no:cacheprovider "$stage" 2>&1 | tail -30 ;;
  esac
done
