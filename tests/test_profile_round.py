"""scripts/profile_round.py: a real profile of a small round, and its bad flags."""

import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "profile_round.py"


def _run(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                        env=env, timeout=300, check=False)


def test_profiles_a_round():
  out = _run("--model=logistic", "--clients=64", "--rounds=1", "--top=200")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("logistic, 64 clients/round, chunk 64, ")
  rows = lines[2:]
  times = [float(r.split()[0]) for r in rows]
  assert times == sorted(times, reverse=True) and times[0] > 0
  assert sum(float(r.split()[1].rstrip("%")) for r in rows) > 98  # every op (rounded shares)
  # The logistic model's one matmul shows up, traced back to its source.
  assert any("Dense_0/dot_general" in r for r in rows)


def test_bad_flags():
  out = _run("--clients=0")
  assert out.returncode == 2
  assert "--clients must be >= 1, got 0" in out.stderr
