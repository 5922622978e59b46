"""scripts/profile_round.py: a real profile of a small round, and its bad flags."""

import os
import pathlib
import re
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "profile_round.py"


def _run(*args, **env_overrides):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(env_overrides)
  return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                        env=env, timeout=300, check=False)


def test_profiles_a_round():
  top = 100_000  # more than the round has ops, so every op is printed
  out = _run("--model=logistic", "--clients=64", "--rounds=1", f"--top={top}")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("logistic, 64 clients/round, chunk 64, ")
  total = float(re.search(r": ([\d.]+) ms of op time per round", lines[0]).group(1))
  rows = lines[2:]
  assert 10 < len(rows) < top
  times = [float(r.split()[0]) for r in rows]
  assert times == sorted(times, reverse=True) and times[0] > 0
  # Every op is listed: the rows add up to the header's total and the shares to
  # 100%, within the printed rounding (0.05 ms for the total, 0.005 ms and
  # 0.05% per row).
  assert abs(sum(times) - total) <= 0.05 + 0.005 * len(rows)
  shares = [float(r.split()[1].rstrip("%")) for r in rows]
  assert abs(sum(shares) - 100) <= 0.05 * len(rows)
  # The logistic model's one matmul shows up, traced back to its source.
  assert any("Dense_0/dot_general" in r for r in rows)


def test_bad_flags():
  out = _run("--clients=0")
  assert out.returncode == 2
  assert "--clients must be >= 1, got 0" in out.stderr


def test_leaves_no_scratch_files(tmp_path):
  out = _run("--model=logistic", "--clients=8", "--rounds=1", "--top=3", TMPDIR=str(tmp_path))
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(out.stdout.splitlines()) == 2 + 3
  assert not list(tmp_path.glob("fedjax_comp_*")), list(tmp_path.iterdir())
