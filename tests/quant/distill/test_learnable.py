"""LearnableTQE: the training forward equals the folded record's simulate output; gradients reach the
trainable leaves; straight-through rounding is exact forward, identity backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.quant import LayerQuant
from vidq_jax.quant.distill.learnable import TRAINABLE, learnable_from, straight_through
from vidq_jax.quant.methods import qvdit

K, N, T, S, R = 48, 24, 4, 3, 4


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((K, N)) * 0.05, jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, T * S, K)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(N), jnp.float32)
    layer = LayerQuant(w_bits=4, a_bits=6, w_method="qvdit", tqe_frames=T)
    rec = learnable_from(qvdit.quantize(w, layer, name="l"), w, R, np.random.default_rng(1))
    # as after some training: LoRA, step sizes and the branch moved
    rec = rec.replace(lora_b=jnp.asarray(rng.standard_normal((R, N)) * 0.01, jnp.float32),
                      scale=rec.scale * jnp.asarray(rng.uniform(0.9, 1.1, N), jnp.float32),
                      beta=jnp.asarray(rng.standard_normal(N) * 0.1, jnp.float32),
                      frame_scale=jnp.asarray(rng.uniform(0.5, 1.5, T), jnp.float32))
    return rec, x, b


def test_training_forward_equals_the_folded_record():
    rec, x, b = _setup()
    assert rec.lora_a.shape == (K, R) and rec.lora_b.shape == (R, N) and set(rec.trainable()) == set(TRAINABLE)
    both = jax.jit(lambda r: (r.quantized_dense(x, b, jnp.float32, activation="gelu_tanh"),
                              r.fold().with_backend("simulate").quantized_dense(x, b, jnp.float32,
                                                                                activation="gelu_tanh")))
    y_train, y_fold = (np.asarray(y) for y in both(rec))
    np.testing.assert_allclose(y_train, y_fold, rtol=1e-5, atol=1e-5 * np.abs(y_fold).max())


def test_gradients_reach_every_trainable_leaf():
    rec, x, b = _setup()

    def loss(tr):
        return jnp.mean(jnp.square(rec.replace(**tr).quantized_dense(x, b, jnp.float32)))

    grads = jax.jit(jax.grad(loss))(rec.trainable())
    for name, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0), name


def test_straight_through_is_exact_forward_identity_backward():
    v = jnp.asarray([-2.5, -0.49, 0.5, 1.5, 3.7], jnp.float32)
    np.testing.assert_array_equal(np.asarray(straight_through(v, jnp.round(v))), np.round(np.asarray(v)))
    g = jax.grad(lambda v: jnp.sum(straight_through(v, jnp.round(v)) * jnp.arange(5.0)))(v)
    np.testing.assert_array_equal(np.asarray(g), np.arange(5.0))
