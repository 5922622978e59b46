r"""A simulated network clock: how long rounds would take on real links.

Host-side numpy bookkeeping (nothing here is traced): the runners measure
how many bits each client actually sends (`codecs.uplink_bits` traces the
encoder and counts the payload's arrays) and this module turns bits, links
and local steps into simulated seconds.

**Links** (`experiment.links`): each client's bandwidths, latency and step
time, drawn once per run from a `NetworkModel` preset.

**Synchronous FedAvg round** (`sync_round_time`): the server broadcasts the
model, each selected client downloads it, trains, uploads; the round ends
when the slowest of them has uploaded::

  T_i     = (latency_i + down_bits_i / downlink_i)      # download
          + num_steps_i * step_i                         # local training
          + (latency_i + up_bits_i / uplink_i)           # upload
  T_round = max_i T_i

The downlink is what each client downloads (the float32 model for FedAvg;
with a downlink codec the broadcasts the client missed, or the model if
fewer bits: `algorithms.downlink.CatchUp`, so one number per client), the
uplink the codec's payload (`FederatedAlgorithm.uplink_bits`).
`RoundClock` charges each round from what the round itself returns, its
client ids and their local step counts: clients without data (0 steps) are
left out of the max (they train nothing and send nothing, so the server
does not wait for them); a round whose clients are all empty costs 0 s.

**Averaging through a server** (`allreduce_time`): every worker uploads,
the server averages, every worker downloads; each half waits for its
slowest worker::

  T_allreduce = max_i(latency_i + up_bits / uplink_i)
              + max_i(latency_i + down_bits / downlink_i)

**Periodic and delayed averaging** (`periodic_times`, for local SGD,
delayed gradient averaging and synchronous SGD): W lock-step workers each
take one local step every ``step_s`` (the slowest worker's step time).
Every K steps (t = K, 2K, ...) they send an update, which departs when step
t's compute ends (time S_t) and arrives ``comm_s`` later. It is applied D
steps later: the model after step t + D uses it, so the clock after that
step is ``max(S_{t+D}, S_t + comm_s)``, a stall when the message is late.
D = 0 is synchronous averaging (each sync costs the full ``comm_s``); with
``D * step_s >= comm_s`` communication is hidden entirely. `delay_steps`
derives the smallest such D from the links:
``ceil(T_allreduce / max_i step_i)``. Messages due after the last step are
not waited for.

References:
  Bonawitz et al. 2019, Towards Federated Learning at Scale: System Design
  (arXiv 1902.01046): rounds paced by the slowest devices, mobile links.
  Zhu et al. 2021, Delayed Gradient Averaging: Tolerate the Communication
  Latency for Federated Learning (NeurIPS 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from fedjax_comp.experiment.links import (PRESETS, Links, NetworkModel, check_int,  # noqa: F401
                                         check_number, preset, sample_links)


def _ids(links: Links, ids: ArrayLike) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
    raise ValueError(f"ids must be a 1-D array of client ids, got {ids.dtype} {ids.shape}")
  ids = ids.astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= links.num_clients):
    raise ValueError(f"ids must be in [0, num_clients={links.num_clients}), got "
                     f"{ids.min()}..{ids.max()}")
  return ids


def _per_client(name: str, value: ArrayLike, n: int) -> np.ndarray:
  """A scalar or a length-n array of finite values >= 0, as float64 of shape [n]."""
  a = np.asarray(value, dtype=np.float64)
  if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != n):
    raise ValueError(f"{name} must be a scalar or one value per id ({n}), got shape {a.shape}")
  if not (np.all(np.isfinite(a)) and np.all(a >= 0)):
    raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
  return np.broadcast_to(a, (n,))


def client_times(links: Links, ids: ArrayLike, *, up_bits: ArrayLike, down_bits: ArrayLike,
                 num_steps: ArrayLike) -> np.ndarray:
  """Each selected client's round time: download + local steps + upload.

  Args:
    links: from `sample_links`.
    ids: the selected clients' ids, shape [m].
    up_bits: bits each client uploads (a scalar, or one per id).
    down_bits: bits each client downloads (a scalar, or one per id).
    num_steps: local steps each client takes (a scalar, or one per id).

  Returns:
    float64 seconds, shape [m]: ``(latency + down_bits / downlink) +
    num_steps * step + (latency + up_bits / uplink)`` per client.
  """
  ids = _ids(links, ids)
  m = len(ids)
  up = _per_client("up_bits", up_bits, m)
  down = _per_client("down_bits", down_bits, m)
  steps = _per_client("num_steps", num_steps, m)
  latency = links.latency_s[ids]
  download = latency + down / links.downlink_bps[ids]
  compute = steps * links.step_s[ids]
  upload = latency + up / links.uplink_bps[ids]
  return download + compute + upload


def sync_round_time(links: Links, ids: ArrayLike, *, up_bits: ArrayLike, down_bits: ArrayLike,
                    num_steps: ArrayLike) -> float:
  """A synchronous round: the slowest selected client's `client_times` (0.0 for no ids)."""
  times = client_times(links, ids, up_bits=up_bits, down_bits=down_bits, num_steps=num_steps)
  return float(times.max()) if times.size else 0.0


