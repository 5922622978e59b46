"""Network-clock flags shared by the runners (see `fedjax_comp.network`).

::

  --network=cellular                      # a preset: datacenter | wifi | cellular, or none
  --network=wifi --uplink_mbps=10 --straggler_sigma=1
  --target_accuracy=0.6                   # report rounds / simulated time to this accuracy

Unset overrides (None) keep the preset's value. A runner reads
`network_from_flags()` (a `NetworkModel`, or None for ``--network=none``)
or, to keep the choice in a JSON config, `overrides_from_flags()` (the set
overrides as `NetworkModel` fields in SI units), and ``TARGET.value``.
"""

from __future__ import annotations

from absl import flags

from fedjax_comp import network


def _preset_help() -> str:
  return "; ".join(f"{name}: {net.describe()}" for name, net in network.PRESETS.items())


NETWORK = flags.DEFINE_enum(
    "network", "cellular", ["none", *network.PRESETS],
    "Simulated network for the wall-clock model ('none': no clock). Presets: " + _preset_help(),
    allow_override=True)
UPLINK_MBPS = flags.DEFINE_float("uplink_mbps", None, "Median uplink bandwidth, Mb/s "
                                 "(default: the preset's).", allow_override=True)
DOWNLINK_MBPS = flags.DEFINE_float("downlink_mbps", None, "Median downlink bandwidth, Mb/s "
                                   "(default: the preset's).", allow_override=True)
LATENCY_MS = flags.DEFINE_float("latency_ms", None, "Median one-way latency, ms "
                                "(default: the preset's).", allow_override=True)
STEP_MS = flags.DEFINE_float("step_ms", None, "Median compute time of one local step, ms "
                             "(default: the preset's).", allow_override=True)
STRAGGLER_SIGMA = flags.DEFINE_float(
    "straggler_sigma", None, "Lognormal sigma of the per-client spread of links and step "
    "times; 0: identical clients (default: the preset's).", allow_override=True)
TARGET = flags.DEFINE_float("target_accuracy", 0.55, "Test accuracy whose rounds and simulated "
                            "time to reach are reported.", allow_override=True)

# flag holder, NetworkModel field, factor from the flag's unit to SI, must be > 0
_OVERRIDES = (
    (UPLINK_MBPS, "uplink_bps", 1e6, True),
    (DOWNLINK_MBPS, "downlink_bps", 1e6, True),
    (LATENCY_MS, "latency_s", 1e-3, False),
    (STEP_MS, "step_s", 1e-3, False),
    (STRAGGLER_SIGMA, "straggler_sigma", 1.0, False),
)


def overrides_from_flags() -> dict[str, float]:
  """The set override flags as `NetworkModel` fields in SI units (unset ones left out).

  Raises:
    ValueError: naming the flag, for a negative (or zero bandwidth) or
      non-finite value, or for an override given with ``--network=none``.
  """
  overrides = {}
  for holder, field, scale, positive in _OVERRIDES:
    value = holder.value
    if value is None:
      continue
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
      raise ValueError(f"--{holder.name} must be a finite number {'> 0' if positive else '>= 0'},"
                       f" got {value}")
    # ms / 1e3 rather than ms * 1e-3: 100 ms is then exactly the double nearest 0.1 s.
    overrides[field] = value / 1e3 if scale == 1e-3 else value * scale
  if overrides and NETWORK.value == "none":
    raise ValueError(f"--network=none takes no link overrides, got "
                     f"{', '.join('--' + h.name for h, *_ in _OVERRIDES if h.value is not None)}")
  return overrides


def network_from_flags() -> network.NetworkModel | None:
  """The flags' `NetworkModel` (a preset plus overrides), or None for ``--network=none``."""
  overrides = overrides_from_flags()
  if NETWORK.value == "none":
    return None
  return network.preset(NETWORK.value, **overrides)


def target_from_flags() -> float:
  """``--target_accuracy``, checked to lie in [0, 1]."""
  value = TARGET.value
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"--target_accuracy must be in [0, 1], got {value}")
  return value
