#!/usr/bin/env bash
# bench/run.py's workloads in bf16 on CUDA with a random ~1B Llama, plus one convergence and
# one audit cell; prints tokens/s, MFU against the GPU's bf16 peak and peak memory, and last
# one JSON line. See bench/gpu.py and bench/README.md (the scripts table).
#
#   bash bench/gpu.sh                        # CUDA, bf16, 0.97B random Llama (< 10 minutes)
#   bash bench/gpu.sh --device cpu --tiny    # CI: tiny random Llama on CPU, a few seconds
#   bash bench/gpu.sh --out gpu.json         # also save the JSON
#
# The Python is $PYTHON, else the repository's .venv, else python3 on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
if [ ! -x "$python" ]; then
    python="$(command -v python3)"
fi
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$python" "$here/gpu.py" "$@"
