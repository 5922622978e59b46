"""Task presets: a published benchmark's dataset, model and protocol behind one name.

``--task=emnist_character`` sets the knobs of Reddi et al.'s protocol; any
flag given on the command line still wins. The client and server learning
rates and the adaptive optimizers' epsilon depend on the server optimizer
(``--server_optimizer``, default ``fedavg``), so the preset looks them up in
the table for the optimizer in use. Adam's and Yogi's beta2: the paper's
text fixes 0.99, while google-research/federated's hyperparameter notes say
its runs kept Keras' default 0.999; the presets follow the code's notes
(``--server_beta2=0.99`` gives the paper's).

Reddi et al.'s protocols (google-research/federated, optimization/docs/
hyperparameters.md: 1 epoch, clients per round, batch, rounds; Stack
Overflow at most 1,000 examples per client):

=========================  ==================  =========================  ======  =====  ======
``--task``                 dataset             model                      cohort  batch  rounds
=========================  ==================  =========================  ======  =====  ======
``emnist_character``       emnist_federated    emnist_cr                  10      20     1500
``shakespeare_character``  shakespeare         shakespeare_lstm           10      4      1200
``stackoverflow_word``     stackoverflow       stackoverflow_lstm         50      16     1500
``cifar100_image``         cifar100_federated  cifar100_resnet18          10      20     4000
=========================  ==================  =========================  ======  =====  ======

Stack Overflow evaluates on a seeded sample of 1,000 test clients (Reddi et
al. sample 10,000 test examples; ``--test_clients`` to change it).

FedJAX's runs (google/fedjax, experiments/fed_avg/*.flags), with their own
fixed optimizer: ``fedjax_emnist_conv`` (Adam, server lr 1, client lr
0.001, batch 10) and ``fedjax_stackoverflow_word`` (Adam, 0.02 / 0.5, batch
16; FedJAX caps a client at 500 steps, here 8,000 examples = 500 batches).
FedJAX's models add a tanh after each LSTM, which ``stackoverflow_lstm``
does not. (FedJAX's CIFAR-100 run uses its own 32x32 preprocessing, not
Reddi et al.'s crops, and is not a preset here.)

Learning rates and epsilons (log10), from google-research/federated,
optimization/docs/hyperparameters.md, "Best hyperparameters":

======================  =========================  =========================  ===============
task                    client lr (Adagrad, Adam,  server lr (same order)     eps (Adagrad,
                        Yogi, AvgM, Avg)                                      Adam, Yogi)
======================  =========================  =========================  ===============
emnist_character        -1.5 -1.5 -1.5 -1.5 -1     -1 -2.5 -2.5 -0.5 0        -2 -4 -4
shakespeare_character   0 0 0 0 0                  -0.5 -2 -2 -0.5 0          -1 -3 -3
======================  =========================  =========================  ===============

Reference accuracies: each task carries Reddi et al.'s reported final
accuracy per server optimizer, which result.json sets beside the measured
one. Only numbers checked against the paper's table go in; where a number
has not been checked yet the preset says ``None`` and result.json reports
``null`` with the source to check.

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (arXiv
  2003.00295), section 5 and appendix D.
"""

from __future__ import annotations

import dataclasses

OPTIMIZERS = ("fedadagrad", "fedadam", "fedyogi", "fedavgm", "fedavg")  # the tables' order


@dataclasses.dataclass(frozen=True)
class Task:
  """A benchmark protocol: the knob values it sets (by config field name) and its references.

  A Reddi et al. task looks its learning rates up by server optimizer
  (`client_lr_log10` etc. in `OPTIMIZERS` order); a FedJAX task fixes its
  optimizer and rates in `train`.
  """

  name: str
  data: dict
  train: dict
  reference_accuracy: dict  # server optimizer -> accuracy, or None where not checked
  reference_source: str
  client_lr_log10: tuple[float, ...] | None = None  # in OPTIMIZERS order
  server_lr_log10: tuple[float, ...] | None = None
  eps_log10: tuple[float, float, float] | None = None  # fedadagrad, fedadam, fedyogi

  def values(self, server_optimizer: str | None = None) -> tuple[dict, dict]:
    """(DataConfig values, TrainConfig values) of the preset (for `server_optimizer`)."""
    if self.client_lr_log10 is None:
      train = dict(self.train)
      if server_optimizer is not None and server_optimizer != train["server_optimizer"]:
        raise ValueError(f"--task={self.name} is FedJAX's {train['server_optimizer']} run; "
                         f"its learning rates do not apply to --server_optimizer="
                         f"{server_optimizer}: use a Reddi et al. task (their rates are "
                         "tabulated per optimizer), or no --task and your own rates")
      return dict(self.data), train
    server_optimizer = server_optimizer or "fedavg"
    if server_optimizer not in OPTIMIZERS:
      raise ValueError(f"--task={self.name} has learning rates for --server_optimizer in "
                       f"{', '.join(OPTIMIZERS)}, got {server_optimizer!r}")
    i = OPTIMIZERS.index(server_optimizer)
    train = dict(self.train, server_optimizer=server_optimizer,
                 client_lr=10.0**self.client_lr_log10[i],
                 server_lr=10.0**self.server_lr_log10[i])
    if i < 3:
      train.update(server_eps=10.0**self.eps_log10[i], server_beta2=0.999)
    return dict(self.data), train