def allreduce_time(links: Links, ids: ArrayLike, *, up_bits: ArrayLike,
                   down_bits: ArrayLike) -> float:
  """One averaging through a server: slowest upload, then slowest download (0.0 for no ids)."""
  ids = _ids(links, ids)
  if not ids.size:
    return 0.0
  up = _per_client("up_bits", up_bits, len(ids))
  down = _per_client("down_bits", down_bits, len(ids))
  latency = links.latency_s[ids]
  upload = float(np.max(latency + up / links.uplink_bps[ids]))
  download = float(np.max(latency + down / links.downlink_bps[ids]))
  return upload + download


def delay_steps(links: Links, ids: ArrayLike, *, up_bits: ArrayLike, down_bits: ArrayLike) -> int:
  """The delay D (in local steps) that hides one `allreduce_time` behind compute.

  ``D = ceil(allreduce_time / max_i step_i)`` over `ids` (lock-step workers
  go at the slowest one's pace); 0 when the allreduce takes no time. The
  ratio is rounded to 9 decimals before the ceiling, so 0.3 s / 0.1 s is 3,
  not 4.

  Raises:
    ValueError: every step time is 0 but communication is not (D would be
      infinite).
  """
  comm = allreduce_time(links, ids, up_bits=up_bits, down_bits=down_bits)
  if comm == 0.0:
    return 0
  step = float(np.max(links.step_s[_ids(links, ids)]))
  if step == 0.0:
    raise ValueError(f"cannot derive the delay D: every step_s is 0 but one allreduce takes "
                     f"{comm:g} s; set a step time > 0")
  return math.ceil(round(comm / step, 9))


def periodic_times(num_steps: int, period: int, delay: int, step_s: float,
                   comm_s: float) -> np.ndarray:
  """The simulated clock of lock-step workers averaging every K steps with delay D.

  Step s's compute ends at ``S_s = clock_{s-1} + step_s``. At every
  t = K, 2K, ... an update departs at S_t and arrives at ``S_t + comm_s``;
  the model after step t + D uses it, so ``clock_{t+D} = max(S_{t+D},
  S_t + comm_s)`` (a stall when the message is late); every other step
  ``clock_s = S_s``. D = 0 is synchronous averaging (each sync adds the
  full `comm_s`); updates due after the last step are not waited for.

  Args:
    num_steps: local steps to simulate (>= 0).
    period: K, steps between averagings (>= 1).
    delay: D, steps between sending an update and applying it (>= 0).
    step_s: time of one (the slowest worker's) local step, s (>= 0).
    comm_s: time from sending an update to its arrival, e.g.
      `allreduce_time`, s (>= 0).

  Returns:
    float64 of shape [num_steps]: the clock after each step.
  """
  check_int("num_steps", num_steps, 0)
  check_int("K (period)", period, 1)
  check_int("D (delay)", delay, 0)
  check_number("step_s", step_s, positive=False, unit="s")
  check_number("comm_s", comm_s, positive=False, unit="s")
  times = np.empty(num_steps, dtype=np.float64)
  arrivals: dict[int, float] = {}  # step whose model needs the message -> its arrival
  clock = 0.0
  for s in range(1, num_steps + 1):
    clock += step_s  # S_s
    if s % period == 0 and s + delay <= num_steps:
      arrivals[s + delay] = clock + comm_s
    if s in arrivals:
      clock = max(clock, arrivals.pop(s))
    times[s - 1] = clock
  return times


