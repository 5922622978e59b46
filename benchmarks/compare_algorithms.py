r"""Federated algorithms side by side on one task, over seeds: rounds to a target, final loss.

::

  .venv/bin/python -m benchmarks.compare_algorithms --output_dir=results/algorithms   # ~3 min

The defaults reproduce SCAFFOLD's claim (Karimireddy et al. 2019, section
7) on a task that shows it: Synthetic(1, 1) with 30 clients (strongly
heterogeneous: every client labels with its own linear model), 10 sampled
per round, the logistic model, E = 5 local epochs of batch 10 at client lr
0.1, 100 rounds, seeds 0, 1, 2. Expect SCAFFOLD to reach 0.80 test accuracy
in several times fewer rounds than FedAvg. FedProx's own Synthetic setup
(Li et al. 2020, section 5.1: 30 devices of lognormal(4, 2) + 50 examples,
E = 20, lr 0.01, 200 rounds, mu = 1)::

  .venv/bin/python -m benchmarks.compare_algorithms --algorithms=fedavg,fedprox \
      --synthetic_sizes=fedprox --local_epochs=20 --client_lr=0.01 --rounds=200 \
      --synthetic_alpha=0.5 --synthetic_beta=0.5 --fedprox_mu=1

Every run is the library's experiment (`experiment.federated`, evaluated
every ``--eval_every`` rounds on the held-out examples of all clients),
kept in memory; ``runs/<algorithm>_seed<s>/`` holds each run's records.
Writes ``result.json`` (per algorithm: rounds to ``--target_accuracy`` per
seed and their median, final test accuracy and train loss per seed),
``table.md`` and ``accuracy.png`` (seed 0's curves).
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import statistics

from absl import flags

from benchmarks import _flags
from fedjax_comp.experiment import configs, federated, plotting, results

DATA = _flags.define(configs.DataConfig)
TRAIN = _flags.define(configs.TrainConfig)
RUN = _flags.define(configs.RunConfig)
NETWORK = _flags.define(configs.NetworkConfig)
_ALGORITHMS = flags.DEFINE_string("algorithms", "fedavg,scaffold", "Algorithms to compare.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Seeds (partition, sampling, training).")

DEFAULTS = dict(dataset="synthetic", partition="natural", num_clients="30",
                clients_per_round="10", model="logistic", local_epochs="5", batch_size="10",
                client_lr="0.1", rounds="100", eval_every="1", network="none",
                target_accuracy="0.8", checkpoint_every="0")


def run(base: configs.FederatedConfig, algorithms, seeds, out: str, say=print) -> dict:
  """Every algorithm on every seed; the per-algorithm summary."""
  target = base.network.target_accuracy
  metrics, curves = {}, []
  for name in algorithms:
    per_seed = []
    for seed in seeds:
      cfg = base.replace(algorithm=name, seed=seed,
                         fedprox_mu=base.train.fedprox_mu if name == "fedprox" else None)
      _, _, h = federated.run(cfg, f"{out}/runs/{name}_seed{seed}", say=None, name=name)
      per_seed.append({"seed": seed, "rounds_to_target": h.to_target("accuracy", target),
                       "final_test_accuracy": h.final_eval["accuracy"] if h.evals else None,
                       "max_test_accuracy": max((e["accuracy"] for e in h.evals), default=None),
                       "final_train_loss": h.records[-1]["train_loss"] if h.records else None,
                       "error": h.error})
      if seed == seeds[0] and h.evals:
        curves.append((name, [e["round"] for e in h.evals], [e["accuracy"] for e in h.evals]))
    reached = [s["rounds_to_target"] for s in per_seed]
    metrics[name] = {"per_seed": per_seed, "median_rounds_to_target": (
        statistics.median(reached) if None not in reached else None)}
    say(f"{name:<10} rounds to {target:g}: {reached}  final accuracy "
        f"{[round(s['final_test_accuracy'] or 0, 4) for s in per_seed]}")
  if curves:
    plotting.line_plot(f"{out}/accuracy.png", curves, xlabel="round", ylabel="test accuracy",
                       title=f"{base.data.dataset}: seed {seeds[0]}")
  return metrics


def table(metrics: dict, target: float) -> str:
  lines = [f"| algorithm | rounds to {target:g} (per seed) | median | final accuracy | "
           "best accuracy | final train loss |", "|---|---|---|---|---|---|"]
  for name, m in metrics.items():
    seeds = m["per_seed"]
    column = lambda key, fmt: ", ".join("-" if s[key] is None else format(s[key], fmt)
                                        for s in seeds)
    lines.append(f"| {name} | {column('rounds_to_target', '')} | "
                 f"{m['median_rounds_to_target']} | {column('final_test_accuracy', '.4f')} | "
                 f"{column('max_test_accuracy', '.4f')} | {column('final_train_loss', '.4f')} |")
  return "\n".join(lines)


def main() -> int:
  algorithms = [a.strip() for a in _ALGORITHMS.value.split(",") if a.strip()]
  for a in algorithms:
    configs.TrainConfig(algorithm=a)  # ValueError naming --algorithm for an unknown one
  # --fedprox_mu belongs to the fedprox runs; the others are built without it.
  train = TRAIN.config(algorithm="fedprox" if "fedprox" in algorithms else "fedavg")
  base = configs.FederatedConfig(data=DATA.config(), train=train, run=RUN.config(),
                                 network=NETWORK.config())
  try:
    seeds = [int(s) for s in _SEEDS.value.split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds or not algorithms:
    raise ValueError(f"--algorithms and --seeds must be non-empty comma-separated lists, got "
                     f"{_ALGORITHMS.value!r}, {_SEEDS.value!r}")
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/algorithms",
                                overwrite=_flags.OVERWRITE.value, resumable=False)
  recorder = results.RunRecorder(out, "compare_algorithms")
  metrics = run(base, algorithms, seeds, out)
  text = table(metrics, base.network.target_accuracy)
  with open(f"{out}/table.md", "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print("\n" + text)
  recorder.finish(succeeded=all(s["error"] is None for m in metrics.values()
                                for s in m["per_seed"]),
                  metrics=metrics, extras={"config": base.checkpoint_key(), "seeds": seeds,
                                           **results.environment()})
  return 0


if __name__ == "__main__":
  for _name, _value in DEFAULTS.items():
    flags.FLAGS.set_default(_name, _value)
  _flags.main(main)
