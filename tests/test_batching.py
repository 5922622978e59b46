"""The client's data order (`batching`): `stable_argsort` against jnp.argsort, and epoch orders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_comp import batching


# 32 and 33 straddle the switch from pairwise ranks to a sort.
@pytest.mark.parametrize("n", [1, 2, 7, 20, 32, 33, 50])
def test_stable_argsort_equals_jnp_argsort_with_ties(n):
  rng = np.random.default_rng(n)
  # Few distinct values, so most keys tie; plus the uint32 extremes.
  keys = rng.choice(np.array([0, 1, 2, 2**31, 2**32 - 1], np.uint32), size=(16, n))
  got = jax.jit(jax.vmap(batching.stable_argsort))(jnp.asarray(keys))
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, np.argsort(keys, axis=1, kind="stable"))


def test_stable_argsort_of_distinct_keys_inverts_the_permutation():
  perm = np.random.default_rng(0).permutation(20).astype(np.uint32)
  np.testing.assert_array_equal(batching.stable_argsort(jnp.asarray(perm)), np.argsort(perm))


@pytest.mark.parametrize("max_examples", [12, 40])
def test_epoch_order_permutes_the_real_slots_and_puts_padding_last(max_examples):
  for num_examples in [0, 1, 5, max_examples]:
    orders = jax.vmap(batching.epoch_order, in_axes=(0, None, None))(
        jax.random.split(jax.random.key(7), 8), jnp.int32(num_examples), max_examples)
    for order in np.asarray(orders):
      assert sorted(order[:num_examples]) == list(range(num_examples))
      np.testing.assert_array_equal(order[num_examples:], np.arange(num_examples, max_examples))
    if num_examples >= 5:  # different keys, different orders
      assert len({tuple(o) for o in np.asarray(orders)}) > 1
