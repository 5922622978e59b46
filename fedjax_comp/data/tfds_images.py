"""Image classification sources read from prepared TensorFlow Datasets.

Loads MNIST, EMNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from a local TFDS
data directory through ``tfds.data_source``, which reads the ArrayRecord format
with NumPy only (TensorFlow is not needed, and never imported, at load time).
Nothing is downloaded: the data has to be prepared beforehand.

Usage::

  from fedjax_comp.data.tfds_images import load_tfds_images

  data = load_tfds_images("cifar10", data_dir="/data/tfds")
  data.train.x.shape  # (50000, 32, 32, 3), float32 in [0, 1]
  data.num_classes    # 10

Preparing the data (once, on a machine with internet access; building needs
TensorFlow, reading does not)::

  pip install tensorflow tensorflow-datasets array_record
  tfds build mnist --file_format=array_record --data_dir=/data/tfds

Use the same command for ``fashion_mnist``, ``cifar10``, ``cifar100`` and
``emnist/balanced`` (or any other EMNIST config, e.g. ``emnist/byclass``),
then copy ``/data/tfds`` to the machine that trains. Point the loader at it
with ``data_dir=`` (or ``--data_dir`` where a script exposes it), or set the
``TFDS_DATA_DIR`` environment variable; the default is
``~/tensorflow_datasets``. Data prepared in the default TFRecord format cannot
be read here: rebuild it with ``--file_format=array_record`` (or convert it
with ``tfds convert_format --out_file_format=array_record ...``).

The plain name ``"emnist"`` means ``"emnist/balanced"`` (47 classes). A
config and a version may be given as in TFDS: ``"emnist/byclass"``,
``"mnist:3.0.1"``.
"""

from __future__ import annotations

import os

import numpy as np

from fedjax_comp.data.examples import Examples, SourceData

SUPPORTED = ("mnist", "emnist", "fashion_mnist", "cifar10", "cifar100")

_DEFAULT_CONFIGS = {"emnist": "balanced"}
# Records fetched per `__getitems__` call: large enough to amortize the
# ArrayRecord reads, small enough to keep the decoded Python objects small.
_BLOCK_SIZE = 4096


class TfdsDataNotFoundError(FileNotFoundError):
  """The requested TFDS dataset is not prepared (as ArrayRecord) in data_dir."""


def _resolve_name(name: str) -> tuple[str, str]:
  """Splits off the base dataset name and fills in the default config.

  Args:
    name: ``dataset[/config][:version]``.

  Returns:
    ``(base_name, full_tfds_name)``.

  Raises:
    ValueError: if the base dataset is not one of ``SUPPORTED``.
  """
  base_and_config, sep, version = name.partition(":")
  base, slash, config = base_and_config.partition("/")
  if base not in SUPPORTED:
    raise ValueError(
        f"Unknown TFDS image dataset {name!r}; supported names are "
        f"{', '.join(SUPPORTED)} (optionally with '/config' or ':version', "
        "e.g. 'emnist/byclass')."
    )
  if not slash and base in _DEFAULT_CONFIGS:
    base_and_config = f"{base}/{_DEFAULT_CONFIGS[base]}"
  return base, base_and_config + sep + version


def _prepare_instructions(full_name: str, data_dir: str) -> str:
  """Returns the shell commands that prepare `full_name` under `data_dir`."""
  build_name = full_name.partition(":")[0]
  return (
      "On a machine with internet access run:\n"
      "  pip install tensorflow tensorflow-datasets array_record\n"
      f"  tfds build {build_name} --file_format=array_record "
      f"--data_dir={data_dir}\n"
      "then copy that directory here and pass it as data_dir (--data_dir in "
      "the scripts) or set the TFDS_DATA_DIR environment variable."
  )


def _read_split(source, num_classes: int, name: str) -> Examples:
  """Reads a whole split of a TFDS data source into host arrays.

  Args:
    source: a ``tfds.data_source`` split: a sequence of ``{'image', 'label'}``
      dicts with uint8 images ``[H, W, C]`` and integer labels.
    num_classes: the number of label classes, used to check the labels.
    name: the dataset name, for error messages.

  Returns:
    The split as ``Examples`` with float32 images in ``[0, 1]`` and int32
    labels.

  Raises:
    ValueError: if the images are not uint8 or a label is out of range.
  """
  n = len(source)
  shape = tuple(source.dataset_info.features["image"].shape)
  x = np.empty((n, *shape), dtype=np.float32)
  y = np.empty((n,), dtype=np.int32)
  for start in range(0, n, _BLOCK_SIZE):
    stop = min(n, start + _BLOCK_SIZE)
    records = source.__getitems__(list(range(start, stop)))
    images = np.stack([r["image"] for r in records])
    if images.dtype != np.uint8:
      raise ValueError(
          f"{name}: expected uint8 images, got {images.dtype}."
      )
    np.divide(images, np.float32(255.0), out=x[start:stop])
    y[start:stop] = [r["label"] for r in records]
  if n and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
        f"{name}: labels outside [0, {num_classes}): "
        f"min {y.min()}, max {y.max()}."
    )
  return Examples(x=x, y=y, groups=None)


def load_tfds_images(name: str, data_dir: str | None = None) -> SourceData:
  """Loads a prepared TFDS image classification dataset into host memory.

  Args:
    name: one of ``SUPPORTED``, optionally with a TFDS config and/or version:
      ``"mnist"``, ``"emnist"`` (= ``"emnist/balanced"``),
      ``"emnist/byclass"``, ``"cifar100:3.0.2"``.
    data_dir: the TFDS data directory holding the prepared dataset. None uses
      ``TFDS_DATA_DIR`` if set (read at call time), else
      ``~/tensorflow_datasets``.

  Returns:
    ``SourceData`` whose train and test ``Examples`` hold ``x``: float32
    ``[N, H, W, C]`` scaled to ``[0, 1]``, ``y``: int32 ``[N]``, and
    ``groups=None``; ``num_classes`` comes from the dataset's label feature.

  Raises:
    ValueError: if the dataset name is not supported (the message lists the
      supported names), or the TFDS config does not exist.
    TfdsDataNotFoundError: (a ``FileNotFoundError``) if the dataset is not
      prepared in ArrayRecord format under ``data_dir``; the message says how
      to prepare it.
  """
  _, full_name = _resolve_name(name)
  # Imported here: tensorflow_datasets takes a while to import.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # Resolve the default here rather than in tfds, which reads TFDS_DATA_DIR
  # once at import, so that the directory searched is the one reported.
  if data_dir is None:
    data_dir = tfds.core.constants.get_default_data_dir()
  data_dir = os.path.expanduser(os.fspath(data_dir))
  try:
    train_source, test_source = tfds.data_source(
        full_name,
        split=["train", "test"],
        data_dir=data_dir,
        download=False,
        try_gcs=False,
        builder_kwargs={"file_format": "array_record"},
    )
  except (KeyError, NotImplementedError, FileNotFoundError) as e:
    # tfds raises KeyError (no splits: nothing generated), NotImplementedError
    # (generated, but not in a random-access format) or FileNotFoundError.
    raise TfdsDataNotFoundError(
        f"TFDS dataset {full_name!r} is not prepared in ArrayRecord format "
        f"under data_dir {data_dir!r} (tfds said: {e}).\n"
        + _prepare_instructions(full_name, data_dir)
    ) from e

  num_classes = int(train_source.dataset_info.features["label"].num_classes)
  return SourceData(
      train=_read_split(train_source, num_classes, full_name),
      test=_read_split(test_source, num_classes, full_name),
      num_classes=num_classes,
  )
