#!/usr/bin/env bash
# Every GPU measurement of issue 13 in one run (< 8 minutes; each step has its own time limit), written
# as a markdown report to OUT.md (and stdout):
#   1. EfficientAD-S / +SE / +CBAM batch-1 latency: eager fp32, default (bf16 + channels_last + CUDA
#      graphs), no graphs, --compile, --compile + graphs; CUDA-graph outputs checked against eager;
#      SimpleNet batch-1 latency vs seed 003's 87 ms; anomalib's EfficientAd only if importable
#      (benchmarks/gpu_latency.py)
#   2. DifferNet training images/s: insplad vs the original code's loop (benchmarks/differnet_original.py)
#   3. PatchCore greedy coreset on the GPU (benchmarks/coreset.py --device cuda)
# Needs only this repository and its installed dependencies (torch with CUDA); no network.
#   usage: benchmarks/gpu.sh OUT.md          (PYTHON=... to pick the interpreter)
set -uo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: benchmarks/gpu.sh OUT.md  (runs every GPU measurement, writes a markdown report)" >&2
  exit 2
fi
out=$1
if [[ -e "$out" || -L "$out" ]]; then
  echo "gpu.sh: $out already exists; give a new file name (nothing is overwritten)" >&2
  exit 2
fi
out_dir=$(dirname -- "$out")
if [[ ! -d "$out_dir" ]]; then
  echo "gpu.sh: folder $out_dir does not exist" >&2
  exit 2
fi
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu.sh: torch sees no CUDA device ($PY); these are GPU measurements, nothing was run" >&2
  exit 2
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
gpu=${gpu:-"(nvidia-smi unavailable) $("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"}

work=$(mktemp -d "${TMPDIR:-/tmp}/insplad-gpu.XXXXXX")
partial=$(mktemp "$out_dir/.gpu-report.XXXXXX")  # renamed to OUT.md at the end: never half a report
trap 'rm -rf -- "$work"; rm -f -- "$partial"' EXIT
started=$(date +%s)
summary=()

# step NAME LIMIT_S COMMAND...: runs one measurement with its own time limit, keeps its output
step() {
  local name=$1 limit=$2
  shift 2
  local log="$work/$name.log" t0 rc status
  echo "== $name (limit ${limit}s): $*" >&2
  t0=$(date +%s)
  (cd "$repo" && timeout --kill-after=10 "$limit" "$@") >"$log" 2>&1
  rc=$?
  cat "$log" >&2
  case $rc in
    0) status="ok" ;;
    124|137) status="TIMED OUT after ${limit}s (partial output below)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  summary+=("| $name | $status | $(( $(date +%s) - t0 )) s | \`$*\` |")
}

step latency 230 "$PY" benchmarks/gpu_latency.py --device cuda --markdown "$work/latency.md"
step differnet 150 "$PY" benchmarks/differnet_original.py --device cuda --train-images 96 --precision auto,fp32
step coreset 60 "$PY" benchmarks/coreset.py --device cuda --patches 480000 --select 400

{
  echo "# GPU measurements (benchmarks/gpu.sh)"
  echo
  echo "- GPU: **$gpu** (\`nvidia-smi --query-gpu=name --format=csv,noheader\`)"
  echo "- $("$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")')"
  echo "- commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'), $(date -u +%Y-%m-%dT%H:%M:%SZ), total $(( $(date +%s) - started )) s"
  echo
  echo "| step | status | wall | command |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${summary[@]}"
  echo
  echo "## Batch-1 latency"
  echo
  if [[ -s "$work/latency.md" ]]; then cat "$work/latency.md"; else echo '```'; tail -n 40 "$work/latency.log"; echo '```'; fi
  echo
  echo "## DifferNet training: insplad vs the original loop"
  echo
  echo '```'; grep -v '^\s*$' "$work/differnet.log" | tail -n 8; echo '```'
  echo
  echo "## PatchCore greedy coreset on the GPU"
  echo
  echo '```'; tail -n 6 "$work/coreset.log"; echo '```'
} >"$partial"

if [[ -e "$out" ]]; then
  echo "gpu.sh: $out appeared while measuring; report left unwritten" >&2
  exit 1
fi
mv -- "$partial" "$out"
cat -- "$out"
