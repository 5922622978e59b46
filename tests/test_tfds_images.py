"""Tests for fedjax_comp.data.tfds_images (no TensorFlow, no network)."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")

from fedjax_comp.data import tfds_images  # pylint: disable=g-import-not-at-top
from fedjax_comp.data.tfds_images import SUPPORTED, load_tfds_images  # pylint: disable=g-import-not-at-top


def _fixed_getitems(*args, generator, serialized=False):
  """Stand-in for `tfds.testing.mocking._getitems` (tfds 4.9.10 bug).

  `mock_data` assigns `partial(_getitems, generator=...)` as `__getitems__` on
  a MagicMock. `__getitems__` is not a magic method MagicMock knows, so the
  partial is stored as a plain attribute and never gets `self`: every batched
  read raises "missing 1 required positional argument: 'record_keys'". Only
  `__getitem__` works there. The keys are the last positional argument
  whether or not a fixed tfds passes `self`.
  """
  assert not serialized
  return [generator[key] for key in args[-1]]


@pytest.fixture
def mock_tfds(monkeypatch):
  """Returns `mock_data(num_examples)` with batched reads working.

  `MockPolicy.USE_CODE` takes the features (shapes, num_classes) from the
  dataset builder code shipped with tfds, so it needs neither metadata files
  nor TensorFlow, and it ignores `data_dir`. Examples are random: uint8 images
  in [0, 255], labels in [0, num_classes). Train and test get `num_examples`
  examples each.
  """
  monkeypatch.setattr(
      "tensorflow_datasets.testing.mocking._getitems", _fixed_getitems
  )

  def mock(num_examples):
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )

  return mock


def _check_split(examples, num_examples, shape, num_classes):
  assert examples.x.shape == (num_examples, *shape)
  assert examples.x.dtype == np.float32
  assert examples.x.min() >= 0.0 and examples.x.max() <= 1.0
  # Scaled uint8: 255 * x is integral, and random data is not all zero.
  np.testing.assert_allclose(
      examples.x * 255, np.round(examples.x * 255), atol=1e-3
  )
  assert examples.x.max() > 0.5
  assert examples.y.shape == (num_examples,)
  assert examples.y.dtype == np.int32
  assert examples.y.min() >= 0 and examples.y.max() < num_classes
  assert examples.groups is None


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [
        ("mnist", (28, 28, 1), 10),
        ("fashion_mnist", (28, 28, 1), 10),
        ("emnist", (28, 28, 1), 47),  # emnist/balanced
        ("emnist/byclass", (28, 28, 1), 62),
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
    ],
)
def test_load_mocked(mock_tfds, tmp_path, name, shape, num_classes):
  with mock_tfds(num_examples=13):
    data = load_tfds_images(name, data_dir=str(tmp_path))
  assert data.num_classes == num_classes
  _check_split(data.train, 13, shape, num_classes)
  _check_split(data.test, 13, shape, num_classes)


def test_load_mocked_spans_several_blocks(mock_tfds, tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_images, "_BLOCK_SIZE", 4)
  with mock_tfds(num_examples=10):
    data = load_tfds_images("mnist", data_dir=str(tmp_path))
    reference = tfds.data_source(
        "mnist", split="train", data_dir=str(tmp_path), download=False
    )
    expected = [reference[i] for i in range(10)]
  _check_split(data.train, 10, (28, 28, 1), 10)
  for i, example in enumerate(expected):
    np.testing.assert_array_equal(
        data.train.x[i], example["image"].astype(np.float32) / 255
    )
    assert data.train.y[i] == example["label"]


def _pixel_value(label):
  return 20 * label + 7


def _write_array_record_dataset(data_dir, name, shape, counts, monkeypatch):
  """Prepares a small real ArrayRecord copy of `name` with tfds' own writer.

  The dataset's real generation code needs TensorFlow and the network, so the
  builder's example generator is replaced by one yielding PNGs (made with
  PIL) whose pixels encode the label, and the download manager by a stub;
  everything else (serialization, shuffling, ArrayRecord shards,
  dataset_info.json) is tfds' normal path. Pixel (0, 0) is 255 and (0, 1) is
  0 so the [0, 1] scaling is checked at both ends.
  """
  builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")

  def generate(n):
    for i in range(n):
      label = i % 10
      pixels = np.full(shape, _pixel_value(label), dtype=np.uint8)
      pixels[0, 0] = 255
      pixels[0, 1] = 0
      png = io.BytesIO()
      PIL_Image.fromarray(pixels.squeeze(-1) if shape[-1] == 1 else pixels).save(
          png, format="PNG"
      )
      example = {"image": png.getvalue(), "label": label}
      if name == "cifar100":
        example.update(coarse_label=label, id=f"train_{i}")
      elif name == "cifar10":
        example.update(id=f"train_{i}")
      yield i, example

  monkeypatch.setattr(
      builder,
      "_split_generators",
      lambda dl_manager: {split: generate(n) for split, n in counts.items()},
  )
  monkeypatch.setattr(
      builder,
      "_make_download_manager",
      lambda *args, **kwargs: types.SimpleNamespace(downloaded_size=0),
  )
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )


@pytest.mark.parametrize(
    "name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_load_real_array_record_files(tmp_path, monkeypatch, name, shape):
  counts = {"train": 37, "test": 11}
  _write_array_record_dataset(tmp_path, name, shape, counts, monkeypatch)
  monkeypatch.setattr(tfds_images, "_BLOCK_SIZE", 16)

  data = load_tfds_images(name, data_dir=str(tmp_path))

  assert data.num_classes == 10
  for split, n in counts.items():
    examples = getattr(data, split)
    _check_split(examples, n, shape, 10)
    # Every label 0..9 appears (tfds shuffles the order on write).
    assert sorted(set(examples.y.tolist())) == list(range(10))
    expected = np.broadcast_to(
        _pixel_value(examples.y)[:, None, None, None], examples.x.shape
    ).copy()
    expected[:, 0, 0] = 255
    expected[:, 0, 1] = 0
    np.testing.assert_allclose(examples.x, expected / 255, atol=1e-6)


def test_unknown_name_lists_supported():
  with pytest.raises(ValueError) as info:
    load_tfds_images("svhn_cropped")
  message = str(info.value)
  assert "svhn_cropped" in message
  for name in SUPPORTED:
    assert name in message


def test_unknown_emnist_config_is_value_error(tmp_path):
  with pytest.raises(ValueError, match="BuilderConfig"):
    load_tfds_images("emnist/not_a_config", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "name, build_name",
    [("mnist", "mnist"), ("emnist", "emnist/balanced"), ("cifar100", "cifar100")],
)
def test_missing_data_says_how_to_prepare(tmp_path, name, build_name):
  with pytest.raises(tfds_images.TfdsDataNotFoundError) as info:
    load_tfds_images(name, data_dir=str(tmp_path))
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  assert repr(build_name) in message
  assert str(tmp_path) in message
  assert "pip install tensorflow tensorflow-datasets" in message
  assert (
      f"tfds build {build_name} --file_format=array_record "
      f"--data_dir={tmp_path}" in message
  )
  assert "TFDS_DATA_DIR" in message
  # Nothing was downloaded or generated.
  assert not list(tmp_path.rglob("*.array_record*"))
  assert not (tmp_path / "downloads").exists()


def test_missing_data_default_dir_uses_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(tfds_images.TfdsDataNotFoundError) as info:
    load_tfds_images("fashion_mnist")
  assert f"--data_dir={tmp_path}" in str(info.value)
