"""Native CPU kernels, compiled on first use and called through XLA's FFI.

Native kernels, each used on the CPU for float32 when `available()`, the
XLA path kept on GPU/TPU, for float64, and wherever they cannot be built:

- the fast Walsh-Hadamard transform (`fwht.cc`), which makes two passes over
  memory where XLA:CPU's fusions of `kernels.fwht` make about ten;
- DRIVE/EDEN's quantizer of the rotated update and its inverse
  (`rotated_codes.cc`, `rotated_quantize` and `rotated_dequantize`): three
  passes where XLA:CPU materializes the unit vector, the centroids and the
  codes each in a fresh buffer;
- exact top-k by magnitude (`top_k.cc`, `top_k_indices`): a radix select,
  two passes over the row, where `lax.top_k` sorts on a CPU;
- the stochastic min-max quantizer fused with bit packing, and its inverse
  (`quantize.cc`, `quantize_pack` and `unpack_dequantize`), and TernGrad's
  the same way (`ternary_pack`, `ternary_unpack`), and QSGD's (`qsgd_pack`,
  `qsgd_unpack`, to float32 rounding): two passes where XLA:CPU
  materializes the codes and then packs them;
- ``jax.random.bits`` of a threefry2x32 key (`threefry.cc`, `threefry_bits`),
  bit for bit, on 8-lane vectors where XLA:CPU's cipher runs one word at a
  time, and `kernels.stratified_indices` from the same words
  (`stratified_indices`: the random strata of rand_k, subsample,
  random_mask and EDEN's fractional bits);
- whether a row is free of NaN and Inf (`finite.cc`, `all_finite`), where
  XLA:CPU reduces on one thread;
- ``zeros(n).at[idx].set(values)`` for ascending indices (`scatter.cc`,
  `scatter_ascending`): each output range written once, in parallel, where
  XLA:CPU zero-fills and then scatters on one thread.

Building: the first call compiles the sources with the C++ compiler (``$CXX``,
else ``c++``, ``g++`` or ``clang++``), jaxlib's FFI headers and
``-O3 -march=native`` into ``$FEDJAX_COMP_CACHE/native/<key>/`` (about 15 s
on two cores, the sources compiled in parallel, once), where the key hashes
the sources, the flags, the compiler's version,
jaxlib's version and this CPU's model and flags, so a cache shared between
machines never loads a binary built for another CPU. Concurrent processes
each build to a private file and rename it into place.

``FEDJAX_COMP_NATIVE=0`` turns the kernel off (the XLA path everywhere). A
failed build logs the compiler's message once and falls back; nothing else
changes, but the last bits of a rotation differ between the two paths (their
additions are grouped differently), so runs compare bit for bit only on
machines that agree on whether the kernel is built.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

FWHT_TARGET = "fedjax_comp_fwht"
QUANTIZE_TARGET = "fedjax_comp_rotated_quantize"
DEQUANTIZE_TARGET = "fedjax_comp_rotated_dequantize"
TOP_K_TARGET = "fedjax_comp_top_k"
QUANTIZE_PACK_TARGET = "fedjax_comp_quantize_pack"
UNPACK_DEQUANTIZE_TARGET = "fedjax_comp_unpack_dequantize"
TERNARY_PACK_TARGET = "fedjax_comp_ternary_pack"
TERNARY_UNPACK_TARGET = "fedjax_comp_ternary_unpack"
THREEFRY_TARGET = "fedjax_comp_threefry_bits"
STRATIFIED_TARGET = "fedjax_comp_stratified"
ALL_FINITE_TARGET = "fedjax_comp_all_finite"
SCATTER_TARGET = "fedjax_comp_scatter_ascending"
QSGD_PACK_TARGET = "fedjax_comp_qsgd_pack"
QSGD_UNPACK_TARGET = "fedjax_comp_qsgd_unpack"
# Each FFI target and the library symbol of its handler (XLA_FFI_DEFINE_HANDLER_SYMBOL).
HANDLERS = ((FWHT_TARGET, "FedjaxCompFwht"),
            (QUANTIZE_TARGET, "FedjaxCompRotatedQuantize"),
            (DEQUANTIZE_TARGET, "FedjaxCompRotatedDequantize"),
            (TOP_K_TARGET, "FedjaxCompTopK"),
            (QUANTIZE_PACK_TARGET, "FedjaxCompQuantizePack"),
            (UNPACK_DEQUANTIZE_TARGET, "FedjaxCompUnpackDequantize"),
            (TERNARY_PACK_TARGET, "FedjaxCompTernaryPack"),
            (TERNARY_UNPACK_TARGET, "FedjaxCompTernaryUnpack"),
            (THREEFRY_TARGET, "FedjaxCompThreefryBits"),
            (STRATIFIED_TARGET, "FedjaxCompStratified"),
            (ALL_FINITE_TARGET, "FedjaxCompAllFinite"),
            (SCATTER_TARGET, "FedjaxCompScatterAscending"),
            (QSGD_PACK_TARGET, "FedjaxCompQsgdPack"),
            (QSGD_UNPACK_TARGET, "FedjaxCompQsgdUnpack"))
_HERE = pathlib.Path(__file__).parent
_SOURCES = (_HERE / "fwht.cc", _HERE / "rotated_codes.cc", _HERE / "top_k.cc",
            _HERE / "quantize.cc", _HERE / "threefry.cc", _HERE / "finite.cc",
            _HERE / "scatter.cc")
_HEADERS = (_HERE / "pack.h", _HERE / "parallel_for.h", _HERE / "scan.h", _HERE / "vec.h")
# -ffp-contract=off: no fused multiply-adds, so products and sums round op by
# op (the fused quantizer's codes match the XLA path's bit for bit; its decode
# matches numpy's float32, XLA's jitted decode to an ulp).
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w")


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_signature(compiler: str) -> str:
  """What ``-march=native`` means here: the compiler's predefined macros for it.

  They list every instruction-set feature the build may use (``__AVX2__``,
  ``__ARM_FEATURE_SVE``, ...) on any architecture, so a cache shared between
  machines never hands one CPU a binary built for another.
  """
  done = subprocess.run([compiler, "-march=native", "-E", "-dM", "-x", "c++", os.devnull],
                        capture_output=True, text=True, check=False)
  return "\n".join(sorted(done.stdout.splitlines())) + done.stderr


def _build_dir() -> pathlib.Path:
  from fedjax_comp.data.sources import cache_dir  # pylint: disable=g-import-not-at-top
  return cache_dir() / "native"


def _build(compiler: str) -> pathlib.Path:
  """Compiles the sources (or finds them compiled) and returns the shared library's path."""
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           check=False).stdout
  key = hashlib.sha256("\0".join([
      *(p.read_text() for p in _SOURCES + _HEADERS), " ".join(_FLAGS), version, jaxlib.__version__,
      _cpu_signature(compiler),
  ]).encode()).hexdigest()[:16]
  out_dir = _build_dir() / key
  lib = out_dir / "libfedjax_comp_native.so"
  if lib.exists():
    return lib
  out_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  objects = tempfile.mkdtemp(dir=out_dir)
  try:
    # Each source to an object file, all at once (the build is about 20 s
    # serially, most of it fwht.cc and quantize.cc), then one link.
    compile_flags = [f for f in _FLAGS if f != "-shared"]
    jobs = []
    for source in _SOURCES:
      cmd = [compiler, *compile_flags, f"-I{jax.ffi.include_dir()}", "-c", str(source), "-o",
             os.path.join(objects, source.stem + ".o")]
      jobs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True)))
    failed = []
    for cmd, job in jobs:  # every job waited for, then the first failure reported
      _, err = job.communicate()
      if job.returncode != 0:
        failed.append(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    if failed:
      raise RuntimeError(failed[0])
    link = [compiler, *_FLAGS, *(cmd[-1] for cmd, _ in jobs), "-o", tmp]
    done = subprocess.run(link, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(link)} failed:\n{done.stderr[-2000:]}")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o755 & ~umask)  # mkstemp made it 0600: others sharing the cache load it too
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
    shutil.rmtree(objects, ignore_errors=True)
  return lib


@functools.cache
def available() -> bool:
  """Whether the native kernels are built and registered (builds them on the first call)."""
  if os.environ.get("FEDJAX_COMP_NATIVE", "1") == "0":
    return False
  compiler = _compiler()
  if compiler is None:
    logging.warning("fedjax_comp.native: no C++ compiler found ($CXX, c++, g++, clang++); "
                    "kernels.fwht, the rotated codecs and top_k use their XLA paths (3-26x "
                    "slower on a CPU)")
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(compiler)))
    for target, symbol in HANDLERS:
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    logging.warning("fedjax_comp.native: building the kernels failed, so kernels.fwht, the "
                    "rotated codecs and top_k use their XLA paths: %s", e)
    return False
  return True


