r"""Compression kernels timed against a copy of the same array, in the same run.

::

  python -m benchmarks.kernels --output_dir=results/kernels
  python -m benchmarks.kernels --shapes=1024x16384 --bits=2

For each ``batch x dim`` shape in ``--shapes`` it times, on float32 data:

* ``copy``: ``-x``, one read and one write of the array: the yardstick;
* ``memcpy``: numpy's ``copyto`` into a preallocated array, and
  ``copy_donated``: ``-x`` with its input donated, chained (the output
  reuses the input's buffer). XLA's ``copy`` allocates a fresh output every
  call, and on this machine first-touch page faults cap it at 2-3 GB/s for
  16-64 MB arrays, against 12-27 GB/s for these two: every kernel's
  ``ratio_to_best_copy`` divides by the faster of them;
* ``fwht_donated``: the FWHT with its input donated, chained (it is an
  involution), the same fresh-allocation cost removed;
* ``fwht``: the orthonormal Walsh-Hadamard transform of every row (the
  native FFI kernel of `fedjax_comp.native` where it builds), and
  ``fwht_xla``: the same transform as XLA's butterflies, with
  ``native_speedup`` = its time over the native kernel's;
* ``rotate``: signs then FWHT (H D x), the codec's rotation;
* ``quantize_pack/b``: stochastic quantization to b bits plus bit packing;
* ``unpack_dequantize/b``: the inverse;
* ``dense_hadamard``: ``x @ H_dim`` as one dense matmul, where H fits
  (dim <= 4096); a transform a user could write without a kernel;
* ``codec_roundtrip/b``: encode+decode of the ``hadamard,quantize(bits=b)``
  codec on one vector (``1 x dim`` shapes only), the figure compared with
  TensorFlow Model Optimization's ``hadamard_quantization`` encoder.

Each timing is the median of ``--repeats`` runs after a warm-up, with
`jax.block_until_ready`; compile time is reported apart. ``ratio_to_copy``
divides by the copy timed in the same run, so the ratios are comparable
across machines even when absolute times are not. ``gb_per_s`` counts bytes
read plus bytes written. Metrics are keyed ``"<kernel>@<batch>x<dim>"``. The
subjects (`benchmarks._throughput_setup`) are the ones the CI check times.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

from absl import flags

from benchmarks import _flags
from benchmarks import _throughput_setup as subjects
from fedjax_comp import kernels
from fedjax_comp.experiment import results

DEFAULT_SHAPES = ("1024x16384", "4096x1024", "1x1048576")
DEFAULT_BITS = ("1", "2", "4", "8")


def parse_shape(text: str) -> tuple[int, int]:
  """``"BATCHxDIM"`` -> (batch, dim), dim a power of two."""
  try:
    batch, dim = (int(v) for v in text.strip().lower().split("x"))
  except ValueError:
    raise ValueError(f"--shapes entries are BATCHxDIM, e.g. 1024x16384; got {text!r}") from None
  if batch < 1 or dim < 1 or not kernels.is_pow2(dim):
    raise ValueError(f"--shapes: batch must be >= 1 and dim a power of two, got {text!r}")
  return batch, dim


def parse_bits(text: str) -> int:
  try:
    bits = int(text.strip())
    kernels.check_bits(bits)
  except ValueError:
    raise ValueError(f"--bits entries must be integers in 1..8, got {text!r}") from None
  return bits


def parse_count(flag: str, text: str, low: int, high: int | None = None) -> int:
  rule = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
  try:
    value = int(str(text).strip())
  except ValueError:
    value = None
  if value is None or value < low or (high is not None and value > high):
    raise ValueError(f"--{flag} must be {rule}, got {text!r}")
  return value


def check_memory(shapes, budget: int) -> None:
  """Refuses, naming the bytes, a shape whose arrays would not fit in `budget`."""
  for batch, dim in shapes:
    need = subjects.kernel_bytes(batch, dim)
    if need > budget:
      raise ValueError(f"--shapes: {batch}x{dim} needs about {need / 2**30:.2f} GiB (input, "
                       f"output and codes in float32), over the budget of "
                       f"{budget / 2**30:.2f} GiB (half a device's memory)")


def define_flags() -> dict:
  return {
      "shapes": flags.DEFINE_list("shapes", list(DEFAULT_SHAPES), "batch x dim shapes to time."),
      "bits": flags.DEFINE_list("bits", list(DEFAULT_BITS), "Quantization bit widths, 1..8."),
      "repeats": flags.DEFINE_string("repeats", "5", "Timed runs per kernel (the median is "
                                     "kept), >= 1."),
      "seed": flags.DEFINE_string("seed", "0", "Seed of the data, in [0, 2**32)."),
  }


def main(holders: dict) -> int:
  if not holders["shapes"].value or not holders["bits"].value:
    raise ValueError("--shapes and --bits must each list at least one entry")
  shapes = [parse_shape(s) for s in holders["shapes"].value]
  bits_list = [parse_bits(b) for b in holders["bits"].value]
  repeats = parse_count("repeats", holders["repeats"].value, 1)
  seed = parse_count("seed", holders["seed"].value, 0, 2**32 - 1)
  if _flags.RESUME.value:
    raise ValueError("--resume: a kernels run has no checkpoint; use --overwrite")
  check_memory(shapes, subjects.device_budget())
  out = _flags.check_output_dir(_flags.OUTPUT_DIR.value or "results/kernels",
                                overwrite=_flags.OVERWRITE.value)
  recorder = results.RunRecorder(out, "kernels")
  metrics = subjects.measure_kernels(shapes, bits_list, repeats, seed, log=recorder.log)
  path = recorder.finish(succeeded=True, metrics=metrics,
                         extras={"shapes": [list(s) for s in shapes], "bits": bits_list,
                                 "repeats": repeats, **results.environment()})
  print(f"results: {path}")
  return 0


if __name__ == "__main__":
  _HOLDERS = define_flags()
  _flags.main(lambda: main(_HOLDERS))
