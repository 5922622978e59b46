r"""FedAvg final accuracy against total uplink bytes, one run per codec (Konečný et al.).

::

  python -m benchmarks.accuracy_vs_bits --output_dir=results/accuracy_vs_bits
  python -m benchmarks.accuracy_vs_bits --rounds=100 \
      --codecs='none;hadamard(flatten=true),quantize(bits=2)'

Every run is the main job of `benchmarks.fedavg` (the same flags: task,
seed, rounds, network, run through `fedjax_comp.experiment.federated`) with
a different codec. The default list: no compression; rotation plus
stochastic quantization at 1, 2 and 4 bits; 1/16 subsampling + rotation +
2 bits (the paper's 256x setting); a low-rank structured update; and a
random-mask structured update whose p is chosen so that its upload matches
the low-rank one (``--match_mask_to``), the paper's equal-upload comparison.
Codec specs are separated by ``;`` (a spec itself contains commas).

Writes ``result.json`` (metrics keyed by codec spec: final accuracy, total
uplink bytes, bits per client per round, compression ratio, accuracy loss
against ``none``; ``extras.curves`` holds every codec's accuracy against
cumulative uplink MB), ``metrics.jsonl`` (one line per codec and
evaluation), ``accuracy_vs_uplink.png`` (log x, one line per codec) and
each run's own records under ``runs/<codec>/``.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import dataclasses
import pathlib
import re

import jax
from absl import flags

from benchmarks import _flags, _parse
from fedjax_comp import codecs, models
from fedjax_comp.experiment import configs, federated, plotting, results
from fedjax_comp.experiment.configs import knob

DEFAULT_CODECS = (
    "none",
    "hadamard(flatten=true,block=1024),quantize(bits=1)",
    "hadamard(flatten=true,block=1024),quantize(bits=2)",
    "hadamard(flatten=true,block=1024),quantize(bits=4)",
    "subsample(p=1/16),hadamard(flatten=true,block=1024),quantize(bits=2)",
    "low_rank(rank=4)",
)


@dataclasses.dataclass(frozen=True)
class MatchConfig:
  """The equal-upload comparison."""

  match_mask_to: str = knob("low_rank(rank=4)", "Also run random_mask(p) with p set so its "
                            "upload matches this spec's ('' to skip).")

  def __post_init__(self):
    if self.match_mask_to.strip():
      try:
        codecs.parse(self.match_mask_to)
      except ValueError as e:
        raise ValueError(f"--match_mask_to: {e}") from e


DATA = _flags.define(configs.DataConfig)
TRAIN = _flags.define(configs.TrainConfig)
RUN = _flags.define(configs.RunConfig)
NETWORK = _flags.define(configs.NetworkConfig)
CODECS = _flags.define(_parse.CodecList)
MATCH = _flags.define(MatchConfig)


def slug(spec: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "none"


def run(cfg: configs.FederatedConfig, specs: list[str], output_dir: str, *,
        match_mask_to: str = "", say=print) -> dict:
  """One federated run per codec of `specs` (plus the matched mask); returns the result."""
  say = say or (lambda _: None)
  specs = list(specs)
  if match_mask_to.strip():
    data = federated.load_data(cfg)
    model = models.get_model(cfg.train.model, data.input_shape, data.num_classes)
    params = jax.eval_shape(model.init, jax.random.key(0))
    try:
      specs.append(codecs.matched_random_mask(match_mask_to.strip(), params))
    except ValueError as e:
      raise ValueError(f"--match_mask_to: {e}") from e
  out = pathlib.Path(output_dir)
  recorder = results.RunRecorder(out, "accuracy_vs_bits")
  metrics, curves = {}, {}
  for spec in specs:
    say(f"--- {spec}")
    exp, _, history = federated.run(cfg.replace(codec=spec), str(out / "runs" / slug(spec)),
                                    say=None)
    summary = federated.summary(exp, history)
    final = history.final_eval or {}
    evals = [r for r in history.records if "test_accuracy" in r]
    curves[spec] = [[r["total_uplink_bytes"] / 1e6 for r in evals],
                    [r["test_accuracy"] for r in evals]]
    entry = metrics[spec] = {
        "final_test_accuracy": final.get("accuracy"),
        "total_uplink_bytes": history.total_uplink_bits / 8,
        "uplink_bits_per_client_round": exp.algorithm.uplink_bits(
            jax.device_get(exp.state.params)),
        "compression_ratio": summary["compression_ratio"], "rounds": history.rounds_done,
        "succeeded": history.error is None, "error": history.error,
        "round_time_s": history.round_time_s, "compile_s": history.compile_s}
    for r in evals:
      recorder.log({"codec": spec, "round": r["round"], "uplink_mb": r["total_uplink_bytes"] / 1e6,
                    "test_accuracy": r["test_accuracy"]})
    acc = entry["final_test_accuracy"]
    say(f"    accuracy {'-' if acc is None else f'{acc:.4f}'}  uplink "
        f"{entry['total_uplink_bytes'] / 1e6:.2f} MB  ({entry['compression_ratio']:.1f}x)")
  ref = metrics.get("none", {}).get("final_test_accuracy")
  for entry in metrics.values():
    if ref is not None and entry["final_test_accuracy"] is not None:
      entry["accuracy_loss_points"] = 100 * (ref - entry["final_test_accuracy"])
  plotting.line_plot(out / "accuracy_vs_uplink.png",
                     [(spec, *xy) for spec, xy in curves.items()],
                     xlabel="cumulative uplink MB", ylabel="test accuracy", logx=True,
                     title=f"FedAvg on {cfg.data.dataset}: accuracy vs uplink")
  path = recorder.finish(succeeded=all(e["succeeded"] for e in metrics.values()),
                         metrics=metrics, extras={"config": dataclasses.asdict(cfg),
                                                  "curves": curves, **results.environment()})
  say(format_table(metrics) + f"\nresults: {path}")
  return results.read_result(out)


def format_table(metrics: dict) -> str:
  header = f"{'codec':<62} {'acc':>7} {'loss pts':>8} {'uplink MB':>10} {'ratio':>8}"
  nan = float("nan")
  return "\n".join(["", header, "-" * len(header)] + [
      f"{spec:<62} {e['final_test_accuracy'] or nan:7.4f} "
      f"{e.get('accuracy_loss_points', nan):8.2f} "
      f"{e['total_uplink_bytes'] / 1e6:10.2f} {e['compression_ratio']:8.1f}"
      for spec, e in metrics.items()])


def main() -> int:
  _parse.refuse_present(("codec",), "benchmarks.accuracy_vs_bits runs every codec of --codecs")
  cfg = configs.FederatedConfig(data=DATA.config(), train=TRAIN.config(), run=RUN.config(),
                                network=NETWORK.config())
  specs, match = CODECS.config().specs(), MATCH.config().match_mask_to
  if _flags.RESUME.value:
    raise ValueError("--resume: accuracy_vs_bits keeps no checkpoint of its own; use "
                     "--overwrite")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/accuracy_vs_bits",
                                overwrite=_flags.OVERWRITE.value)
  return 0 if run(cfg, specs, out, match_mask_to=match)["succeeded"] else 1


if __name__ == "__main__":
  flags.FLAGS.set_default("codecs", ";".join(DEFAULT_CODECS))
  _flags.main(main)
