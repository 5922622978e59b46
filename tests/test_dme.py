"""benchmarks.dme end to end: outputs, exact bits, the Suresh bound, the 1/n drop, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import types

import pytest

from benchmarks import dme
from fedjax_comp.experiment import results

ROTATED = "hadamard,quantize(bits=2)"
TINY = dme.Config(codecs=("none", ROTATED), dim=256, num_clients=8, trials=3)


def test_writes_result_metrics_and_plot(tmp_path):
  result = dme.run(TINY, str(tmp_path), verbose=False)
  assert json.loads((tmp_path / "result.json").read_text()) == result
  assert result["succeeded"] is True and result["name"] == "dme"
  assert set(result["metrics"]) == {"none", ROTATED}
  for spec, m in result["metrics"].items():
    for key in ("vnmse", "nmse", "bits_per_coordinate", "encode_s", "decode_s", "compile_s"):
      assert m[key] is not None and m[key] >= 0, (spec, key)
    assert m["encode_s"] > 0 and m["decode_s"] > 0, spec

  exact = result["metrics"]["none"]
  assert exact["vnmse"] == 0 and exact["nmse"] == 0
  assert exact["bits_per_coordinate"] == 32
  assert exact["suresh_bound"] is None

  rotated = result["metrics"][ROTATED]
  assert rotated["bits_per_coordinate"] == (2 * 256 + 64) / 256  # codes + two float32 scales
  assert rotated["suresh_bound"] == pytest.approx((2 * math.log(256) + 2) / 3**2)
  assert 0 < rotated["vnmse"] < rotated["suresh_bound"]
  assert 0 < rotated["nmse"] < rotated["vnmse"]

  assert result["extras"]["config"]["dim"] == 256 and "jax_version" in result["extras"]
  lines = results.read_metrics(tmp_path)
  assert [(line["codec"], line["trial"]) for line in lines] == [
      (spec, t) for spec in TINY.codecs for t in range(3)]
  assert (tmp_path / "vnmse_vs_bits.png").stat().st_size > 1000


def test_shared_vector_mean_error_drops_with_independent_clients(tmp_path):
  # Every client holds the same vector: each client's error is the same size, but the
  # clients' randomness is independent, so the mean's error is about vnmse / n.
  cfg = dataclasses.replace(TINY, codecs=(ROTATED,), distribution="shared", trials=4)
  m = dme.run(cfg, str(tmp_path), verbose=False)["metrics"][ROTATED]
  assert m["nmse"] < m["vnmse"] / 2, m


def test_suresh_bound_applies_to_plain_and_rotated_quantization_only():
  assert dme.suresh_bound("quantize(bits=1)", 1000) == 1000 / 2
  assert dme.suresh_bound("quantize", 64) == pytest.approx(64 / (2 * 255**2))  # default 8 bits
  rotated = (2 * math.log(1024) + 2) / 15**2  # padded to 1024
  assert dme.suresh_bound("hadamard,quantize(bits=4)", 1000) == pytest.approx(rotated)
  assert dme.suresh_bound("hadamard(flatten=true),quantize(bits=4,stochastic=false)",
                          1000) == pytest.approx(rotated)
  for spec in ("none", "hadamard", "hadamard(block=64),quantize(bits=2)",
               "subsample(p=0.0625),hadamard,quantize(bits=2)"):
    assert dme.suresh_bound(spec, 1000) is None, spec
  assert dme.parse_codec_list(" none ; quantize(bits=2) ;;") == ("none", "quantize(bits=2)")


@pytest.mark.parametrize("change,message", [
    ({"dim": 0}, r"--dim must be an integer in \[1, 2\*\*30\], got 0"),
    ({"dim": 2.0}, r"--dim must be an integer in \[1, 2\*\*30\], got 2.0"),
    ({"num_clients": 0}, "--num_clients must be an integer >= 1, got 0"),
    ({"trials": 0}, "--trials must be an integer >= 1, got 0"),
    ({"seed": -1}, r"--seed must be an integer in \[0, 2\*\*32\)"),
    ({"seed": 2**32}, r"--seed must be an integer in \[0, 2\*\*32\)"),
    ({"distribution": "cauchy"}, "unknown --distribution 'cauchy'; valid: normal, lognormal"),
    ({"codecs": ()}, "--codecs must name at least one codec spec"),
    ({"codecs": ("none", "none")}, "--codecs lists 'none' twice"),
    ({"codecs": ("zip",)}, "--codec 'zip': unknown codec 'zip'"),
    ({"codecs": ("quantize(bits=9)",)}, r"--codec 'quantize\(bits=9\)': bits must be"),
    ({"codecs": ("low_rank(rank=1)",)}, "--codec 'low_rank.*' is a structured codec"),
    ({"codecs": ("random_mask(p=0.25),quantize(bits=4)",)}, "--codec .* is a structured codec"),
])
def test_bad_input_raises_value_error_naming_the_flag(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    dme.run(dataclasses.replace(TINY, **change), str(tmp_path), verbose=False)
  assert not (tmp_path / "result.json").exists()


def _holders(**values):
  """Stand-ins for the absl flag holders: text values, --codec not given."""
  defaults = {"codec": "hadamard,quantize(bits=2)", "codecs": "none;quantize(bits=2)",
              "dim": "256", "num_clients": "8", "distribution": "normal", "trials": "2",
              "seed": "0"}
  defaults.update(values)
  return {k: types.SimpleNamespace(value=v, present=False) for k, v in defaults.items()}


def test_flags_parse_into_the_config():
  cfg = dme.config_from_flags(_holders(dim=" 1000", seed="4294967295"))
  assert cfg == dme.Config(codecs=("none", "quantize(bits=2)"), dim=1000, num_clients=8,
                           distribution="normal", trials=2, seed=2**32 - 1)


@pytest.mark.parametrize("flag,value,message", [
    ("dim", "abc", r"--dim must be an integer in \[1, 2\*\*30\], got 'abc'"),
    ("num_clients", "1e3", "--num_clients must be an integer >= 1, got '1e3'"),
    ("trials", "", "--trials must be an integer >= 1, got ''"),
    ("seed", "-1", r"--seed must be an integer in \[0, 2\*\*32\), got '-1'"),
    ("distribution", "cauchy", "unknown --distribution 'cauchy'"),
    ("codecs", " ; ", "--codecs must name at least one codec spec"),
])
def test_bad_flags_raise_naming_the_flag_and_range(flag, value, message):
  with pytest.raises(ValueError, match=message):
    dme.config_from_flags(_holders(**{flag: value}))


def test_memory_estimate_covers_the_arrays_and_refuses_over_the_budget(tmp_path):
  cfg = dataclasses.replace(TINY, dim=1000)  # padded to 1024 by the rotation
  need = dme.bytes_needed(cfg, num_devices=1)
  # At least the clients' vectors, their dense payloads and the decoded vectors.
  assert need >= 8 * (4 * 1000 + 4 * 1024 + 4 * 1000)
  assert dme.bytes_needed(cfg, num_devices=2) == need // 2
  dme.check_memory(cfg, 1, need)  # exactly the budget fits
  with pytest.raises(ValueError, match=r"--dim=1000 with --num_clients=8 needs about 0\.00 GiB"):
    dme.check_memory(cfg, 1, need - 1)
  huge = dataclasses.replace(TINY, dim=3_000_000_000)
  with pytest.raises(ValueError, match=r"--dim=3000000000 with --num_clients=8 needs about "
                                       r"\d+\.\d\d GiB per device .* over the budget"):
    dme.run(huge, str(tmp_path), verbose=False)
  assert not (tmp_path / "result.json").exists()
  with pytest.raises(ValueError, match=r"--dim must be an integer in \[1, 2\*\*30\]"):
    dme.check_memory(dataclasses.replace(TINY, dim=2**30 + 1, num_clients=1), 1, 2**50)


def test_command_line_refuses_a_huge_dim_in_one_line(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "benchmarks.dme", "--dim=3000000000",
                        f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True,
                       env=env, timeout=300, check=False,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 1, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "dme: error: --dim=3000000000 with --num_clients=100 needs about "), lines
  assert "GiB per device" in lines[0] and "over the budget of" in lines[0]
  assert not (tmp_path / "out").exists()  # refused before the output directory was made
