"""Simulated links: each client's bandwidths, latency and step time, drawn from a preset.

A `NetworkModel` gives the medians of a population's links and a straggler
spread σ; `sample_links` draws every client's values, seeded::

  link_i    = exp(σ z_i),  compute_i = exp(σ w_i),   z_i, w_i ~ N(0, 1) i.i.d.
  uplink_i  = uplink_bps / link_i      downlink_i = downlink_bps / link_i
  latency_i = latency_s * link_i       step_i     = step_s * compute_i

so every quantity is lognormal around its median. A client's *connection*
is one factor (a bad connection is slow both ways and far away), its
*device* another, independent one (a fast phone can sit on a bad link).
σ = 0 gives every client exactly the medians. `experiment.clock` turns
links, bits and steps into simulated seconds.

Presets (`PRESETS`, `preset`): rounded, order-of-magnitude figures, meant
to be overridden (`configs.NetworkConfig`'s flags); the source of each
value is commented next to it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Mixed into the seed so that the links never reuse the random stream of
# another numpy consumer of the same seed (the partitioners use
# ``default_rng(seed)``): client sizes and link speeds stay independent.
_LINKS_STREAM = 0x6E657477  # "netw"


def check_number(name: str, value: float, *, positive: bool, unit: str) -> None:
  """ValueError naming `name` unless `value` is a finite real > 0 (or >= 0)."""
  bound = "> 0" if positive else ">= 0"
  ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > 0 if positive else value >= 0))
  if not ok:
    raise ValueError(f"{name} must be a finite number {bound} ({unit}), got {value!r}")


def check_int(name: str, value: int, low: int) -> None:
  """ValueError naming `name` unless `value` is an integer >= `low`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NetworkModel:
  """Median link and device figures of a population of clients.

  Attributes:
    uplink_bps: median uplink bandwidth, bits/s (> 0).
    downlink_bps: median downlink bandwidth, bits/s (> 0).
    latency_s: median one-way latency, s (>= 0).
    step_s: median compute time of one local step, s (>= 0).
    straggler_sigma: lognormal σ of the per-client spread (>= 0; 0: every
      client has exactly the medians). Bandwidths are divided by the
      client's connection factor exp(σ z), latency multiplied by it; the
      step time is multiplied by an independent device factor exp(σ w).
  """

  uplink_bps: float
  downlink_bps: float
  latency_s: float
  step_s: float
  straggler_sigma: float = 0.0

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the field and its valid range (NaN/inf rejected)."""
    check_number("uplink_bps", self.uplink_bps, positive=True, unit="bits/s")
    check_number("downlink_bps", self.downlink_bps, positive=True, unit="bits/s")
    check_number("latency_s", self.latency_s, positive=False, unit="s")
    check_number("step_s", self.step_s, positive=False, unit="s")
    check_number("straggler_sigma", self.straggler_sigma, positive=False,
                  unit="lognormal sigma")

  def replace(self, **overrides: float) -> NetworkModel:
    """A copy with some fields changed (validated); ValueError for an unknown field."""
    fields = [f.name for f in dataclasses.fields(self)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
      raise ValueError(f"unknown NetworkModel field(s) {', '.join(unknown)}; "
                       f"valid: {', '.join(fields)}")
    return dataclasses.replace(self, **overrides)

  def describe(self) -> str:
    """One line, in the units people quote (Mb/s, ms)."""
    return (f"uplink {self.uplink_bps / 1e6:g} Mb/s, downlink {self.downlink_bps / 1e6:g} Mb/s, "
            f"latency {self.latency_s * 1e3:g} ms, step {self.step_s * 1e3:g} ms, "
            f"straggler sigma {self.straggler_sigma:g}")


PRESETS: dict[str, NetworkModel] = {
    # A GPU/TPU cluster: the simulation's clients are accelerators in one room.
    "datacenter": NetworkModel(
        uplink_bps=100e9,     # 100 Gb/s: one 100GbE / InfiniBand EDR (4x25G) port
        downlink_bps=100e9,   # symmetric links
        latency_s=10e-6,      # 10 µs one way: a switch hop plus a kernel-bypass/RDMA stack
                              # is a few µs, TCP in a datacenter tens of µs
        step_s=1e-3,          # 1 ms: one small-model minibatch step on an accelerator,
                              # dominated by launch overhead
        straggler_sigma=0.0,  # homogeneous, dedicated machines
    ),
    # Phones and laptops on home Wi-Fi behind consumer broadband.
    "wifi": NetworkModel(
        uplink_bps=50e6,      # 50 Mb/s: order of the global median fixed-broadband upload
                              # (Ookla Speedtest Global Index, 2023-24: tens of Mb/s)
        downlink_bps=100e6,   # 100 Mb/s: order of the global median fixed download (same)
        latency_s=10e-3,      # 10 ms one way: idle home broadband RTT is ~10-30 ms
        step_s=5e-3,          # 5 ms: a phone-class CPU doing one minibatch step (B = 10)
                              # of a small model (~0.1-1 M params, ~10-100 MFLOP)
        straggler_sigma=0.3,  # modelling choice: 10th-90th percentile ratio exp(2.56 σ) = 2.2x
    ),
    # Phones on 4G/LTE in the field (Bonawitz et al. 2019 train on phones on
    # unmetered Wi-Fi only, largely because cellular uplinks are this slow).
    "cellular": NetworkModel(
        uplink_bps=5e6,       # 5 Mb/s: typical LTE upload in drive/crowd tests is ~2-10 Mb/s
                              # (OpenSignal/Ookla reports); uplink is the FL bottleneck
        downlink_bps=20e6,    # 20 Mb/s: typical LTE download ~10-30 Mb/s (same sources)
        latency_s=100e-3,     # 100 ms one way: LTE RTTs of 50-200 ms under load, the
                              # middle of the 50-500 ms range
        step_s=5e-3,          # 5 ms: as for wifi (same device class)
        straggler_sigma=0.5,  # modelling choice: 10th-90th percentile ratio 3.6x, the
                              # spread of per-device throughput in such reports
    ),
}


def preset(name: str, **overrides: float | None) -> NetworkModel:
  """The preset `name` with `overrides` applied (None values are ignored).

  Args:
    name: one of `PRESETS`.
    **overrides: `NetworkModel` fields; None leaves the preset's value, so
      unset flags can be passed straight through.

  Returns:
    A validated `NetworkModel`.

  Raises:
    ValueError: unknown preset (listing the valid ones), unknown field or a
      value out of range.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown network preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
  return PRESETS[name].replace(**{k: v for k, v in overrides.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class Links:
  """Realised per-client link and device figures: float64 arrays of shape [num_clients]."""

  uplink_bps: np.ndarray
  downlink_bps: np.ndarray
  latency_s: np.ndarray
  step_s: np.ndarray

  def __post_init__(self):
    shape = None
    for f in dataclasses.fields(self):
      a = np.asarray(getattr(self, f.name), dtype=np.float64)
      if a.ndim != 1 or (shape is not None and a.shape != shape):
        raise ValueError(f"Links.{f.name} must be a 1-D array like the other fields "
                         f"(shape {shape}), got shape {a.shape}")
      shape = a.shape
      positive = f.name.endswith("bps")
      if not (np.all(np.isfinite(a)) and np.all(a > 0 if positive else a >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"Links.{f.name} must be finite and {bound} for every client")
      object.__setattr__(self, f.name, a)

  @property
  def num_clients(self) -> int:
    return len(self.uplink_bps)

  def medians(self) -> dict[str, float]:
    """The realised median of each field (what a report should quote)."""
    return {f.name: float(np.median(getattr(self, f.name))) for f in dataclasses.fields(self)}


def sample_links(net: NetworkModel, num_clients: int, seed: int) -> Links:
  """Draws every client's links from `net` (see the module docstring).

  Args:
    net: the medians and the straggler σ.
    num_clients: clients to draw (>= 0).
    seed: non-negative int; the same seed gives the same links. The stream
      is separate from other ``default_rng(seed)`` users.

  Returns:
    `Links`; with ``net.straggler_sigma == 0`` every client has exactly the
    medians.
  """
  net.validate()
  check_int("num_clients", num_clients, 0)
  check_int("seed", seed, 0)
  rng = np.random.default_rng([int(seed), _LINKS_STREAM])
  connection = np.exp(net.straggler_sigma * rng.standard_normal(num_clients))
  device = np.exp(net.straggler_sigma * rng.standard_normal(num_clients))
  return Links(uplink_bps=net.uplink_bps / connection,
               downlink_bps=net.downlink_bps / connection,
               latency_s=net.latency_s * connection,
               step_s=net.step_s * device)
