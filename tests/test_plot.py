"""scripts/plot.py: redraws figures from JSON, overlays runs, regenerates the README block."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import pytest

from benchmarks import fedavg as runner
from tests.test_runner import TINY

_spec = importlib.util.spec_from_file_location(
    "plot_script", pathlib.Path(__file__).resolve().parents[1] / "scripts" / "plot.py")
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("runs")
  a, b = base / "a", base / "b"
  runner.run(dataclasses.replace(TINY, eval_every=1), str(a), verbose=False)
  runner.run(dataclasses.replace(TINY, eval_every=1, codec="quantize(bits=2)"), str(b),
             verbose=False)
  return a, b


def test_redraws_and_overlays(two_runs, tmp_path):
  a, b = two_runs
  (a / "accuracy.png").unlink()
  assert plot.main([str(a)]) == 0 and (a / "accuracy.png").stat().st_size > 1000
  out = tmp_path / "both.png"
  assert plot.main([str(a), str(b), "--x=uplink_mb", f"--out={out}"]) == 0
  assert out.stat().st_size > 1000
  # Labels are the runs' codecs; x is the cumulative uplink the runs logged.
  assert plot._labels([(a, plot.results.read_result(a)), (b, plot.results.read_result(b))]) == [
      "none", "quantize(bits=2)"]
  xs, _ = plot.fedavg_series(b, "uplink_mb")
  assert xs == sorted(xs) and xs[-1] == plot.results.read_result(b)["metrics"][
      "total_uplink_bytes"] / 1e6


def test_readme_block_is_regenerated_in_place(two_runs, tmp_path):
  a, _ = two_runs
  readme = tmp_path / "README.md"
  readme.write_text("# title\n\nintro\n")
  assert plot.main([str(a), "--readme", f"--readme_path={readme}"]) == 0
  first = readme.read_text()
  assert plot.README_START in first and "| final test accuracy |" in first
  assert (tmp_path / "docs" / "main_job_accuracy.png").exists()
  assert plot.main([str(a), "--readme", f"--readme_path={readme}"]) == 0
  assert readme.read_text() == first  # replaced, not appended twice


def test_bad_files_exit_with_a_message(tmp_path, capsys):
  (tmp_path / "result.json").write_text("{ truncated")
  assert plot.main([str(tmp_path)]) == 2
  assert "corrupt or was truncated" in capsys.readouterr().err
  assert plot.main([str(tmp_path / "missing")]) == 2
  assert "cannot read" in capsys.readouterr().err