class Clock:
  """The running total of simulated seconds (round-based FL)."""

  def __init__(self, total_s: float = 0.0):
    check_number("total_s", total_s, positive=False, unit="s")
    self.total_s = float(total_s)

  def add(self, seconds: float) -> float:
    """Adds one round's `seconds` (finite, >= 0); returns the new total."""
    check_number("seconds", seconds, positive=False, unit="s")
    self.total_s += float(seconds)
    return self.total_s


class RoundClock(Clock):
  """The clock of synchronous federated rounds on links drawn once per client.

  Args:
    net: the population's medians and spread (`preset`).
    num_clients: the population size; links are drawn for every client.
    seed: the links' seed (the run's seed).
  """

  def __init__(self, net: NetworkModel, num_clients: int, seed: int, total_s: float = 0.0):
    super().__init__(total_s)
    self.net = net
    self.links = sample_links(net, num_clients, seed)

  def round_seconds(self, client_ids: ArrayLike, client_steps: ArrayLike, *,
                    up_bits: ArrayLike, down_bits: ArrayLike) -> float:
    """`sync_round_time` of the clients that trained (steps > 0); 0.0 if none did.
    up_bits and down_bits: a scalar, or one per entry of client_ids."""
    ids = np.asarray(client_ids)
    steps = np.asarray(client_steps)
    trained = steps > 0

    def pick(name, bits):
      bits = np.asarray(bits)
      if bits.ndim and bits.shape != ids.shape:
        raise ValueError(f"{name} must be a scalar or one value per client id ({ids.shape[0]}), "
                         f"got shape {bits.shape}")
      return bits[trained] if bits.ndim else bits

    return sync_round_time(self.links, ids[trained], up_bits=pick("up_bits", up_bits),
                           down_bits=pick("down_bits", down_bits), num_steps=steps[trained])

  def add_round(self, client_ids: ArrayLike, client_steps: ArrayLike, *, up_bits: ArrayLike,
                down_bits: ArrayLike) -> tuple[float, float]:
    """Charges one round; returns ``(its seconds, the new total)``."""
    seconds = self.round_seconds(client_ids, client_steps, up_bits=up_bits,
                                 down_bits=down_bits)
    return seconds, self.add(seconds)


def time_to_target(times: Sequence[float], accuracies: Sequence[float],
                   target: float) -> float | None:
  """The first of `times` whose accuracy is >= `target`; None if never reached.

  Works for any monotone x: pass round numbers to get rounds to target.
  NaN accuracies never reach the target.
  """
  if len(times) != len(accuracies):
    raise ValueError(f"times and accuracies must have the same length, got {len(times)} "
                     f"and {len(accuracies)}")
  for t, acc in zip(times, accuracies):
    if acc is not None and acc >= target:
      return t.item() if isinstance(t, np.generic) else t
  return None


def readable_unit(seconds: float) -> tuple[str, float]:
  """A unit for an axis spanning `seconds`: ("s", 1), ("min", 60) or ("h", 3600)."""
  if seconds < 120:
    return "s", 1.0
  if seconds < 2 * 3600:
    return "min", 60.0
  return "h", 3600.0
