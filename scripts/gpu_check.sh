#!/usr/bin/env bash
# The GPU check of issue 14: unlearn + rtt + patching on a random ~0.3B Llama in bf16, full
# fine-tuning and LoRA, and organism train --base with LoRA; prints peak GPU memory / model
# bytes and step time (a few minutes).
# Needs a CUDA build of torch: on a GPU machine, `make setup` (or an existing .venv) with
# torch's CUDA wheel; the Makefile's pinned CPU wheel would see no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} sees no CUDA GPU; install a CUDA build of torch on this machine")
print(f"GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}", file=sys.stderr)
PYEOF
exec "$PY" benchmarks/gpu_check.py "$@"