_UNCHECKED = ("Reddi et al. 2020 (arXiv 2003.00295), Table 2: not yet checked against the "
              "paper here; filled in only once checked")
_CIFAR = ("Reddi et al. 2020 (arXiv 2003.00295), Table 2, as recorded in the project's "
          "../shared/REFERENCES.md (FedAvg 44.7, FedYogi 52.4); the other optimizers' values "
          "not yet checked")
_FEDJAX = "google/fedjax experiments/fed_avg/fed_avg.{}.flags"


def _reddi(name, data, train, client, server, eps, reference=None, source=_UNCHECKED):
  refs = dict.fromkeys(OPTIMIZERS)
  refs.update(reference or {})
  return Task(name, data=data, train=dict(train, local_epochs=1), reference_accuracy=refs,
              reference_source=source, client_lr_log10=client, server_lr_log10=server,
              eps_log10=eps)


TASKS = {
    "emnist_character": _reddi(
        "emnist_character", {"dataset": "emnist_federated"},
        {"model": "emnist_cr", "clients_per_round": 10, "batch_size": 20, "rounds": 1500},
        (-1.5, -1.5, -1.5, -1.5, -1), (-1, -2.5, -2.5, -0.5, 0), (-2, -4, -4)),
    "shakespeare_character": _reddi(
        "shakespeare_character", {"dataset": "shakespeare"},
        {"model": "shakespeare_lstm", "clients_per_round": 10, "batch_size": 4, "rounds": 1200},
        (0, 0, 0, 0, 0), (-0.5, -2, -2, -0.5, 0), (-1, -3, -3)),
    "stackoverflow_word": _reddi(
        "stackoverflow_word", {"dataset": "stackoverflow", "max_examples": 1000,
                               "test_clients": 1000, "client_store": "host"},
        {"model": "stackoverflow_lstm", "clients_per_round": 50, "batch_size": 16,
         "rounds": 1500},
        (-0.5, -0.5, -0.5, -0.5, -0.5), (-1.5, -2, -2, 0, 0), (-4, -5, -5)),
    "cifar100_image": _reddi(
        "cifar100_image", {"dataset": "cifar100_federated"},
        {"model": "cifar100_resnet18", "clients_per_round": 10, "batch_size": 20,
         "rounds": 4000},
        (-1, -1.5, -1.5, -1.5, -1), (-1, 0, 0, 0, 0.5), (-2, -1, -1),
        reference={"fedavg": 0.447, "fedyogi": 0.524}, source=_CIFAR),
    "fedjax_emnist_conv": Task(
        "fedjax_emnist_conv", data={"dataset": "emnist_federated"},
        train={"model": "emnist_cr", "clients_per_round": 10, "batch_size": 10,
               "local_epochs": 1, "rounds": 1500, "server_optimizer": "fedadam",
               "server_lr": 1.0, "server_beta2": 0.99, "server_eps": 0.01, "client_lr": 0.001},
        reference_accuracy={"fedadam": None},
        reference_source=_FEDJAX.format("EMNIST_CONV") + " (it reports no accuracy)"),
    "fedjax_stackoverflow_word": Task(
        "fedjax_stackoverflow_word",
        data={"dataset": "stackoverflow", "max_examples": 8000, "test_clients": 1000,
              "client_store": "host"},
        train={"model": "stackoverflow_lstm", "clients_per_round": 50, "batch_size": 16,
               "local_epochs": 1, "rounds": 1500, "server_optimizer": "fedadam",
               "server_lr": 0.02, "server_beta2": 0.999, "server_eps": 1e-8,
               "client_lr": 0.5},
        reference_accuracy={"fedadam": None},
        reference_source=_FEDJAX.format("STACKOVERFLOW_WORD") + " (it reports no accuracy)"),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown --task {name!r}; valid: {', '.join(TASKS)}")
  return TASKS[name]
