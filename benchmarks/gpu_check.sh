#!/usr/bin/env bash
# One prepared GPU check (issue 16): installs the wheels carried in .whl/, points CAMELS_GB_DIR at
# the carried sample, then runs benchmarks/gpu_check.py, which writes at most 8 files into $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh             # on the GPU machine, about 8 minutes
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh --dry-run   # rehearsal on a CPU, tiny sizes
#
# PYTHON names the interpreter (default python3); benchmarks/README.md says how to prepare the
# wheels and the sample, and gives the exact device invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the result files}"
PYTHON="${PYTHON:-python3}"
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  site="${GPU_CHECK_SITE:-/tmp/site}"
  echo "installing ${#wheels[@]} carried wheel(s) from .whl/ into $site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in .whl/: pyswarms, HydroErr, optuna and neuralhydrology only if already installed"
fi
export CAMELS_GB_DIR="${CAMELS_GB_DIR:-$PWD/.gpu_data/camels_gb}"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
