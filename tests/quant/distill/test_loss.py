"""TMD loss: MSE + γ · mean KL of the frame-relation softmax distributions (numpy reference)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant.distill.loss import GAMMA, frame_similarity, tmd_loss


def _reference_kl(pred, target):
    def dist(s):
        f = s.reshape(s.shape[0], s.shape[1], -1).astype(np.float64)
        f /= np.linalg.norm(f, axis=-1, keepdims=True)
        e = np.exp(f @ f.transpose(0, 2, 1))
        return e / e.sum(-1, keepdims=True)

    p, q = dist(target), dist(pred)
    return np.mean(p * (np.log(p) - np.log(q)))


def test_loss_terms_match_the_reference():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((2, 5, 4, 4, 3)).astype(np.float32)
    pred = target + 0.3 * rng.standard_normal(target.shape).astype(np.float32)
    loss, terms = tmd_loss(jnp.asarray(pred), jnp.asarray(target))
    assert float(terms["mse"]) == pytest.approx(np.mean((pred - target) ** 2), rel=1e-5)
    assert float(terms["kl"]) == pytest.approx(_reference_kl(pred, target), rel=1e-3) and float(terms["kl"]) > 0
    assert float(loss) == pytest.approx(float(terms["mse"]) + GAMMA * float(terms["kl"]), rel=1e-6)


def test_frame_relations_ignore_per_frame_scale_and_images_have_none():
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.standard_normal((1, 4, 6)), jnp.float32)
    scaled = s * jnp.asarray([1.0, 2.0, 0.5, 3.0])[None, :, None]
    np.testing.assert_allclose(np.asarray(frame_similarity(s)), np.asarray(frame_similarity(scaled)), atol=1e-6)
    assert float(tmd_loss(scaled, s)[1]["kl"]) == pytest.approx(0.0, abs=1e-7)
    img = jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32)
    assert float(tmd_loss(img, img + 1.0)[1]["kl"]) == 0.0
