r"""FedAvg final accuracy against total uplink bytes, one run per codec (Konečný et al.'s figures).

::

  python -m benchmarks.accuracy_vs_bits --output_dir=results/accuracy_vs_bits
  python -m benchmarks.accuracy_vs_bits --rounds=100 \
      --codecs='none;hadamard(flatten=true),quantize(bits=2)'

Every run is the main job of `benchmarks.fedavg` (same task, seed and
rounds; any of its settings can be changed with the flags below) with a
different ``--codec``. The default list: no compression; rotation plus
stochastic quantization at 1, 2 and 4 bits; 1/16 subsampling + rotation +
2 bits (the paper's 256x setting); a low-rank structured update; and a
random-mask structured update whose p is chosen so that its upload matches
the low-rank one (``--match_mask_to``), the paper's equal-upload comparison.
Codec specs are separated by ``;`` (a spec itself contains commas).

Writes ``result.json`` (metrics keyed by codec spec: final accuracy, total
uplink bytes, bits per client per round, compression ratio, accuracy loss
against ``none``), ``accuracy_vs_uplink.png`` (test accuracy against
cumulative uplink MB, log x, one line per codec) and each run's own
directory under ``runs/``.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import json
import pathlib
import re
import sys

import jax
from absl import app, flags

import fedjax_comp as fc
from fedjax_comp import codecs, plotting, results

from benchmarks import fedavg

DEFAULT_CODECS = (
    "none",
    "hadamard(flatten=true,block=1024),quantize(bits=1)",
    "hadamard(flatten=true,block=1024),quantize(bits=2)",
    "hadamard(flatten=true,block=1024),quantize(bits=4)",
    "subsample(p=1/16),hadamard(flatten=true,block=1024),quantize(bits=2)",
    "low_rank(rank=4)",
)

_CODECS = flags.DEFINE_string("codecs", ";".join(DEFAULT_CODECS),
                              "Codec specs separated by ';'.", allow_override=True)
_MATCH = flags.DEFINE_string(
    "match_mask_to", "low_rank(rank=4)",
    "Also run random_mask(p) with p set so its upload matches this spec's ('' to skip).", allow_override=True)
# The task flags (--rounds, --model, --dataset, ...) are benchmarks.fedavg's.
flags.FLAGS.set_default("output_dir", "results/accuracy_vs_bits")


def matched_mask_spec(spec: str, params) -> str:
  """random_mask(p) whose per-client upload is as close as possible to `spec`'s."""
  target = codecs.uplink_bits(codecs.parse(spec), params)
  lo, hi = 1e-6, 1.0
  for _ in range(60):  # bisection on p: bits are monotone in p
    mid = (lo + hi) / 2
    if codecs.uplink_bits(codecs.random_mask(p=mid), params) < target:
      lo = mid
    else:
      hi = mid
  p = float(f"{hi:.4g}")
  return f"random_mask(p={p})"


def _slug(spec: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "none"


def run(specs, base: fedavg.Config, output_dir: str, match_mask_to: str = "",
        verbose: bool = True) -> dict:
  say = print if verbose else (lambda *a, **k: None)
  specs = list(specs)
  for spec in specs + ([match_mask_to] if match_mask_to else []):
    try:
      codecs.parse(spec)
    except ValueError as e:
      raise ValueError(f"--codecs: {e}") from e
  base.validate()
  if match_mask_to:
    data = fc.load_federated(base.dataset, base.partition, num_clients=base.num_clients,
                             seed=base.seed, alpha=base.dirichlet_alpha,
                             shards_per_client=base.shards_per_client,
                             max_examples=base.max_examples, data_dir=base.data_dir)
    model = fc.get_model(base.model, data.input_shape, data.num_classes)
    params = jax.eval_shape(model.init, jax.random.key(0))
    specs.append(matched_mask_spec(match_mask_to, params))
  out = pathlib.Path(output_dir)
  recorder = results.RunRecorder(out, "accuracy_vs_bits")
  metrics, curves = {}, []
  for spec in specs:
    cfg = dataclasses.replace(base, codec=spec)
    say(f"--- {spec}")
    res = fedavg.run(cfg, str(out / "runs" / _slug(spec)), verbose=False)
    m = res["metrics"]
    entry = {"final_test_accuracy": m["final_test_accuracy"],
             "total_uplink_bytes": m["total_uplink_bytes"],
             "uplink_bits_per_client_round": m["uplink_bits_per_client_round"],
             "compression_ratio": m["compression_ratio"], "rounds": m["rounds"],
             "succeeded": res["succeeded"], "wall_time_s": res["wall_time"]}
    metrics[spec] = entry
    recorder.log({"codec": spec, **entry})
    rows = results.read_metrics(out / "runs" / _slug(spec))
    pts = [(r["total_uplink_bytes"] / 1e6, r["test_accuracy"]) for r in rows
           if "test_accuracy" in r]
    if pts:
      curves.append((spec, [p[0] for p in pts], [p[1] for p in pts]))
    say(f"    accuracy {entry['final_test_accuracy']}  uplink {entry['total_uplink_bytes'] / 1e6:.2f}"
        f" MB  ({entry['compression_ratio']:.1f}x)")
  if "none" in metrics and metrics["none"]["final_test_accuracy"] is not None:
    ref = metrics["none"]["final_test_accuracy"]
    for entry in metrics.values():
      if entry["final_test_accuracy"] is not None:
        entry["accuracy_loss_points"] = 100 * (ref - entry["final_test_accuracy"])
  if curves:
    plotting.line_plot(out / "accuracy_vs_uplink.png", curves, xlabel="cumulative uplink MB",
                       ylabel="test accuracy", logx=True,
                       title=f"FedAvg on {base.dataset}: accuracy vs uplink")
  path = recorder.finish(succeeded=all(e["succeeded"] for e in metrics.values()),
                         metrics=metrics,
                         extras={"config": dataclasses.asdict(base), **results.environment()})
  header = f"{'codec':<62} {'acc':>7} {'loss pts':>8} {'uplink MB':>10} {'ratio':>8}"
  say("\n".join(["", header, "-" * len(header)] + [
      f"{spec:<62} {e['final_test_accuracy'] or float('nan'):7.4f} "
      f"{e.get('accuracy_loss_points', float('nan')):8.2f} "
      f"{e['total_uplink_bytes'] / 1e6:10.2f} {e['compression_ratio']:8.1f}"
      for spec, e in metrics.items()] + [f"results: {path}"]))
  return json.loads(path.read_text())


def main(argv):
  del argv
  try:
    base = fedavg.config_from_flags()
    specs = [s.strip() for s in _CODECS.value.split(";") if s.strip()]
    if not specs:
      raise ValueError("--codecs: give at least one codec spec")
    result = run(specs, base, flags.FLAGS.output_dir, _MATCH.value.strip())
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if not result["succeeded"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
