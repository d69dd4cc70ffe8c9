#!/usr/bin/env bash
# The GPU report (issue 10) in one command: the adapter, kernel parity at production sizes, flowmap's
# WGSL forward against burn-wgpu's on the same adapter and weights, kernel GFLOP/s against a
# same-run matmul, sampling throughput, and the performance goals, written as gpu-report.md and
# gpu-report.json (plus the run's log, an environment summary and, except in a dry run, a profile
# of the trainer's step on burn-wgpu, training-profile.md) into OUT_DIR.
#
#   scripts/gpu-report.sh OUT_DIR                      # builds the trainer (release), then runs
#   scripts/gpu-report.sh OUT_DIR --trainer PATH       # a prebuilt trainer: no compiler, no network
#   scripts/gpu-report.sh OUT_DIR --dry-run            # tiny sizes on any adapter (CI: lavapipe)
#
# Prebuilt binaries: on a machine with the Rust toolchain, `cargo build --release -p trainer`
# writes target/release/trainer; copy it to the GPU machine (same CPU architecture, glibc no newer
# than the GPU machine's) and pass its path with --trainer. The shipped weights are compiled into
# it, so nothing else is needed there but a Vulkan (or Metal/DX12) driver and its loader.
# It took 24 s on an H200 with burn-wgpu built without autotuning (2026-11-28); burn-wgpu now
# autotunes its kernels on first use, which adds to that.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

out="" dry="" trainer=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=--dry-run ;;
    --trainer)
      [ $# -ge 2 ] || { echo "gpu-report.sh: --trainer needs a path" >&2; exit 2; }
      trainer="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu-report.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
    *)
      [ -z "$out" ] || { echo "gpu-report.sh: one OUT_DIR only" >&2; exit 2; }
      out="$1" ;;
  esac
  shift
done
[ -n "$out" ] || { echo "gpu-report.sh: missing OUT_DIR" >&2; usage >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"

if [ -z "$trainer" ]; then
  (cd "$root" && cargo build --release -p trainer)
  trainer="$root/target/release/trainer"
fi
[ -x "$trainer" ] || { echo "gpu-report.sh: $trainer is not an executable" >&2; exit 2; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm)"
  echo "cpus: $(nproc 2>/dev/null || echo '?')"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  fi
  if command -v vulkaninfo >/dev/null 2>&1; then vulkaninfo --summary 2>/dev/null | head -40 || true; fi
} > "$out/environment.txt"

set +e
"$trainer" gpu-report --out "$out" $dry 2>&1 | tee "$out/gpu-report.log"
rc=${PIPESTATUS[0]}
if [ -z "$dry" ]; then
  # Training on the same adapter: burn-wgpu's MNIST `fm` step at batch 256, split into forward,
  # backward (per op family) and update, against a same-run matmul (docs/GPU.md, "Training on
  # the GPU"). Not in the dry run: the trainer's tests cover the profile on flex and wgpu
  # training on lavapipe.
  echo "training profile (burn-wgpu, fm, batch 256) -> $out/training-profile.md"
  "$trainer" bench --preset mnist --batch 256 --profile 3 --backend wgpu --objectives fm \
    > "$out/training-profile.md" 2>&1 || echo "gpu-report.sh: the training profile failed (see $out/training-profile.md)" >&2
fi
set -e
exit "$rc"
