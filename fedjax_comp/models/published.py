"""The models of the standard federated benchmarks, with their published parameter counts.

=====================  ======================================================  ===========
name                   model                                                   parameters
=====================  ======================================================  ===========
``emnist_cr``          Reddi et al.'s EMNIST CNN: 3x3 conv 32, 3x3 conv 64     1,206,590
                       ("valid"), 2x2 max-pool, dropout 0.25, dense 128,
                       dropout 0.5, dense 62 (FedJAX's ``create_conv_model``
                       is the same network)
``emnist_dense``       FedJAX's EMNIST dense model: two ReLU layers of 200     209,662
                       (the suite's ``2nn``; FedJAX's logistic model is the
                       suite's ``logistic``, 48,670)
``shakespeare_lstm``   Reddi et al.'s Shakespeare model: embedding 8, two      820,522
                       LSTM layers of 256, dense to the 90 ids
``stackoverflow_lstm`` Reddi et al.'s next-word model: embedding 96, LSTM      4,050,748
                       670, dense 96, dense to the 10,004 ids
``stackoverflow_       pfl-research's StackOverflow transformer: embedding     1,962,912
transformer``          96 (x sqrt(96), fixed sinusoids), 3 post-LN causal
                       layers of 8 heads and 1,536 ReLU units, dropout 0.1,
                       the embedding tied to the output (no bias)
``cifar100_resnet18``  Reddi et al.'s ResNet-18 v2 with group norm on 24x24  11,227,812
                       crops (random with a flip in training, central in
                       evaluation; per-image standardization; L2 1e-4)
=====================  ======================================================  ===========

The counts of the first four are those asserted by FedJAX's model tests
(google/fedjax, fedjax/models/emnist_test.py, shakespeare_test.py and
stackoverflow_test.py) and match the Keras models of
google-research/federated (utils/models/); the transformer's and the
ResNet's are computed from pfl-research's PyTorch model
(benchmarks/model/pytorch/transformer.py) and the Keras ResNet (no
publication states them). The tests check all of them.

StackOverflow's ids are FedJAX's (`data.text.WordIds`): 0 padding, 1 BOS, 2
EOS, words from 3, the OOV id last; accuracy leaves out padding, BOS, EOS
and OOV targets (google-research/federated's ``accuracy_no_oov_or_eos``;
BOS is never a target).

Dropout: a model's training loss reads a key from ``batch["rng"]``, which
the client update (`client_update.make_client_update(..., dropout=True)`)
draws per local step from the client's DROPOUT stream; without one (the
evaluation, the worker algorithms) dropout is off.

Shakespeare's token ids are FedJAX's (`data.text`): 0 padding, 1 BOS, 2 EOS,
characters 3..88, 89 OOV. Its accuracy leaves out padding, BOS and EOS
targets and counts OOV targets (they are characters of the text); FedJAX's
model follows Reddi et al. otherwise but adds a tanh after each LSTM, which
this model, like Reddi et al.'s Keras model, does not.

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (arXiv
  2003.00295), appendix C; google-research/federated, utils/models/.
  Ro et al., "FedJAX: Federated learning simulation with JAX", 2021 (arXiv
  2108.02117).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_comp.data import text
from fedjax_comp.models.base import Model, Params, classification, next_token
from fedjax_comp.models.layers import LSTM, Dense, PatchConv, max_pool_2x2
from fedjax_comp.models.lstm import CharLSTM
from fedjax_comp.models.vision import image_shape


class EmnistCR(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(PatchConv(32, (3, 3), padding="VALID")(x))
    x = nn.relu(PatchConv(64, (3, 3), padding="VALID")(x))
    x = max_pool_2x2(x)
    x = nn.Dropout(0.25, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(128)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return Dense(self.num_classes)(x)


def _with_dropout(module: nn.Module, loss_of, model_shape):
  """(apply, train_loss, eval_metrics): train_loss turns dropout on when the batch has "rng"."""

  def run(params, x, rng=None):
    x = x.reshape((x.shape[0], *model_shape))
    if rng is None:
      return module.apply({"params": params}, x)
    return module.apply({"params": params}, x, train=True, rngs={"dropout": rng})

  def apply(params, x):
    return run(params, x)

  eval_loss, eval_metrics = loss_of(apply)

  def train_loss(params, batch, mask):
    if "rng" not in batch:
      return eval_loss(params, batch, mask)
    loss, _ = loss_of(lambda p, x: run(p, x, batch["rng"]))
    return loss(params, batch, mask)

  return apply, train_loss, eval_metrics


def emnist_cr(input_shape, num_classes) -> Model:
  """Reddi et al.'s EMNIST character-recognition CNN with dropout (module docstring)."""
  shape = image_shape("emnist_cr", tuple(input_shape))
  module = EmnistCR(num_classes=num_classes)
  classify = lambda apply: classification(
      lambda p, x: apply(p, x.astype(jnp.float32)))
  apply, train_loss, eval_metrics = _with_dropout(module, classify, shape)

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, *shape), jnp.float32))["params"]

  return Model(init=init, apply=apply, train_loss=train_loss, eval_metrics=eval_metrics,
               name="emnist_cr", input_shape=tuple(input_shape), num_classes=num_classes,
               cpu_chunk=1, gpu_chunk=256, stochastic=True)


