"""scripts/device_bench.sh: the GPU measurement script, smoke-tested on the CPU (--quick)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_writes_every_section(tmp_path):
  env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(["bash", str(ROOT / "scripts" / "device_bench.sh"), "--quick"],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  report = json.loads((tmp_path / "device_bench.json").read_text())
  assert report["errors"] == {}
  assert set(report["sections"]) == set(report["wall_s"]) == {
      "chunk_sweep", "throughput", "kernels", "main_job", "main_job_host_store"}
  assert report["environment"]["backend"] == "cpu"
  sweep = report["sections"]["chunk_sweep"]["logistic"]
  times = {int(c): e["sec_per_round"] for c, e in sweep["chunks"].items()}
  assert set(times) == {1, 4} and sweep["best_chunk"] == min(times, key=times.get)
  tp = report["sections"]["throughput"]["logistic"]
  assert tp["client_chunk"] == sweep["best_chunk"]  # the sweep's winner is what is measured
  assert {"clients_8", "clients_16"} <= set(tp)
  assert report["sections"]["main_job"]["rounds"] == 2
  host = report["sections"]["main_job_host_store"]
  assert host["client_store"] == "host" and host["rounds"] == 2
  # The same run from either store: the same accuracy, bit for bit.
  assert host["final_test_accuracy"] == report["sections"]["main_job"]["final_test_accuracy"]
  assert "copy@4x1024" in report["sections"]["kernels"]


def test_refuses_stray_arguments(tmp_path):
  env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
  out = subprocess.run(["bash", str(ROOT / "scripts" / "device_bench.sh"), "--quick", "extra"],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      "device_bench: error: unexpected positional arguments: extra (flags are written "
      "--name=value)")


def test_preset_run_times_a_published_protocol_from_placed_files(tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from fedjax_comp.data import formats  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  data = tmp_path / "fl_data"
  data.mkdir()
  for split in ("train", "test"):
    formats.write_fedjax_sqlite(data / f"federated_emnist_{split}.sqlite", {
        f"f{i:04d}_00": {"pixels": rng.random((3, 28, 28)).astype(np.float32),
                         "label": rng.integers(0, 62, 3).astype(np.int32)} for i in range(10)})
  env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
         "FEDJAX_COMP_CPU_DEVICES": "1"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(["bash", str(ROOT / "scripts" / "device_bench.sh"),
                        "--preset=emnist_character", f"--preset_data_dir={data}",
                        "--preset_rounds=1"],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  report = json.loads((tmp_path / "out" / "device_bench.json").read_text())
  section = report["sections"]["preset_emnist_character"]
  assert report["errors"] == {} and section["rounds"] == 1
  assert section["num_params"] == 1_206_590 and section["client_updates_per_sec"] > 0
