r"""The main job: a federated algorithm (FedAvg by default) on a federated dataset.

The defaults (a few minutes on 2 CPU cores, no download)::

  .venv/bin/python -m benchmarks.fedavg --output_dir=results/fedavg

Dirichlet(0.5)-partitioned MNIST-1D, 2,000 clients, 100 per round, the MLP,
5 local epochs of batch 10, 300 rounds: about 0.59 test accuracy (the MLP
reaches about 0.65-0.70 trained centrally). Other algorithms and codecs::

  .venv/bin/python -m benchmarks.fedavg --algorithm=scaffold
  .venv/bin/python -m benchmarks.fedavg --algorithm=fedprox --fedprox_mu=0.1
  .venv/bin/python -m benchmarks.fedavg --codec='hadamard,quantize(bits=2)'
  .venv/bin/python -m benchmarks.fedavg --server_optimizer=fedadam --server_lr=0.01

A published protocol from the files you downloaded (Reddi et al.'s presets,
`fedjax_comp.experiment.tasks`; any flag given still wins)::

  .venv/bin/python -m benchmarks.fedavg --task=emnist_character --data_dir=$HOME/fedjax_data
  .venv/bin/python -m benchmarks.fedavg --task=shakespeare_character \
    --server_optimizer=fedyogi --data_dir=$HOME/fedjax_data --client_store=host

McMahan et al.'s setting (a prepared TFDS directory)::

  .venv/bin/python -m benchmarks.fedavg --dataset=mnist --partition=shards \
    --num_clients=100 --clients_per_round=10 --model=cnn --client_lr=0.05 \
    --rounds=200 --data_dir=~/tensorflow_datasets

Every round also advances a simulated clock (``--network``, default
``cellular``; ``none`` turns it off): the round lasts as long as its slowest
client with data takes to download the model, run its local steps and
upload its payload. Writes ``result.json``, ``metrics.jsonl`` (one line per
round), ``accuracy.png``, ``accuracy_vs_sim_time.png`` and
``checkpoint.msgpack`` to ``--output_dir``; ``--resume`` continues a killed
run, ending bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

from benchmarks import _flags
from fedjax_comp.experiment import configs, federated, plotting
from fedjax_comp.experiment.clock import readable_unit

DATA = _flags.define(configs.DataConfig)
TRAIN = _flags.define(configs.TrainConfig)
RUN = _flags.define(configs.RunConfig)
NETWORK = _flags.define(configs.NetworkConfig)


def plot(exp, history, output_dir: str) -> None:
  """accuracy.png and, with a clock, accuracy_vs_sim_time.png."""
  cfg = exp.cfg
  evals = history.evals
  if not evals:
    return
  label = f"{cfg.train.model}, {cfg.train.algorithm}, {cfg.train.server_optimizer}"
  title = f"{cfg.train.algorithm} on {cfg.data.dataset} ({cfg.data.partition})"
  plotting.line_plot(f"{output_dir}/accuracy.png",
                     [(label, [e["round"] for e in evals], [e["accuracy"] for e in evals])],
                     xlabel="round", ylabel="test accuracy", title=title)
  if exp.clock is not None:
    unit, scale = readable_unit(max(e["sim_time_s"] for e in evals))
    xs = [e["sim_time_s"] / scale for e in evals]
    target = cfg.network.target_accuracy
    plotting.line_plot(f"{output_dir}/accuracy_vs_sim_time.png",
                       [(label, xs, [e["accuracy"] for e in evals]),
                        (f"target {target:g}", [xs[0], xs[-1]], [target] * 2)],
                       xlabel=f"simulated time ({unit}), {cfg.network.network} network",
                       ylabel="test accuracy", title=f"{title}, codec {cfg.train.codec}")


def main() -> int:
  # --task's preset fills the flags not given (`_flags.Group.config`).
  cfg = configs.FederatedConfig(data=DATA.config(), train=TRAIN.config(), run=RUN.config(),
                                network=NETWORK.config())
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/fedavg",
                                resume=_flags.RESUME.value, overwrite=_flags.OVERWRITE.value)
  exp, _, history = federated.run(cfg, out, resume=_flags.RESUME.value)
  plot(exp, history, out)
  result = federated.results.read_result(out)
  print("\n".join(["", f"{'metric':<30} value", f"{'-' * 30} {'-' * 12}", *(
      f"{k:<30} {v:.4f}" if isinstance(v, float) else f"{k:<30} {v}"
      for k, v in result["metrics"].items() if k != "network"), f"results: {out}/result.json"]))
  return 0 if result["succeeded"] else 1


if __name__ == "__main__":
  _flags.main(main)
