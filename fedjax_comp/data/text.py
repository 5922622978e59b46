"""Client preprocessing of the published federated datasets, as the papers do it.

Each function maps one client's raw features (as `data.formats` reads them)
to the suite's ``{"x", "y"}`` arrays.

EMNIST (`emnist`)
  ``x = 1 - pixels`` as ``[N, 28, 28, 1]`` float32 (TFF's and LEAF's images
  are white digits' backgrounds at 1.0; FedJAX flips them so the background
  is 0), ``y = label`` int32 (62 classes, or 10 for the digits-only files).

Shakespeare (`shakespeare`)
  Characters become ids with the TFF text-generation tutorial's vocabulary
  (the 86 characters of `SHAKESPEARE_CHARS`, ids 3..88; 0 is padding, 1 BOS,
  2 EOS and 89 any other character: 90 ids). A client's snippets are joined
  as ``BOS s_1 EOS BOS s_2 EOS ...`` and the sequence is cut into pairs of
  `seq_len` windows, inputs ``t[:-1]`` and targets ``t[1:]``, the last pair
  padded with 0, so no character is lost (FedJAX's convention; TFF's
  tutorial drops a remainder). Accuracy counts every target that is not
  padding, BOS or EOS (`SHAKESPEARE_SPECIALS`); OOV targets count.

LEAF Shakespeare (`leaf_shakespeare`)
  LEAF's examples are an 80-character window and the next character; as a
  sequence example, ``x = ids(window)`` and ``y = ids(window[1:] + next)``,
  so the last position is LEAF's label and the others the same task.

References:
  FedJAX's preprocessing (google/fedjax, fedjax/datasets/emnist.py and
  shakespeare.py); the vocabulary of TFF's "Federated Learning for Text
  Generation" tutorial; Reddi et al. 2020 (arXiv 2003.00295), appendix C.
"""

from __future__ import annotations

import numpy as np

SHAKESPEARE_CHARS = (b"dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\n"
                     b"aeimquyAEIMQUY]!%)-159\r")
PAD, BOS, EOS = 0, 1, 2
SHAKESPEARE_OOV = 3 + len(SHAKESPEARE_CHARS)  # 89
SHAKESPEARE_VOCAB = SHAKESPEARE_OOV + 1  # 90
SHAKESPEARE_SPECIALS = (PAD, BOS, EOS)

_CHAR_TABLE = np.full(256, SHAKESPEARE_OOV, np.int32)
_CHAR_TABLE[np.frombuffer(SHAKESPEARE_CHARS, np.uint8)] = np.arange(3, SHAKESPEARE_OOV)


def char_ids(text: bytes) -> np.ndarray:
  """Shakespeare character ids of a byte string (unknown bytes -> OOV)."""
  return _CHAR_TABLE[np.frombuffer(bytes(text), np.uint8)]


def _str_ids(text: str) -> np.ndarray:
  """Ids of a str's characters (one id per character; above U+00FF -> OOV)."""
  codes = np.fromiter((ord(c) for c in text), np.int64, len(text))
  return np.where(codes < 256, _CHAR_TABLE[np.minimum(codes, 255)], SHAKESPEARE_OOV)


def emnist(features: dict) -> dict:
  """FedJAX's EMNIST: ``x = 1 - pixels[..., None]``, ``y = label``."""
  for k in ("pixels", "label"):
    if k not in features:
      raise ValueError(f"EMNIST client: no feature {k!r} (found: {', '.join(features)}; "
                       "expected pixels [N, 28, 28] float32 and label [N] int32)")
  pixels = np.asarray(features["pixels"], np.float32)
  return {"x": (1.0 - pixels)[..., None], "y": np.asarray(features["label"], np.int32)}


def cifar100(features: dict) -> dict:
  """TFF's CIFAR-100: ``x = image`` as uint8 [N, 32, 32, 3], ``y = label`` (100 classes).

  The crop to 24x24 (random in training, central in evaluation) and the
  per-image standardization are the model's (`models.published.cifar100_resnet18`),
  so a client's images are stored once and cropped afresh each step.
  """
  for k in ("image", "label"):
    if k not in features:
      raise ValueError(f"CIFAR-100 client: no feature {k!r} (found: {', '.join(features)})")
  image = np.asarray(features["image"])
  if image.size and (image.min() < 0 or image.max() > 255):
    raise ValueError(f"CIFAR-100: pixel values must be in [0, 255], got [{image.min()}, "
                     f"{image.max()}]")
  return {"x": image.astype(np.uint8), "y": np.asarray(features["label"], np.int32)}


def leaf_femnist(features: dict) -> dict:
  """LEAF's FEMNIST: x as 784 floats per image in [0, 1], white background -> 1 - x."""
  x = np.asarray(features["x"], np.float32)
  if x.size and x.shape[1:] != (784,):
    raise ValueError(f"LEAF FEMNIST: x has shape {x.shape}, expected [N, 784]")
  return {"x": (1.0 - x).reshape(-1, 28, 28, 1), "y": np.asarray(features["y"], np.int32)}