def shakespeare_lstm(input_shape, num_classes) -> Model:
  """Reddi et al.'s Shakespeare char-LSTM on FedJAX's 90 ids (module docstring)."""
  if len(input_shape) != 1:
    raise ValueError(f"model 'shakespeare_lstm' needs token sequences of shape [T], got "
                     f"input_shape={tuple(input_shape)}")
  if num_classes != text.SHAKESPEARE_VOCAB:
    raise ValueError(f"shakespeare_lstm: num_classes must be the {text.SHAKESPEARE_VOCAB} "
                     f"Shakespeare ids (data.text), got {num_classes}")
  module = CharLSTM(vocab_size=num_classes, embed=8, hidden=256, layers=2)

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, *input_shape), jnp.int32))["params"]

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return module.apply({"params": params}, x.astype(jnp.int32))

  train_loss, eval_metrics = next_token(apply, pad=text.PAD, excluded=(text.BOS, text.EOS))
  return Model(init=init, apply=apply, train_loss=train_loss, eval_metrics=eval_metrics,
               name="shakespeare_lstm", input_shape=tuple(input_shape),
               num_classes=num_classes, cpu_chunk=1, gpu_chunk=64)


class WordLSTM(nn.Module):
  """Reddi et al.'s StackOverflow model: embedding 96, LSTM 670, projection 96, vocabulary."""

  vocab_size: int

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, 96)(tokens)
    x = LSTM(670, name="OptimizedLSTMCell_0")(x)
    x = Dense(96)(x)
    return Dense(self.vocab_size)(x)


def _word_model(name, module_of, input_shape, num_classes, *, stochastic=False) -> Model:
  if len(input_shape) != 1:
    raise ValueError(f"model {name!r} needs token sequences of shape [T], got "
                     f"input_shape={tuple(input_shape)}")
  if num_classes < 5:
    raise ValueError(f"{name}: num_classes is the vocabulary (words + pad, BOS, EOS, OOV), "
                     f"got {num_classes}")
  module = module_of(num_classes, input_shape[0])
  oov = num_classes - 1  # data.text.WordIds: pad 0, BOS 1, EOS 2, words, then OOV

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, *input_shape), jnp.int32))["params"]

  def run(params, x, rng=None):
    x = x.astype(jnp.int32)
    if rng is None:
      return module.apply({"params": params}, x)
    return module.apply({"params": params}, x, train=True, rngs={"dropout": rng})

  excluded = (text.BOS, text.EOS, oov)
  eval_loss, eval_metrics = next_token(run, pad=text.PAD, excluded=excluded)

  def train_loss(params, batch, mask):
    if not stochastic or "rng" not in batch:
      return eval_loss(params, batch, mask)
    loss, _ = next_token(lambda p, x: run(p, x, batch["rng"]), pad=text.PAD, excluded=excluded)
    return loss(params, batch, mask)

  return Model(init=init, apply=run, train_loss=train_loss, eval_metrics=eval_metrics,
               name=name, input_shape=tuple(input_shape), num_classes=num_classes,
               cpu_chunk=1, gpu_chunk=64, stochastic=stochastic)


def stackoverflow_lstm(input_shape, num_classes) -> Model:
  """Reddi et al.'s next-word LSTM (4,050,748 parameters for 10,004 ids; module docstring)."""
  return _word_model("stackoverflow_lstm", lambda v, t: WordLSTM(vocab_size=v), input_shape,
                     num_classes)


def sinusoid_positions(length: int, dim: int) -> np.ndarray:
  """Fixed positional encodings: sin on even, cos on odd features, base 10,000."""
  pos = np.arange(length)[:, None]
  rates = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)
  out = np.zeros((length, dim), np.float32)
  out[:, 0::2] = np.sin(pos * rates)
  out[:, 1::2] = np.cos(pos * rates)
  return out


class WordTransformer(nn.Module):
  """pfl-research's StackOverflow transformer (post-LN encoder layers, causal, tied output)."""

  vocab_size: int
  length: int
  dim: int = 96
  layers: int = 3
  heads: int = 8
  hidden: int = 1536
  dropout: float = 0.1

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    embed = nn.Embed(self.vocab_size, self.dim, embedding_init=lambda key, shape, dtype=
                     jnp.float32: jax.random.uniform(key, shape, dtype, -0.05, 0.05))
    x = embed(tokens) * np.sqrt(self.dim) + sinusoid_positions(self.length, self.dim)
    mask = nn.make_causal_mask(tokens)
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    for _ in range(self.layers):
      att = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.dim,
                                            dropout_rate=self.dropout,
                                            deterministic=not train)(x, x, mask=mask)
      x = nn.LayerNorm(epsilon=1e-5)(x + drop(att))
      ff = nn.Dense(self.dim)(drop(nn.relu(nn.Dense(self.hidden)(x))))
      x = nn.LayerNorm(epsilon=1e-5)(x + drop(ff))
    return embed.attend(x)  # tied: logits = x E^T, no bias