def active() -> bool:
  """Whether the codecs use the native kernels here: JAX's default backend is the CPU and
  they are built (`available()`). A GPU host keeps the XLA paths."""
  return jax.default_backend() == "cpu" and available()


def _call(x, pre, post, scale: float):
  n = x.shape[-1]
  no_floats, no_words = np.zeros((0, n), np.float32), np.zeros((0, max(n // 32, 1)), np.uint32)

  def operands(m):
    if m is None:
      return no_floats, no_words
    if m.dtype == np.uint32:
      return no_floats, m.reshape(-1, n // 32)
    return m.reshape(-1, n), no_words

  (pre_f, pre_w), (post_f, post_w) = operands(pre), operands(post)
  # In place: the output takes x's buffer (XLA copies x first if it is still
  # needed), so a donated or temporary x costs no fresh allocation, whose
  # first-touch page faults alone cost about a copy's time on a CPU.
  call = jax.ffi.ffi_call(FWHT_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype),
                          vmap_method="broadcast_all", input_output_aliases={0: 0})
  return call(x, pre_f, post_f, pre_w, post_w, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fwht(x: jax.Array, pre: jax.Array | None, post: jax.Array | None,
         scale: float) -> jax.Array:
  """``post * (scale * H (pre * x))`` over the last axis of float32 ``x`` (``[rows, n]``).

  pre and post are float32 ``[n]``, or uint32 sign words ``[n / 32]`` (bit j
  of word j // 32 set: -1; n >= 32), or None; under `jax.vmap` they may carry
  the batch axes too. Call only where `available()` is true, on a CPU.
  Differentiable in x and in float pre/post (reverse mode: H is symmetric,
  so the cotangent of x is the same call with pre and post swapped).
  """
  return _call(x, pre, post, scale)


def _fwht_fwd(x, pre, post, scale):
  return _call(x, pre, post, scale), (x, pre, post)


def _fwht_bwd(scale, residuals, g):
  x, pre, post = residuals
  floats = lambda m: m is not None and m.dtype != np.uint32
  d_x = _call(g, post, pre, scale)
  # y = post * scale H (pre * x): d pre = x * scale H (post * g), d post = g * scale H (pre * x),
  # each summed over the rows that shared it.
  d_pre = jnp.sum(x * _call(g, post, None, scale), axis=0) if floats(pre) else None
  d_post = jnp.sum(g * _call(x, pre, None, scale), axis=0) if floats(post) else None
  return d_x, d_pre, d_post


fwht.defvjp(_fwht_fwd, _fwht_bwd)


def rotated_quantize(y: jax.Array, boundaries: np.ndarray, table: np.ndarray,
                     code_bits: int) -> tuple[jax.Array, jax.Array]:
  """DRIVE/EDEN's quantizer of rotated float32 blocks ``y [rows, m]`` (rotated_codes.cc).

  Returns ``(words uint32 [code_bits, ceil(rows * m / 32)], stats float32 [rows, 4])``:
  the codes (how many of the 2^b - 1 `boundaries` each ``z = (y / top) *
  sqrt(m) / ||y / top||`` exceeds) packed as `kernels.pack` packs them, and
  per row ``(top = max |y| or NaN if a y is not finite, sum unit^2,
  <unit, q>, <q, q>)`` with q the code's centroid in `table`; the sums in
  double. The boundaries must ascend (an error otherwise), m be below 2^15
  or a multiple of it (a power of two is either). Call only where
  `available()` is true, on a CPU; not differentiable.
  """
  rows, m = y.shape[-2:]
  groups = -(-rows * m // 32)
  call = jax.ffi.ffi_call(
      QUANTIZE_TARGET,
      (jax.ShapeDtypeStruct(y.shape[:-2] + (code_bits, groups), jnp.uint32),
       jax.ShapeDtypeStruct(y.shape[:-1] + (4,), jnp.float32)),
      vmap_method="broadcast_all")
  return call(y, boundaries=np.asarray(boundaries, np.float32),
              table=np.asarray(table, np.float32), code_bits=np.int64(code_bits))


def rotated_dequantize(words: jax.Array, scale: jax.Array, m: int, table: np.ndarray,
                       code_bits: int) -> jax.Array:
  """``y [rows, m] = table[code] * scale[row]``: the inverse of `rotated_quantize`'s codes.

  words: uint32 ``[code_bits, ceil(rows * m / 32)]``; scale: float32 ``[rows]``.
  """
  call = jax.ffi.ffi_call(DEQUANTIZE_TARGET,
                          jax.ShapeDtypeStruct(scale.shape + (m,), jnp.float32),
                          vmap_method="broadcast_all")
  return call(words, scale, table=np.asarray(table, np.float32), code_bits=np.int64(code_bits))


def top_k_indices(x: jax.Array, k: int) -> jax.Array:
  """int32 ``[..., k]``: the indices, ascending, of the k largest |x| of each row (top_k.cc).

  Ties at the k-th magnitude keep the lowest indices (`lax.top_k`'s stable
  order); NaN ranks above Inf. float32 x ``[..., d]``, 1 <= k <= d. Call
  only where `available()` is true, on a CPU; not differentiable.
  """
  call = jax.ffi.ffi_call(TOP_K_TARGET, jax.ShapeDtypeStruct(x.shape[:-1] + (k,), jnp.int32),
                          vmap_method="broadcast_all")
  return call(x)


def quantize_pack(x: jax.Array, seeds: jax.Array, bits: int):
  """`kernels.quantize` (stochastic) then `kernels.pack`, fused (quantize.cc).

  x: float32 ``[..., n]``; seeds: uint32 ``[...]``, each row's dither seed
  (what `kernels.dither` draws from its key). Returns ``(words uint32
  [..., bits, ceil(n / 32)], lo [...], hi [...])``. Call only where
  `available()` is true, on a CPU; not differentiable.
  """
  n, batch = x.shape[-1], x.shape[:-1]
  call = jax.ffi.ffi_call(
      QUANTIZE_PACK_TARGET,
      (jax.ShapeDtypeStruct(batch + (bits, -(-n // 32)), jnp.uint32),
       jax.ShapeDtypeStruct(batch, jnp.float32), jax.ShapeDtypeStruct(batch, jnp.float32)),
      vmap_method="broadcast_all")
  return call(x, seeds, bits=np.int64(bits))


def unpack_dequantize(words: jax.Array, lo: jax.Array, hi: jax.Array, bits: int,
                      n: int) -> jax.Array:
  """`kernels.unpack` then `kernels.dequantize` (float32), fused: ``[..., n]``."""
  call = jax.ffi.ffi_call(UNPACK_DEQUANTIZE_TARGET,
                          jax.ShapeDtypeStruct(lo.shape + (n,), jnp.float32),
                          vmap_method="broadcast_all")
  return call(words, lo, hi, bits=np.int64(bits))


def ternary_pack(x: jax.Array, seeds: jax.Array):
  """TernGrad's encode, fused (quantize.cc): ``(words uint32 [..., 2, G], scale [...])``.

  x: float32 ``[..., n]``; seeds: uint32 ``[...]`` (`kernels.dither`'s draw).
  """
  n, batch = x.shape[-1], x.shape[:-1]
  call = jax.ffi.ffi_call(
      TERNARY_PACK_TARGET,
      (jax.ShapeDtypeStruct(batch + (2, -(-n // 32)), jnp.uint32),
       jax.ShapeDtypeStruct(batch, jnp.float32)),
      vmap_method="broadcast_all")
  return call(x, seeds)


def ternary_unpack(words: jax.Array, scale: jax.Array, n: int) -> jax.Array:
  """TernGrad's decode, fused: ``(code - 1) * scale``, float32 ``[..., n]``."""
  call = jax.ffi.ffi_call(TERNARY_UNPACK_TARGET,
                          jax.ShapeDtypeStruct(scale.shape + (n,), jnp.float32),
                          vmap_method="broadcast_all")
  return call(words, scale)


def threefry_bits(key_data: jax.Array, n: int) -> jax.Array:
  """uint32 ``[..., n]``: ``jax.random.bits(key, (n,), jnp.uint32)`` per key (threefry.cc).

  key_data: uint32 ``[..., 2]``, the `jax.random.key_data` of threefry2x32
  keys. Equal to JAX's bits bit for bit when ``jax_threefry_partitionable``
  is on (JAX's default); `kernels.random_bits` checks that. Call only where
  `available()` is true, on a CPU.
  """
  call = jax.ffi.ffi_call(THREEFRY_TARGET,
                          jax.ShapeDtypeStruct(key_data.shape[:-1] + (n,), jnp.uint32),
                          vmap_method="broadcast_all")
  return call(key_data)


def stratified_indices(key_data: jax.Array, n: int, k: int) -> tuple[jax.Array, jax.Array]:
  """`kernels.stratified_indices` per threefry2x32 key (``[..., 2]``), bit for bit (threefry.cc).

  Returns ``(int32 [..., k], float32 [..., k])``; 1 <= k <= n < 2^31.
  """
  batch = key_data.shape[:-1]
  call = jax.ffi.ffi_call(STRATIFIED_TARGET,
                          (jax.ShapeDtypeStruct(batch + (k,), jnp.int32),
                           jax.ShapeDtypeStruct(batch + (k,), jnp.float32)),
                          vmap_method="broadcast_all")
  return call(key_data, n=np.int64(n))


def all_finite(x: jax.Array) -> jax.Array:
  """bool ``[...]``: whether each row of float32 ``x [..., n]`` is free of NaN and Inf (finite.cc)."""
  call = jax.ffi.ffi_call(ALL_FINITE_TARGET, jax.ShapeDtypeStruct(x.shape[:-1], jnp.bool_),
                          vmap_method="broadcast_all")
  return call(x)


def scatter_ascending(index: jax.Array, values: jax.Array, n: int) -> jax.Array:
  """float32 ``[..., n]``: ``zeros(n).at[index].set(values)`` per row (scatter.cc).

  index: int32 ``[..., k]`` in [0, n), strictly ascending in each row (an
  unordered row is an error at run time; an index from n on is dropped,
  as XLA drops it, and a negative one too, where ``.at[]`` would wrap it);
  values: float32 ``[..., k]``.
  """
  call = jax.ffi.ffi_call(SCATTER_TARGET,
                          jax.ShapeDtypeStruct(index.shape[:-1] + (n,), jnp.float32),
                          vmap_method="broadcast_all")
  return call(index, values)


def qsgd_pack(x: jax.Array, seeds: jax.Array, levels: int, size: int, bits: int):
  """QSGD's encode of float32 ``x [..., n]`` in buckets of `size`, fused (quantize.cc).

  seeds: uint32 ``[..., buckets]``, each bucket's dither seed (what
  `kernels.dither` draws for the ``[buckets, size]`` view). Returns
  ``(words uint32 [..., bits, ceil(n / 32)], norms float32 [..., buckets])``:
  the codes ``level * sign + levels`` packed as `kernels.pack` packs them,
  and each bucket's L2 norm (NaN if it holds a NaN or an Inf). The codes
  match the XLA encoder's but where t lands within rounding of its dither.
  """
  n, batch = x.shape[-1], x.shape[:-1]
  buckets = -(-n // size)
  call = jax.ffi.ffi_call(
      QSGD_PACK_TARGET,
      (jax.ShapeDtypeStruct(batch + (bits, -(-n // 32)), jnp.uint32),
       jax.ShapeDtypeStruct(batch + (buckets,), jnp.float32)),
      vmap_method="broadcast_all")
  return call(x, seeds, levels=np.int64(levels), size=np.int64(size), bits=np.int64(bits))


def qsgd_unpack(words: jax.Array, norms: jax.Array, levels: int, size: int, bits: int,
                n: int) -> jax.Array:
  """QSGD's decode, fused: ``(code - levels) * (norm / levels)``, float32 ``[..., n]``."""
  call = jax.ffi.ffi_call(QSGD_UNPACK_TARGET,
                          jax.ShapeDtypeStruct(norms.shape[:-1] + (n,), jnp.float32),
                          vmap_method="broadcast_all")
  return call(words, norms, levels=np.int64(levels), size=np.int64(size), bits=np.int64(bits))
