"""Helpers of the paired A/B scripts (`scripts/ab_*.py`): shapes, patched jits, codec cohorts.

Each script times one implementation against another with
`benchmarks._timing.Pair`; what they share lives here: parsing a
``--shapes`` list of ``AxB[xC]`` integers, jitting a fresh function while
some module attributes are patched (jax.jit caches by function identity, so
a fresh lambda is what makes the patch count), the codec cohort they time
(every client's update encoded, decoded and summed in one jitted vmap), and
the native kernels of an earlier git revision, built beside this tree's.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import Pair
from fedjax_comp import codecs, native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVISION_SUFFIX = "_revision"


def parse_shapes(parser: argparse.ArgumentParser, text: str, fields: int,
                 check, what: str) -> list[tuple[int, ...]]:
  """``"AxB,CxD"`` -> [(A, B), (C, D)]: `fields` integers each, `check(*shape)` true for each,
  else ``parser.error`` naming ``--shapes`` and `what` (the expected form)."""
  shapes = []
  for item in text.split(","):
    try:
      shape = tuple(int(v) for v in item.lower().split("x"))
    except ValueError:
      shape = ()
    if len(shape) != fields or not check(*shape):
      parser.error(f"--shapes: {what}, got {item!r}")
    shapes.append(shape)
  return shapes


def cohort_shapes(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
  """`parse_shapes` for ``CLIENTSxN`` cohorts."""
  return parse_shapes(parser, text, 2, lambda c, n: c >= 1 and n >= 1, "CLIENTSxN with both >= 1")


def compare_cohorts(specs, shapes, patches: tuple[dict, dict], names: tuple[str, str],
                    repeats: int) -> None:
  """For each codec spec and ``(clients, n)``: the codec's `cohort` on normal updates, jitted
  under each of the two `patches`, timed alternately (`Pair`); prints both medians, their
  ratio (first / second) and whether the two sums are identical, else their largest
  difference."""
  for spec in specs:
    codec = codecs.parse(spec)
    for clients, n in shapes:
      x = jax.random.normal(jax.random.key(0), (clients, n))
      keys = jax.random.split(jax.random.key(1), clients)
      (a, out_a), (b, out_b) = (jit_patched(cohort(codec), p, x, keys) for p in patches)
      out_a, out_b = np.asarray(out_a), np.asarray(out_b)
      same = ("identical" if np.array_equal(out_a, out_b) else
              f"max |sum difference| {np.max(np.abs(out_a - out_b)):.3g}")
      pair = Pair(lambda: a(x, keys), lambda: b(x, keys), repeats=repeats, span_s=0.05)
      ratio = pair.ratio()
      print(f"{spec} {clients} x {n}: {names[0]} {pair.medians[0] * 1e3:.3f} ms, {names[1]} "
            f"{pair.medians[1] * 1e3:.3f} ms, {names[0]}/{names[1]} {ratio:.2f}, {same}",
            flush=True)


def jit_patched(fn, patches: dict, *example):
  """`fn` jitted as a fresh function and run on `example` while ``setattr(obj, name, value)``
  holds for each ``(obj, name): value`` of `patches` (restored after); returns (jitted, output).

  The trace happens inside, so the patched attributes decide the compiled
  program. Pass keys as arguments: a key closed over is a constant, and XLA
  folds its draws at compile time.
  """
  saved = {target: getattr(*target) for target in patches}
  for (obj, name), value in patches.items():
    setattr(obj, name, value)
  try:
    jitted = jax.jit(lambda *a: fn(*a))
    out = jax.block_until_ready(jitted(*example))
  finally:
    for (obj, name), value in saved.items():
      setattr(obj, name, value)
  return jitted, out


def cohort(codec):
  """``(xs [clients, n], keys [clients]) -> [1, n]``: each client's update encoded and decoded
  with its key, the decodes summed by a ones-row product (as the server sums them)."""
  def run(xs, keys):
    ys = jax.vmap(lambda k, v: codec.decode(k, codec.encode(k, v, codec.init(v))[0]))(keys, xs)
    return jnp.ones((1, ys.shape[0])) @ ys
  return run


def build_native_revision(rev: str, out_dir: str, sources=None) -> dict:
  """Compiles git revision `rev`'s native kernels into `out_dir` and registers them.

  Every ``fedjax_comp/native/*.cc`` of `rev` (or those named in `sources`),
  with that revision's headers, is compiled with the library's flags; each
  handler symbol ``FedjaxCompX`` is renamed ``FedjaxCompXRevision`` and
  registered as ``<target>_revision``. Returns the patches that make
  `fedjax_comp.native`'s wrappers call the revision's handlers
  (``{(native, "FWHT_TARGET"): "fedjax_comp_fwht_revision", ...}``) for the
  targets the revision has: pass them to `jit_patched`. Valid where the
  wrappers' calling convention did not change since `rev` (a mismatch fails
  in the FFI call, loudly).
  """
  src_dir = os.path.join(out_dir, "native")
  os.makedirs(src_dir)
  listing = subprocess.run(["git", "-C", ROOT, "ls-tree", "--name-only", f"{rev}:fedjax_comp/native"],
                           capture_output=True, text=True, check=True).stdout.split()
  symbols = dict((symbol, target) for target, symbol in native.HANDLERS)
  found, compiled = set(), []
  for name in listing:
    if not name.endswith((".h", ".cc")):
      continue
    text = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:fedjax_comp/native/{name}"],
                          capture_output=True, text=True, check=True).stdout
    for symbol in re.findall(r"XLA_FFI_DEFINE_HANDLER_SYMBOL\(\s*(\w+)\s*,", text):
      if symbol in symbols:
        found.add(symbol)
    text = re.sub(r"(XLA_FFI_DEFINE_HANDLER_SYMBOL\(\s*)(\w+)(\s*,)", r"\1\2Revision\3", text)
    with open(os.path.join(src_dir, name), "w") as f:
      f.write(text)
    if name.endswith(".cc") and (sources is None or name in sources):
      compiled.append(os.path.join(src_dir, name))
  lib_path = os.path.join(out_dir, "libnative_revision.so")
  subprocess.run([native._compiler(), *native._FLAGS, f"-I{jax.ffi.include_dir()}",  # pylint: disable=protected-access
                  *compiled, "-o", lib_path], check=True)
  lib = ctypes.cdll.LoadLibrary(lib_path)
  patches = {}
  for name in dir(native):
    target = getattr(native, name)
    if name.endswith("_TARGET") and isinstance(target, str):
      symbol = next((s for s, t in symbols.items() if t == target), None)
      if symbol in found and hasattr(lib, symbol + "Revision"):
        jax.ffi.register_ffi_target(target + REVISION_SUFFIX,
                                    jax.ffi.pycapsule(getattr(lib, symbol + "Revision")),
                                    platform="cpu")
        patches[(native, name)] = target + REVISION_SUFFIX
  return patches