def stackoverflow_transformer(input_shape, num_classes) -> Model:
  """pfl-research's StackOverflow transformer (1,962,912 parameters for 10,004 ids)."""
  return _word_model("stackoverflow_transformer",
                     lambda v, t: WordTransformer(vocab_size=v, length=t), input_shape,
                     num_classes, stochastic=True)


def _gn(x):
  # tensorflow-addons' GroupNormalization defaults, which Reddi et al.'s ResNet uses.
  return nn.GroupNorm(num_groups=2, epsilon=1e-3)(x)


class ResNet18GN(nn.Module):
  """google-research/federated's ResNet-18 v2 with group norm (their create_resnet18).

  Stem: 7x7 conv 64 stride 2, GN, ReLU, 3x3 max-pool stride 2. Four stages
  of two basic pre-activation blocks (64, 128, 256, 512 filters), all with
  stride 1 as in their code; the first block skips its pre-activation; a
  1x1 conv + GN shortcut where the channels change. Then GN, ReLU, global
  average pooling and a dense layer. Convolutions have no bias.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(64, (7, 7), strides=(2, 2), padding="SAME", use_bias=False)(x)
    x = nn.relu(_gn(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, filters in enumerate((64, 128, 256, 512)):
      for block in range(2):
        y = x if stage == 0 and block == 0 else nn.relu(_gn(x))
        y = PatchConv(filters, (3, 3), use_bias=False)(y)
        y = PatchConv(filters, (3, 3), use_bias=False)(nn.relu(_gn(y)))
        shortcut = x
        if x.shape[-1] != filters:
          shortcut = _gn(PatchConv(filters, (1, 1), use_bias=False)(x))
        x = shortcut + y
    x = nn.relu(_gn(x)).mean(axis=(1, 2))
    return Dense(self.num_classes)(x)


CIFAR_CROP = 24
WEIGHT_DECAY = 1e-4  # their L2 regularizer on every kernel and the last layer's bias


def _standardize(images):
  """tf.image.per_image_standardization: (x - mean) / max(std, 1 / sqrt(#values))."""
  n = images[0].size
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  std = images.std(axis=(1, 2, 3), keepdims=True)
  return (images - mean) / jnp.maximum(std, 1.0 / np.sqrt(n))


def cifar_crops(x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
  """[B, 32, 32, 3] images -> standardized [B, 24, 24, 3] crops.

  With a key: a uniform random crop and a random left-right flip per image
  (training); without: the central crop (evaluation), as Reddi et al.
  """
  x = x.astype(jnp.float32)
  size = x.shape[1]
  if rng is None:
    o = (size - CIFAR_CROP) // 2
    x = x[:, o:o + CIFAR_CROP, o:o + CIFAR_CROP]
  else:
    k_off, k_flip = jax.random.split(rng)
    offsets = jax.random.randint(k_off, (x.shape[0], 2), 0, size - CIFAR_CROP + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0),
                                                (CIFAR_CROP, CIFAR_CROP, img.shape[-1]))
    x = jax.vmap(crop)(x, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
  return _standardize(x)


def cifar100_resnet18(input_shape, num_classes) -> Model:
  """Reddi et al.'s CIFAR-100 model: crops, standardization and ResNet-18 with group norm.

  Takes the stored 32x32x3 images (uint8 or float) and crops them itself,
  randomly (with a flip) in training and centrally in evaluation, so a
  client's examples are augmented afresh at every step. The training loss
  adds their L2 weight decay, 1e-4 times the squared kernels and the last
  bias. 11,227,812 parameters for 100 classes (computed from their Keras
  model; no publication states it).
  """
  if tuple(input_shape) != (32, 32, 3):
    raise ValueError(f"model 'cifar100_resnet18' takes 32x32x3 images and crops them to "
                     f"24x24, got input_shape={tuple(input_shape)}")
  module = ResNet18GN(num_classes=num_classes)

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, CIFAR_CROP, CIFAR_CROP, 3), jnp.float32))["params"]

  def apply(params, x):
    return module.apply({"params": params}, cifar_crops(x))

  _, eval_metrics = classification(apply)

  def decay(params):
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(jnp.sum(jnp.square(v)) for path, v in leaves
               if path[-1].key == "kernel" or (path[-2].key == "Dense_0"
                                               and path[-1].key == "bias"))

  def train_loss(params, batch, mask):
    rng = batch.get("rng")
    loss, _ = classification(lambda p, x: module.apply({"params": p}, cifar_crops(x, rng)))
    return loss(params, batch, mask) + WEIGHT_DECAY * decay(params)

  return Model(init=init, apply=apply, train_loss=train_loss, eval_metrics=eval_metrics,
               name="cifar100_resnet18", input_shape=tuple(input_shape),
               num_classes=num_classes, cpu_chunk=1, gpu_chunk=64, stochastic=True)

