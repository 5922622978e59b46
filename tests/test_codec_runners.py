"""The codec runners end to end: benchmarks.fedavg --codec, kernels, accuracy_vs_bits."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import accuracy_vs_bits
from benchmarks import fedavg as runner
from benchmarks import kernels as kernels_runner
from fedjax_comp import results
from tests.test_runner import TINY

# logistic on digits: a 64 x 10 kernel and a bias of 10.
N_KERNEL, N_BIAS = 640, 10


def test_fedavg_reports_exact_uplink_bits_and_bytes(tmp_path):
  cfg = dataclasses.replace(TINY, codec="quantize(bits=2)")
  result = runner.run(cfg, str(tmp_path), verbose=False)
  m = result["metrics"]
  bits = (32 * 2 * -(-N_KERNEL // 32) + 64) + (32 * 2 * -(-N_BIAS // 32) + 64)
  assert m["uplink_bits_per_client_round"] == bits
  assert m["compression_ratio"] == pytest.approx(32 * (N_KERNEL + N_BIAS) / bits)
  lines = results.read_metrics(tmp_path)
  per_round = [line["round_uplink_bytes"] for line in lines]
  assert per_round == [bits * line["num_clients"] / 8 for line in lines]
  assert [line["total_uplink_bytes"] for line in lines] == [
      sum(per_round[:i + 1]) for i in range(len(per_round))]
  assert m["total_uplink_bytes"] == sum(per_round)


def test_fedavg_identity_is_32_bits_per_parameter(tmp_path):
  m = runner.run(TINY, str(tmp_path), verbose=False)["metrics"]
  assert m["uplink_bits_per_client_round"] == 32 * (N_KERNEL + N_BIAS)
  assert m["compression_ratio"] == 1.0


@pytest.mark.parametrize("spec,message", [
    ("quantize(bits=9)", "--codec: .*bits must be an integer in 1..8"),
    ("zip", "--codec: unknown codec 'zip'"),
    ("random_mask(p=2)", r"--codec: random_mask: p must be a number in \(0, 1\]"),
])
def test_fedavg_bad_codec(tmp_path, spec, message):
  with pytest.raises(ValueError, match=message):
    runner.run(dataclasses.replace(TINY, codec=spec), str(tmp_path), verbose=False)


def test_fedavg_low_rank_rank_too_large_names_the_weight(tmp_path):
  with pytest.raises(ValueError, match=r"rank must be in 1..min\(d1, d2\) = 1..10"):
    runner.run(dataclasses.replace(TINY, codec="low_rank(rank=11)"), str(tmp_path), verbose=False)


def test_accuracy_vs_bits_writes_table_and_matched_mask(tmp_path):
  base = dataclasses.replace(TINY, rounds=2, eval_every=1)
  result = accuracy_vs_bits.run(["none", "low_rank(rank=2)"], base, str(tmp_path),
                                match_mask_to="low_rank(rank=2)", verbose=False)
  m = result["metrics"]
  assert list(m)[:2] == ["none", "low_rank(rank=2)"] and list(m)[2].startswith("random_mask(p=")
  low, mask = m["low_rank(rank=2)"], m[list(m)[2]]
  # Equal upload, within one coordinate per leaf.
  assert abs(mask["uplink_bits_per_client_round"] - low["uplink_bits_per_client_round"]) <= 2 * 32
  assert m["none"]["accuracy_loss_points"] == 0.0
  assert (tmp_path / "accuracy_vs_uplink.png").stat().st_size > 1000
  assert json.loads((tmp_path / "result.json").read_text()) == result


def test_kernels_runner_ratios(tmp_path):
  metrics = kernels_runner.run([(4, 64)], [2], repeats=1, output_dir=str(tmp_path),
                               verbose=False)
  for name in ("copy", "fwht", "rotate", "dense_hadamard", "quantize_pack/2",
               "unpack_dequantize/2"):
    m = metrics[f"{name}@4x64"]
    assert m["sec"] > 0 and m["ratio_to_copy"] > 0 and m["gb_per_s"] > 0
  assert metrics["copy@4x64"]["ratio_to_copy"] == 1.0
  with pytest.raises(ValueError, match="dim a power of two"):
    kernels_runner.parse_shape("4x100")
