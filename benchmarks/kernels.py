r"""Compression kernels timed against a copy of the same array, in the same run.

::

  python -m benchmarks.kernels --output_dir=results/kernels
  python -m benchmarks.kernels --shapes=1024x16384 --bits=2

For each ``batch x dim`` shape in ``--shapes`` it times, on float32 data:

* ``copy``: ``-x``, one read and one write of the array: the yardstick;
* ``fwht``: the orthonormal Walsh-Hadamard transform of every row;
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
read plus bytes written. Metrics are keyed ``"<kernel>@<batch>x<dim>"``.
"""

from __future__ import annotations

from benchmarks import _cpu  # noqa: F401  (first: XLA device flags)

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from fedjax_comp import codecs, kernels, results

_SHAPES = flags.DEFINE_list("shapes", ["1024x16384", "4096x1024", "1x1048576"],
                            "batch x dim shapes to time.", allow_override=True)
_BITS = flags.DEFINE_list("bits", ["1", "2", "4", "8"], "Quantization bit widths.", allow_override=True)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per kernel (the median is kept).", allow_override=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/kernels", "Where results go.", allow_override=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data.", allow_override=True)

_DENSE_MAX_DIM = 4096  # H_4096 is 64 MB in float32; larger ones do not fit sensibly


def parse_shape(text: str) -> tuple[int, int]:
  try:
    batch, dim = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"--shapes entries are BATCHxDIM, e.g. 1024x16384; got {text!r}") from None
  if batch < 1 or dim < 1 or not kernels.is_pow2(dim):
    raise ValueError(f"--shapes: batch must be >= 1 and dim a power of two, got {text!r}")
  return batch, dim


def time_fn(fn, *args, repeats: int) -> tuple[float, float]:
  """(compile + first run seconds, median warm seconds)."""
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return first, statistics.median(times)


def _nbytes(tree) -> int:
  return sum(int(np.prod(l.shape)) * l.dtype.itemsize for l in jax.tree.leaves(tree))


def run(shapes, bits_list, repeats: int, output_dir: str, seed: int = 0, verbose: bool = True):
  say = print if verbose else (lambda *a, **k: None)
  recorder = results.RunRecorder(output_dir, "kernels")
  metrics = {}
  key = jax.random.key(seed)

  def record(name, shape, first, sec, bytes_moved, copy_s, **extra):
    m = {"sec": sec, "compile_s": max(first - sec, 0.0), "ratio_to_copy": sec / copy_s,
         "gb_per_s": bytes_moved / sec / 1e9, **extra}
    metrics[f"{name}@{shape[0]}x{shape[1]}"] = m
    recorder.log({"kernel": name, "shape": list(shape), **m})
    say(f"{name:<24} {shape[0]:>5}x{shape[1]:<8} {sec * 1e3:9.2f} ms  "
        f"{m['ratio_to_copy']:6.2f}x copy  {m['gb_per_s']:6.2f} GB/s")

  for shape in shapes:
    x = jax.random.normal(jax.random.fold_in(key, shape[0] * shape[1]), shape, jnp.float32)
    nbytes = x.size * 4
    copy = jax.jit(lambda v: -v)
    first, copy_s = time_fn(copy, x, repeats=repeats)
    record("copy", shape, first, copy_s, 2 * nbytes, copy_s)

    first, sec = time_fn(jax.jit(kernels.fwht), x, repeats=repeats)
    record("fwht", shape, first, sec, 2 * nbytes, copy_s)
    rot = jax.jit(lambda k, v: kernels.rotate(k, v))
    first, sec = time_fn(rot, key, x, repeats=repeats)
    record("rotate", shape, first, sec, 2 * nbytes, copy_s)
    if shape[1] <= _DENSE_MAX_DIM:
      h = jnp.asarray(kernels.hadamard_matrix(shape[1], np.float32) / np.sqrt(shape[1]))
      dense = jax.jit(lambda v, h: v @ h)
      first, sec = time_fn(dense, x, h, repeats=repeats)
      record("dense_hadamard", shape, first, sec, 2 * nbytes + h.size * 4, copy_s,
             fwht_speedup=sec / metrics[f"fwht@{shape[0]}x{shape[1]}"]["sec"])

    for bits in bits_list:
      def qpack(k, v, bits=bits):
        codes, lo, hi = kernels.quantize(k, v, bits)
        return kernels.pack(codes, bits), lo, hi

      def unpack_deq(words, lo, hi, bits=bits, n=shape[1]):
        return kernels.dequantize(kernels.unpack(words, bits, n), lo, hi, bits)

      qpack = jax.jit(qpack)
      packed = qpack(key, x)
      first, sec = time_fn(qpack, key, x, repeats=repeats)
      record(f"quantize_pack/{bits}", shape, first, sec, nbytes + _nbytes(packed), copy_s)
      unpack_deq = jax.jit(unpack_deq)
      first, sec = time_fn(unpack_deq, *packed, repeats=repeats)
      record(f"unpack_dequantize/{bits}", shape, first, sec, nbytes + _nbytes(packed), copy_s)

      if shape[0] == 1:
        codec = codecs.parse(f"hadamard,quantize(bits={bits})")
        vec = x[0]

        def roundtrip(k, v, codec=codec):
          payload, _ = codec.encode(k, v, codec.init(v))
          return codec.decode(k, payload)

        roundtrip = jax.jit(roundtrip)
        first, sec = time_fn(roundtrip, key, vec, repeats=repeats)
        trial_keys = jax.random.split(jax.random.fold_in(key, 7), 20)
        errs = [float(jnp.sum((roundtrip(k, vec) - vec) ** 2) / jnp.sum(vec**2))
                for k in trial_keys]
        record(f"codec_roundtrip/{bits}", shape, first, sec, 2 * nbytes, copy_s,
               vnmse=float(np.mean(errs)),
               bits_per_coordinate=codecs.uplink_bits(codec, vec) / shape[1])

  path = recorder.finish(succeeded=True, metrics=metrics,
                         extras={"shapes": [list(s) for s in shapes], "bits": list(bits_list),
                                 "repeats": repeats, **results.environment()})
  say(f"results: {path}")
  return metrics


def main(argv):
  del argv
  try:
    shapes = [parse_shape(s) for s in _SHAPES.value]
    bits_list = [int(b) for b in _BITS.value]
    for b in bits_list:
      kernels._check_bits(b)
    if _REPEATS.value < 1:
      raise ValueError(f"--repeats must be >= 1, got {_REPEATS.value}")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  run(shapes, bits_list, _REPEATS.value, _OUTPUT_DIR.value, _SEED.value)


if __name__ == "__main__":
  app.run(main)
