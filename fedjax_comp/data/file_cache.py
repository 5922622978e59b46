"""A population read once from its files, kept as memory-mapped ragged arrays.

`cached_ragged(sources, tag, clients)` streams ``(client id, features)``
pairs (from a `data.formats` reader, after preprocessing) into one raw file
per feature plus offsets, so building never holds more than one client in
memory, and later runs map those files (`np.memmap`) and start in
seconds. The cache sits next to the first source (a file, or a directory of files
such as LEAF's ``train/``), in ``.fedjax_comp_cache/<tag>-<key>/`` (or
under ``$FEDJAX_COMP_CACHE/files/<folder hash>/`` when that folder is not
writable). Its key hashes every source file's absolute path, size and
mtime (for a directory, those of each file in it) with the tag (which names
the preprocessing and its parameters), so a changed source or a different
preprocessing builds a new cache; older caches of the same tag are removed
after a build, and so are the temporary folders of builds that were killed.
A damaged cache (a feature file of the wrong size) is refused with its path.

Clients with no examples after preprocessing are dropped, and their number
is recorded (`CachedPopulation.dropped_empty`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from fedjax_comp.data.formats import check_client
from fedjax_comp.data.ragged import RaggedClients

CACHE_VERSION = 1


class CachedPopulation(RaggedClients):
  """`RaggedClients` (memory-mapped) plus the client ids and what the build dropped."""

  def __init__(self, features, offsets, ids: Sequence[str], dropped_empty: int, path,
               value_range: dict | None = None):
    super().__init__(features, offsets)
    object.__setattr__(self, "ids", list(ids))
    # {feature: [min, max]} of the numeric features, recorded at build time.
    object.__setattr__(self, "value_range", dict(value_range or {}))
    object.__setattr__(self, "dropped_empty", int(dropped_empty))
    object.__setattr__(self, "path", pathlib.Path(path))


def _stamp(path: pathlib.Path) -> list:
  st = path.stat()
  return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(sources: Sequence[str | os.PathLike], tag: str) -> str:
  """Hash of the sources' paths, sizes and mtimes, and the tag (see the module docstring).

  A directory source stands for the files in it: each one's name, size and
  mtime is hashed (editing a file in place changes the key; the directory's
  own mtime does not count).
  """
  parts = [CACHE_VERSION, tag]
  for s in sources:
    p = pathlib.Path(s).resolve()
    if p.is_dir():
      parts.append([_stamp(f) for f in sorted(p.iterdir()) if f.is_file()])
    else:
      parts.append(_stamp(p))
  return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def cache_root(first_source: pathlib.Path) -> pathlib.Path:
  """``.fedjax_comp_cache`` beside the source (a file's or a directory's parent), or a
  folder of its own under ``$FEDJAX_COMP_CACHE/files`` when that is not writable."""
  base = first_source.resolve().parent
  root = base / ".fedjax_comp_cache"
  try:
    root.mkdir(exist_ok=True)
    probe = root / f".probe-{os.getpid()}"
    probe.touch()
    probe.unlink()
    return root
  except OSError:
    from fedjax_comp.data.sources import cache_dir  # pylint: disable=g-import-not-at-top
    where = hashlib.sha256(str(base).encode()).hexdigest()[:12]
    fallback = cache_dir() / "files" / where  # one per source folder: no shared stale set
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_dead_builds(root: pathlib.Path, tag: str) -> None:
  """Temporary folders of builds of `tag` whose process is gone (killed mid-build)."""
  for tmp in root.glob(f".{tag}-*.tmp-*"):
    pid = tmp.name.rsplit(".tmp-", 1)[-1]
    if pid.isdigit() and not _pid_alive(int(pid)):
      shutil.rmtree(tmp, ignore_errors=True)


def _write(dest: pathlib.Path, clients: Iterable[tuple[str, dict]], source: str) -> None:
  files, meta, offsets, ids, dropped, ranges = {}, {}, [0], [], 0, {}
  try:
    for cid, feats in clients:
      n = check_client(feats, cid, source)
      if n == 0:
        dropped += 1
        continue
      if meta and set(feats) != set(meta):
        raise ValueError(f"{source}: client {cid!r} has features {sorted(feats)}, "
                         f"earlier clients {sorted(meta)}")
      for k, v in feats.items():
        v = np.ascontiguousarray(v)
        if k not in files:
          files[k] = open(dest / f"feature_{k}.bin", "wb")  # pylint: disable=consider-using-with
          meta[k] = {"dtype": v.dtype.str, "shape": list(v.shape[1:])}
        elif v.dtype.str != meta[k]["dtype"] or list(v.shape[1:]) != meta[k]["shape"]:
          raise ValueError(f"{source}: client {cid!r}: feature {k!r} is {v.dtype}"
                           f"{list(v.shape[1:])} per example, but earlier clients had "
                           f"{np.dtype(meta[k]['dtype'])}{meta[k]['shape']}")
        files[k].write(v.tobytes())
        if v.dtype.kind in "iuf" and v.size:
          lo, hi = v.min().item(), v.max().item()
          old = ranges.get(k, [lo, hi])
          ranges[k] = [min(old[0], lo), max(old[1], hi)]
      offsets.append(offsets[-1] + n)
      ids.append(cid)
  finally:
    for f in files.values():
      f.close()
  np.save(dest / "offsets.npy", np.asarray(offsets, np.int64))
  (dest / "meta.json").write_text(json.dumps(
      {"features": meta, "ids": ids, "dropped_empty": dropped, "value_range": ranges,
       "version": CACHE_VERSION}))


def load_cache(path) -> CachedPopulation:
  path = pathlib.Path(path)
  info = json.loads((path / "meta.json").read_text())
  offsets = np.load(path / "offsets.npy")
  total = int(offsets[-1])
  feats = {}
  for k, m in info["features"].items():
    shape = (total, *m["shape"])
    dtype = np.dtype(m["dtype"])
    file = path / f"feature_{k}.bin"
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not file.exists() or file.stat().st_size != want:
      raise ValueError(f"{file}: the cache is damaged (holds "
                       f"{file.stat().st_size if file.exists() else 0} bytes, expected "
                       f"{want}); delete {path} and it is rebuilt from the source")
    feats[k] = (np.memmap(file, dtype=dtype, mode="r", shape=shape)
                if total else np.zeros(shape, dtype))
  return CachedPopulation(feats, offsets, info["ids"], info["dropped_empty"], path,
                          info.get("value_range"))


def cached_ragged(sources: Sequence[str | os.PathLike], tag: str,
                  clients: Callable[[], Iterable[tuple[str, dict]]],
                  say: Callable[[str], None] | None = None) -> CachedPopulation:
  """The population `clients()` yields, built into the cache once (see the module docstring).

  Args:
    sources: the files (or directories) the clients are read from: the key.
    tag: names the preprocessing and its parameters (a file-name-safe string).
    clients: called only when the cache must be built.
    say: progress messages (None: silent).
  """
  first = pathlib.Path(sources[0])
  key = cache_key(sources, tag)
  root = cache_root(first)
  dest = root / f"{tag}-{key}"
  if (dest / "meta.json").exists():
    return load_cache(dest)
  if say:
    say(f"building the {tag} cache from {', '.join(str(s) for s in sources)} into {dest} "
        "(once; later runs map it)")
  _remove_dead_builds(root, tag)
  tmp = root / f".{tag}-{key}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    _write(tmp, clients(), str(first))
    try:
      os.replace(tmp, dest)
    except OSError:  # another process built it first
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  for old in root.glob(f"{tag}-*"):
    stale = len(old.name) == len(dest.name) and old.name != dest.name  # same tag, other key
    if stale and old.is_dir():
      shutil.rmtree(old, ignore_errors=True)
  return load_cache(dest)
