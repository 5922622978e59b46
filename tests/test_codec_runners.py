"""Codecs end to end: a federated run's exact bits, bad specs, accuracy_vs_bits, kernels."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from benchmarks import _parse, _throughput_setup
from benchmarks import accuracy_vs_bits
from benchmarks import kernels as kernels_runner
from fedjax_comp.experiment import configs, federated, results

_spec = importlib.util.spec_from_file_location(
    "plot_script", pathlib.Path(__file__).resolve().parents[1] / "scripts" / "plot.py")
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)

# logistic on digits: a 64 x 10 kernel and a bias of 10.
N_KERNEL, N_BIAS = 640, 10
TINY = configs.FederatedConfig(
    data=configs.DataConfig(dataset="digits", partition="iid", num_clients=20),
    train=configs.TrainConfig(model="logistic", clients_per_round=5, rounds=3, local_epochs=1,
                              batch_size=10, client_lr=0.05),
    run=configs.RunConfig(eval_every=2, checkpoint_every=0),
    network=configs.NetworkConfig(network="none"))


@pytest.mark.parametrize("spec,coding,index", [
    ("top_k(p=0.01)", "positions", 32 * -(-7 * 10 // 32)),  # k = ceil(6.5) = 7 indices < 2^10
    ("top_k(p=0.5)", "bitmap", 32 * -(-650 // 32)),  # 325 indices: the 650-bit map is smaller
])
def test_top_k_runs_report_which_index_coding_they_sent(tmp_path, spec, coding, index):
  exp, _, _ = federated.run(TINY.replace(codec=spec, rounds=1), str(tmp_path), say=None)
  m = results.read_result(tmp_path)["metrics"]
  assert m["uplink_index_bits"] == {coding: index}
  k = 7 if coding == "positions" else 325
  assert m["uplink_bits_per_client_round"] == 32 * k + index
  assert f"of which {index:,} bits of index list as {coding}" in exp.describe()[2]


def test_federated_run_reports_exact_uplink_bits_and_bytes(tmp_path):
  exp, _, history = federated.run(TINY.replace(codec="quantize(bits=2)"), str(tmp_path),
                                  say=None)
  m = results.read_result(tmp_path)["metrics"]
  bits = (32 * 2 * -(-N_KERNEL // 32) + 64) + (32 * 2 * -(-N_BIAS // 32) + 64)
  assert m["uplink_bits_per_client_round"] == bits
  assert m["compression_ratio"] == pytest.approx(32 * (N_KERNEL + N_BIAS) / bits)
  assert federated.summary(exp, history)["compression_ratio"] == m["compression_ratio"]
  lines = results.read_metrics(tmp_path)
  assert lines == [json.loads(json.dumps(r)) for r in history.records]  # memory == disk
  per_round = [line["round_uplink_bytes"] for line in lines]
  assert per_round == [bits * line["num_clients"] / 8 for line in lines]
  assert [line["total_uplink_bytes"] for line in lines] == [
      sum(per_round[:i + 1]) for i in range(len(per_round))]
  assert m["total_uplink_bytes"] == sum(per_round) == history.total_uplink_bits / 8


def test_identity_is_32_bits_per_parameter():
  _, _, history = federated.run(TINY.replace(rounds=1), None, say=None)
  assert history.records[0]["uplink_bits"] == 32 * (N_KERNEL + N_BIAS) * 5
  assert history.total_uplink_bits == history.total_downlink_bits == 32 * 650 * 5


@pytest.mark.parametrize("spec,message", [
    ("quantize(bits=9)", "--codec: .*bits must be an integer in 1..8"),
    ("zip", "--codec: unknown codec 'zip'"),
    ("random_mask(p=2)", r"--codec: random_mask: p must be a number in \(0, 1\]"),
    ("low_rank(rank=11)", r"rank must be in 1..min\(d1, d2\) = 1..10"),
])
def test_bad_codec_is_refused_naming_it(spec, message):
  with pytest.raises(ValueError, match=message):
    federated.setup(TINY.replace(codec=spec), say=None)


def test_accuracy_vs_bits_writes_table_and_matched_mask(tmp_path):
  cfg = TINY.replace(rounds=2, eval_every=1)
  specs = _parse.CodecList(codecs="none; low_rank(rank=2)").specs()
  assert specs == ["none", "low_rank(rank=2)"]
  result = accuracy_vs_bits.run(cfg, specs, str(tmp_path), match_mask_to="low_rank(rank=2)",
                                say=None)
  m = result["metrics"]
  assert list(m)[:2] == ["none", "low_rank(rank=2)"] and list(m)[2].startswith("random_mask(p=")
  low, mask = m["low_rank(rank=2)"], m[list(m)[2]]
  # Equal upload, within one coordinate per leaf.
  assert abs(mask["uplink_bits_per_client_round"] - low["uplink_bits_per_client_round"]) <= 2 * 32
  assert m["none"]["accuracy_loss_points"] == 0.0
  assert m["none"]["compression_ratio"] == 1.0 and low["compression_ratio"] > 1
  for spec, entry in m.items():
    assert entry["succeeded"] and entry["rounds"] == 2
    # The curve is the run's own, from memory: one point per evaluation, the last at the total.
    xs, accs = result["extras"]["curves"][spec]
    assert len(xs) == 2 and xs == sorted(xs)
    assert xs[-1] == pytest.approx(entry["total_uplink_bytes"] / 1e6)
    assert accs[-1] == entry["final_test_accuracy"]
    # Each run's own records are kept under runs/.
    run_dir = tmp_path / "runs" / accuracy_vs_bits.slug(spec)
    assert results.read_result(run_dir)["metrics"]["total_uplink_bytes"] == (
        entry["total_uplink_bytes"])
  assert (tmp_path / "accuracy_vs_uplink.png").stat().st_size > 1000
  assert json.loads((tmp_path / "result.json").read_text()) == result
  assert len(results.read_metrics(tmp_path)) == 3 * 2  # one line per codec and evaluation
  # scripts/plot.py redraws the figure from result.json alone, into a directory given as --out.
  (tmp_path / "redrawn").mkdir()
  assert plot.main([str(tmp_path), f"--out={tmp_path / 'redrawn'}"]) == 0
  assert (tmp_path / "redrawn" / "accuracy_vs_uplink.png").stat().st_size > 1000


@pytest.mark.parametrize("make,message", [
    (lambda: _parse.CodecList(codecs=" ; "), "--codecs: give at least one codec spec"),
    (lambda: _parse.CodecList(codecs="none;zip"), "--codecs: unknown codec 'zip'"),
    (lambda: accuracy_vs_bits.MatchConfig(match_mask_to="quantize(bits=0)"),
     "--match_mask_to: .*bits"),
])
def test_accuracy_vs_bits_bad_sweep(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_kernels_ratios():
  metrics = _throughput_setup.measure_kernels([(4, 64)], [2], repeats=1, say=lambda *_: None)
  for name in ("copy", "fwht", "rotate", "dense_hadamard", "quantize_pack/2",
               "unpack_dequantize/2"):
    m = metrics[f"{name}@4x64"]
    assert m["sec"] > 0 and m["ratio_to_copy"] > 0 and m["gb_per_s"] > 0
  assert metrics["copy@4x64"]["ratio_to_copy"] == 1.0
  with pytest.raises(ValueError, match="dim a power of two"):
    kernels_runner.parse_shape("4x100")


@pytest.mark.parametrize("spec,match", [
    ("top_k(k=100000)", r"--downlink_codec='top_k\(k=100000\)' does not fit model 'logistic': "
                        r"top_k: k must be in 1..d = 1..650"),
    ("low_rank(rank=1)", "--downlink_codec: a structured codec"),
    ("ef(top_k)", "--downlink_codec: a stateful codec"),
])
def test_bad_downlink_codecs_fail_at_setup_naming_the_flag(spec, match):
  with pytest.raises(ValueError, match=match):
    federated.setup(TINY.replace(downlink_codec=spec), say=None)
