#!/usr/bin/env bash
# GPU check, one command on a bare GPU machine with a copy of this repository:
#   benchmarks/gpu_check.sh                 # set-up (first time) + the check; last line: mfu_prefix_n4: X
#   benchmarks/gpu_check.sh --cpu-smoke     # the same path on a CPU: tiny model, gloo, float32
# Set-up: reuses $VENV (default .venv) when it has torch, transformers and sami_core; otherwise creates it with
# `pip install $TORCH_SPEC` (default torch==2.13.0: PyPI's CUDA build on a GPU machine) and `pip install -e .`.
# vLLM (optional) goes into a venv of its own, $VLLM_VENV (default .venv-vllm), since it pins its own
# torch; GPU_CHECK_VLLM=0 skips it. Nothing is downloaded from a model hub: the model is random-initialised.
# The check itself (benchmarks/gpu_check.py) is limited to $GPU_CHECK_TIMEOUT seconds (default 480).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VLLM_VENV=${VLLM_VENV:-.venv-vllm}

say() { echo "[gpu_check.sh] $*" >&2; }

# Found, not imported (importing torch costs seconds): the venv is ours when it has these.
has() { "$1" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "${@:2}" 2>/dev/null; }

if ! has "$VENV/bin/python" torch transformers sami_core; then
    say "setting up $VENV ($TORCH_SPEC, then this package)"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q $TORCH_SPEC
    "$VENV/bin/python" -m pip install -q -e .
fi

extra=()
is_smoke=0
for a in "$@"; do [ "$a" = --cpu-smoke ] && is_smoke=1; done
if [ "${GPU_CHECK_VLLM:-1}" = 1 ] && [ "$is_smoke" = 0 ]; then
    if ! has "$VLLM_VENV/bin/python" vllm sami_core; then
        say "trying to install vLLM into $VLLM_VENV (optional; GPU_CHECK_VLLM=0 skips it)"
        { [ -x "$VLLM_VENV/bin/python" ] || python3 -m venv "$VLLM_VENV"; } &&
            timeout 300 "$VLLM_VENV/bin/python" -m pip install -q vllm &&
            timeout 120 "$VLLM_VENV/bin/python" -m pip install -q -e . ||
            say "vLLM did not install; its row will say so"
    fi
    if has "$VLLM_VENV/bin/python" vllm sami_core; then
        extra+=(--vllm-python "$VLLM_VENV/bin/python")
    fi
fi

exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$VENV/bin/python" benchmarks/gpu_check.py ${extra[@]+"${extra[@]}"} "$@"
