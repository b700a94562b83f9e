#!/usr/bin/env bash
# The GPU check: the CUDA tests and a short GPU benchmark, as one script for a machine with an NVIDIA
# GPU, finishing in under 8 minutes. Results land in $OUT (default ./gpu-check-out): eight files,
# summary.md first.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, with the package registries: the wheels the
#                                                 # GPU machine's Python 3.12 lacks, into .whl/
#   bash benchmarks/gpu_check.sh                  # there, with .whl/ beside the tree: installs them
#                                                 # into /tmp/mlserve-site, then runs every step
#   bash benchmarks/gpu_check.sh --dry-run        # on a CPU, tiny sizes, the project's .venv: every
#                                                 # step end to end (tests/test_gpu_check.py runs it)
#
# Steps (each under its own time limit; one failing does not stop the rest, the exit code says):
#   1. env      nvidia-smi, torch and onnxruntime builds
#   2. tests    every test marked gpu (pytest -m gpu over the files that have them)
#   3. mlp      the example MLP served on the GPU and on the CPU by one server: req/s at 1/64/256 rows
#   4. llm      the LLM engine alone on a mid-size Llama: decode tok/s at 1/32/128 sequences with CUDA
#               graphs on and off, and time to first token
#   5. vs_hf    the same Llama through the server against Hugging Face generate in static batches of 32
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --fetch-wheels) MODE=fetch ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

# What the GPU machine's image lacks of mlserve's run-time needs (it has torch, onnxruntime, aiohttp,
# uvloop, numpy, transformers, pytest...); pinned so the check is repeatable.
WHEELS=("orjson==3.13.0" "protobuf==6.33.6" "grpcio==1.85.3")
if [ "$MODE" = fetch ]; then
  mkdir -p .whl
  for spec in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$spec" || exit 1
  done
  ls -l .whl
  exit 0
fi

OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "$MODE" = dry ]; then
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  DEVICE=cpu
else
  PY=${PYTHON:-python3}
  DEVICE=cuda
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mlserve-site .whl/*.whl \
      || { echo "installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/mlserve-site
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS="$OUT/steps.log"
: >"$STEPS"
FAILED=()

step() {  # step NAME LIMIT_S COMMAND...: run it, its output appended to steps.log, its status noted
  local name=$1 limit=$2 started rc
  shift 2
  started=$(date +%s)
  echo "=== $name: $*" >>"$STEPS"
  timeout --kill-after=5 "$limit" bash -c '"$@"' step "$@" >>"$STEPS" 2>&1  # bash -c: functions too
  rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - started )) s" >>"$STEPS"
  echo "$name: exit $rc after $(( $(date +%s) - started )) s"
  [ $rc -eq 0 ] || FAILED+=("$name")
}

env_report() {
  { nvidia-smi || echo "nvidia-smi: not here"
    "$PY" -c 'import sys, torch, onnxruntime as ort
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", ort.__version__, ort.get_available_providers())'
  } >"$OUT/env.txt" 2>&1
}

write_llama() {  # the mid-size random-weight Llama (tiny-llama on a dry run), at $WORK/repo/llama/1
  "$PY" -c "import sys; from pathlib import Path
folder = Path(sys.argv[1]); folder.mkdir(parents=True)
if sys.argv[2] == 'dry':
    from mlserve.examples_llm import write_tiny_llama as write
else:
    from benchmarks.mid_llama import write_mid_llama as write
write(folder)" "$WORK/repo/llama/1" "$MODE"
}

gpu_tests() {
  local files
  files=$(grep -rl --include='test_*.py' 'mark.gpu' tests | sort)
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts= --timeout 120 \
    --junitxml="$OUT/tests.xml" $files >"$OUT/tests.log" 2>&1
  local rc=$?
  tail -3 "$OUT/tests.log"
  if [ "$MODE" = gpu ] && grep -q 'skipped' "$OUT/tests.log" && ! grep -q ' passed' "$OUT/tests.log"; then
    echo "every GPU test skipped: no CUDA device seen"; return 1
  fi
  return $rc
}

export -f env_report write_llama gpu_tests
export PY OUT MODE WORK

if [ "$MODE" = dry ]; then
  MLP_ARGS=(--rows 1 4 --clients 2 --seconds 0.5)
  LLM_ARGS=(--seqs 1 2 --tokens 4 --prompt 8)
  HF_ARGS=(--model tiny-llama --requests 4 --clients 2 --prompt-tokens 4 8 --output-tokens 4 8)
else
  MLP_ARGS=(--rows 1 64 256 --clients 64 --seconds 6)
  LLM_ARGS=(--seqs 1 32 128 --tokens 64 --prompt 32)
  HF_ARGS=(--model mid-llama --requests 96 --clients 32)
fi

# The limits add up to 470 s (and 5 s each to kill a stuck step): under 8.5 minutes if every step runs out;
# how long it takes on a GPU has not been timed yet.
step env 20 env_report
step tests 140 gpu_tests
step mlp 90 "$PY" -m benchmarks.gpu_serving --device "$DEVICE" "${MLP_ARGS[@]}" --json "$OUT/mlp_serving.json"
step llama 40 write_llama
step llm 80 "$PY" -m benchmarks.llm_gpu --model "$WORK/repo/llama/1" --device "$DEVICE" "${LLM_ARGS[@]}" \
  --out "$OUT/llm_gpu.json"
step vs_hf 90 "$PY" -m benchmarks.generation "${HF_ARGS[@]}" --device "$DEVICE" --results "$OUT/generation.json"
step summary 10 "$PY" -m benchmarks.gpu_summary "$OUT"

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed steps: ${FAILED[*]} (see $OUT/steps.log)"
  exit 1
fi
echo "all steps passed; results in $OUT (summary.md)"
