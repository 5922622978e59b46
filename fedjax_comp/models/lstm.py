"""A character-level LSTM language model (next-token prediction).

``char_lstm``: an embedding of `embed` dims, `layers` LSTM layers of
`hidden` units, and a dense layer to the vocabulary, applied to every
position of a token sequence ``x`` [batch, T] (int32) to predict ``y``, the
next token at each position. Reddi et al. 2020 use 8 / 2 x 256 on
Shakespeare (sequence length 80); the default here is smaller, sized for a
CPU test of the engine on `data.sources.char_text`.

Token convention (shared with the suite's text sources, `data.sources`):
0 is padding (never counted), 1, 2 and 3 are beginning of sequence, end of
sequence and out of vocabulary (left out of the accuracy), characters from 4.

References:
  Reddi et al. 2020, Adaptive Federated Optimization (arXiv 2003.00295),
  appendix C (Shakespeare).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_comp.models.base import Model, Params, next_token
from fedjax_comp.models.layers import LSTM, Dense

PAD, BOS, EOS, OOV = 0, 1, 2, 3


class CharLSTM(nn.Module):
  """Embedding, `layers` LSTM layers, dense to the vocabulary (also Reddi et al.'s
  Shakespeare model, `published.shakespeare_lstm`). The LSTM layers are
  `layers.LSTM`: flax's ``nn.RNN(nn.OptimizedLSTMCell)`` parameters, with the
  input projection computed before the time loop."""

  vocab_size: int
  embed: int = 8
  hidden: int = 64
  layers: int = 1

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.embed)(tokens)
    for layer in range(self.layers):
      x = LSTM(self.hidden, name=f"OptimizedLSTMCell_{layer}")(x)
    return Dense(self.vocab_size)(x)


def char_lstm(input_shape, num_classes, *, embed: int = 8, hidden: int = 64,
              layers: int = 1) -> Model:
  """The model for sequences of ``input_shape = (T,)`` tokens over `num_classes` tokens."""
  if len(input_shape) != 1:
    raise ValueError(f"model 'char_lstm' needs token sequences of shape [T], got "
                     f"input_shape={tuple(input_shape)}")
  if num_classes <= OOV + 1:
    raise ValueError(f"char_lstm: the vocabulary (num_classes) must hold the 4 special "
                     f"tokens and at least one character, got {num_classes}")
  module = CharLSTM(vocab_size=num_classes, embed=embed, hidden=hidden, layers=layers)

  def init(key: jax.Array) -> Params:
    return module.init(key, jnp.zeros((1, *input_shape), jnp.int32))["params"]

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return module.apply({"params": params}, x.astype(jnp.int32))

  train_loss, eval_metrics = next_token(apply, pad=PAD, excluded=(BOS, EOS, OOV))
  return Model(init=init, apply=apply, train_loss=train_loss, eval_metrics=eval_metrics,
               name="char_lstm", input_shape=tuple(input_shape), num_classes=num_classes,
               cpu_chunk=1, gpu_chunk=64)
