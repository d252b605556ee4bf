"""Quality metrics (Fréchet distance, SSIM, PSNR, accuracies) and the feature network."""

from __future__ import annotations

import numpy as np
import pytest

from vidq_jax.eval.quality import (
    conditional_accuracy,
    fidelity_metrics,
    frechet_distance,
    frechet_distance_from_stats,
    psnr,
    ssim,
    temporal_consistency,
)


def test_frechet_distance_sanity():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # 1-D Gaussians: (mu1-mu2)^2 + (s1 - s2)^2
    assert frechet_distance_from_stats(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == pytest.approx(2.0)
    g = f + 1.0
    assert frechet_distance(f, g) == pytest.approx(8.0, rel=1e-6)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Direct (loop) SSIM of one [0,1] image pair, Gaussian 11x11 sigma 1.5, valid windows."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / 4.5)
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[-1]):
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                pa, pb = a[i : i + 11, j : j + 11, ch], b[i : i + 11, j : j + 11, ch]
                ma, mb = (win * pa).sum(), (win * pb).sum()
                va = (win * pa * pa).sum() - ma**2
                vb = (win * pb * pb).sum() - mb**2
                cab = (win * pa * pb).sum() - ma * mb
                vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_psnr_sanity():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert psnr(x, x) == 100.0
    assert ssim(x, y) < 0.95
    ref = np.mean([_ssim_reference((x[i] + 1) / 2, (y[i] + 1) / 2) for i in range(3)])
    assert ssim(x, y) == pytest.approx(ref, abs=1e-4)
    mse = np.mean((x.astype(np.float64) - y) ** 2)
    assert psnr(x, y) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-6)
    # videos: per frame
    v = x.reshape(1, 3, 16, 16, 3)
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-6)
    m = fidelity_metrics(y, x)
    assert set(m) == {"psnr", "ssim", "mse"}


def test_accuracies_and_temporal_consistency():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert conditional_accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    same = np.ones((2, 4, 5))
    assert temporal_consistency(same) == pytest.approx(1.0)
    flip = np.stack([np.ones(5), -np.ones(5)] * 2)[None]
    assert temporal_consistency(flip) == pytest.approx(-1.0)


def test_feature_net_train_save_load(tmp_path):
    from vidq_jax.eval.features import FeatureNetConfig, load_feature_net, save_feature_net, train_feature_net

    import jax

    from vidq_jax.eval.features import FeatureExtractor, FeatureNet

    rng = np.random.default_rng(0)
    img_cfg = FeatureNetConfig(num_classes=3, width=8, feature_dim=16)

    def batch_fn(step):
        return rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32), rng.integers(0, 3, 4), None

    params, hist = train_feature_net(img_cfg, batch_fn, steps=2, log=lambda s: None)
    assert len(hist) == 2 and np.isfinite(hist[-1][1])
    save_feature_net(tmp_path, img_cfg, params)
    o = load_feature_net(tmp_path)(rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32))
    assert o["features"].shape == (3, 16) and o["logits"].shape == (3, 3)

    cfg = FeatureNetConfig(num_classes=3, num_motions=4, width=8, feature_dim=16)
    p = jax.jit(FeatureNet(cfg).init)(jax.random.key(0, impl="rbg"), np.zeros((1, 2, 16, 16, 3), np.float32))["params"]
    out = FeatureExtractor(cfg, p)(rng.uniform(-1, 1, (5, 3, 16, 16, 3)).astype(np.float32))
    assert out["features"].shape == (5, 16 + 8)
    assert out["frame_features"].shape == (5, 3, 16)
    assert out["logits"].shape == (5, 3) and out["motion_logits"].shape == (5, 4)


def test_shipped_feature_nets():
    from vidq_jax.data.text import ASSETS_DIR
    from vidq_jax.eval.quality import image_quality, load_reference, video_quality

    names = [n for n in ("emoji", "video") if (ASSETS_DIR / "feature_nets" / n / "feature_net.json").exists()]
    if not names:
        pytest.skip("no feature network shipped yet")
    rng = np.random.default_rng(0)
    for name in names:
        fx, (mu, cov) = load_reference(name)
        assert mu.shape == (fx.config.feature_dim + (fx.config.feature_dim // 2 if fx.config.num_motions else 0),)
        assert cov.shape == (mu.shape[0], mu.shape[0])
        if name == "emoji":
            x = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
            q = image_quality(fx, x, np.zeros(4, int), (mu, cov))
            assert q["fd"] > 0 and 0 <= q["cond_acc"] <= 1
        else:
            x = rng.uniform(-1, 1, (4, 8, 32, 32, 3)).astype(np.float32)
            q = video_quality(fx, x, np.zeros(4, int), np.zeros(4, int), (mu, cov))
            assert set(q) == {"fd", "cond_acc", "temporal_consistency", "motion_acc"}


def test_ssim_small_even_images_are_finite():
    import numpy as np

    from vidq_jax.eval.quality import ssim

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 8, 12, 4)).astype(np.float32)
    b = a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    assert np.isfinite(ssim(a, b)) and ssim(a, a) == 1.0
