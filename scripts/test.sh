#!/usr/bin/env bash
# Set-up + the whole test suite (pytest-xdist on 2 workers).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
set +e
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "ERROR: pytest collected no tests; an empty run must not pass." >&2
  exit 1
fi
exit "$status"
