#!/usr/bin/env bash
# The accelerator measurements (scripts/device_bench.py) in one prepared run,
# about 4 minutes of device time on one H200; writes $OUT/device_bench.json
# (or results/device_bench/ without $OUT).
#
# The device machine has JAX, flax, optax and chex but no PyPI; the one
# package it lacks, mnist1d (pure Python), travels as a wheel in .whl/, and
# the generated MNIST-1D arrays in .device_cache/ (both git-ignored):
#
#   echo /.whl/ >> .git/info/exclude; echo /.device_cache/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps -d .whl mnist1d==0.0.2.post1
#   FEDJAX_COMP_CACHE=.device_cache .venv/bin/python -c \
#       "from fedjax_comp.data import sources; sources.mnist1d()"
#
# then run this with carry=[".whl", ".device_cache"]. One published protocol
# instead (its files placed in a folder the run carries, e.g. .fl_data/):
#
#   scripts/device_bench.sh --preset=emnist_character --preset_data_dir=.fl_data \
#       --preset_rounds=50
#
# times 50 rounds of the preset (rounds/s, client updates/s, compile time)
# into the same JSON. On a CPU,
# `scripts/device_bench.sh --quick` is the smoke test (tests/test_device_bench.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ! "$PY" -c "import mnist1d" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fedjax_comp_site .whl/*.whl
  export PYTHONPATH="/tmp/fedjax_comp_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .device_cache ]; then export FEDJAX_COMP_CACHE="${FEDJAX_COMP_CACHE:-$PWD/.device_cache}"; fi
export PYTHONUNBUFFERED=1
exec "$PY" scripts/device_bench.py --out="${OUT:-results/device_bench}" "$@"