def shakespeare(features: dict, seq_len: int = 80) -> dict:
  """Joins a client's snippets with BOS/EOS and cuts them into `seq_len` pairs (docstring)."""
  if "snippets" not in features:
    raise ValueError(f"Shakespeare client: no feature 'snippets' (found: "
                     f"{', '.join(features)})")
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  parts = []
  for s in np.asarray(features["snippets"], dtype=object).reshape(-1):
    parts += [np.asarray([BOS], np.int32), char_ids(s), np.asarray([EOS], np.int32)]
  if not parts:
    empty = np.zeros((0, seq_len), np.int32)
    return {"x": empty, "y": empty}
  joined = np.concatenate(parts)
  n = len(joined) - 1  # input/target pairs
  rows = -(-n // seq_len)
  x = np.zeros(rows * seq_len, np.int32)
  y = np.zeros(rows * seq_len, np.int32)
  x[:n], y[:n] = joined[:-1], joined[1:]
  return {"x": x.reshape(rows, seq_len), "y": y.reshape(rows, seq_len)}


def leaf_shakespeare(features: dict) -> dict:
  """LEAF Shakespeare windows and next characters as sequence examples (docstring)."""
  xs, ys = list(features["x"]), list(features["y"])
  if not xs:
    return {"x": np.zeros((0, 80), np.int32), "y": np.zeros((0, 80), np.int32)}
  lengths = {len(w) for w in xs}
  if len(lengths) != 1:
    raise ValueError(f"LEAF Shakespeare: windows of different lengths {sorted(lengths)}")
  x = np.stack([_str_ids(str(w)) for w in xs])
  nxt = np.stack([_str_ids(str(c))[:1] for c in ys])
  return {"x": x, "y": np.concatenate([x[:, 1:], nxt], axis=1)}


# StackOverflow next-word prediction (FedJAX's ids): 0 padding, 1 BOS, 2 EOS,
# the vocabulary's words from 3, then one OOV id; 10,004 ids for 10,000 words.
def stackoverflow_vocab_size(words: int) -> int:
  return words + 4


def read_word_counts(path, size: int) -> list[str]:
  """The first `size` words of a word-count file (``word count`` per line, most frequent first).

  TFF's ``stackoverflow.word_count`` (in stackoverflow.word_count.tar.bz2)
  and FedJAX's copy have this format; FedJAX, TFF and pfl-research all take
  its first lines. Raises ValueError naming both sizes when the file holds
  fewer than `size` words, and naming the line when one is malformed.
  """
  words = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if len(words) == size:
        break
      parts = line.split()
      if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"{path}:{number}: expected 'word count', got {line.strip()!r}")
      words.append(parts[0])
  if len(words) < size:
    raise ValueError(f"{path}: the vocabulary file holds {len(words)} words, but the "
                     f"vocabulary needs {size}; they do not match")
  return words


def count_words(sentences, size: int) -> list[str]:
  """The `size` most frequent space-separated tokens of byte strings (ties: first seen first)."""
  from collections import Counter  # pylint: disable=g-import-not-at-top
  counts = Counter()
  for s in sentences:
    counts.update(bytes(s).decode("utf-8", "replace").split(" "))
  counts.pop("", None)
  return [w for w, _ in counts.most_common(size)]


class WordIds:
  """Maps space-separated sentences to FedJAX's next-word examples of `seq_len`."""

  def __init__(self, words: list[str], seq_len: int = 20):
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    self.index = {w: i + 3 for i, w in enumerate(words)}
    self.oov = len(words) + 3
    self.vocab_size = len(words) + 4
    self.seq_len = seq_len

  def __call__(self, features: dict) -> dict:
    """``[BOS] ids [EOS]`` per sentence; x = all but the last, y = all but the first,
    both padded with 0 or cut to `seq_len` (a sentence of seq_len words or more loses
    its EOS, as in FedJAX and pfl-research)."""
    if "tokens" not in features:
      raise ValueError(f"StackOverflow client: no feature 'tokens' (found: "
                       f"{', '.join(features)})")
    sentences = np.asarray(features["tokens"], dtype=object).reshape(-1)
    x = np.zeros((len(sentences), self.seq_len), np.int32)
    y = np.zeros((len(sentences), self.seq_len), np.int32)
    for row, s in enumerate(sentences):
      words = bytes(s).decode("utf-8", "replace").split(" ") if len(s) else []
      ids = [BOS] + [self.index.get(w, self.oov) for w in words] + [EOS]
      n = min(len(ids) - 1, self.seq_len)
      x[row, :n] = ids[:n]
      y[row, :n] = ids[1:n + 1]
    return {"x": x, "y": y}
