"""Sample-quality metrics on the project's trained demo models.

* :func:`frechet_distance` — FID-style distance between two feature sets (Gaussian fit), in the
  penultimate space of the feature network (:mod:`vidq_jax.eval.features`), not Inception.
* :func:`conditional_accuracy` — does the sample show what the caption says (classifier argmax).
* :func:`temporal_consistency` — mean cosine similarity of consecutive frames' features.
* :func:`motion_accuracy` — predicted motion direction vs the caption's.
* :func:`psnr`, :func:`ssim` — fidelity of one sample set to another (e.g. quantized vs FP from the
  same noise). SSIM is the Wang et al. (2004) index with an 11×11 Gaussian window (σ = 1.5),
  ``K1 = 0.01``, ``K2 = 0.03``, valid convolution, per channel, averaged; written in ``jnp``.

Samples are ``[-1, 1]`` RGB images ``(N, H, W, 3)`` or videos ``(N, T, H, W, 3)``
(PSNR with ``data_range = 2``; SSIM maps to [0, 1] first). :func:`image_quality` / :func:`video_quality` bundle everything in one dict.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "conditional_accuracy",
    "temporal_consistency",
    "motion_accuracy",
    "psnr",
    "ssim",
    "image_quality",
    "video_quality",
    "feature_metrics",
    "fidelity_metrics",
    "load_reference",
]

PSNR_CAP = 100.0  # dB reported for identical sets


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``(N, D)`` features (N >= 2)."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    if f.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance_from_stats(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})`` (as pytorch-fid, with its ``eps`` fallback)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        off = np.eye(cov1.shape[0]) * eps
        covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)
    fd = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between two ``(N, D)`` feature sets."""
    return frechet_distance_from_stats(*feature_stats(features_a), *feature_stats(features_b))


def conditional_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class is the caption's class."""
    return float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(labels)))


def motion_accuracy(motion_logits: np.ndarray, directions: np.ndarray) -> float:
    """Fraction of clips whose predicted motion direction is the caption's direction."""
    return conditional_accuracy(motion_logits, directions)


def temporal_consistency(frame_features: np.ndarray) -> float:
    """Mean cosine similarity between features of consecutive frames, ``(N, T, D)`` → scalar in [-1, 1]."""
    f = np.asarray(frame_features, np.float64)
    if f.ndim != 3 or f.shape[1] < 2:
        raise ValueError(f"expected (N, T>=2, D) frame features, got {f.shape}")
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(f[:, 1:] * f[:, :-1], axis=-1)))


def psnr(a: Any, b: Any, data_range: float = 2.0, cap: float = PSNR_CAP) -> float:
    """PSNR in dB over the whole sets (one MSE), capped at ``cap`` (identical sets give ``cap``)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return cap
    return min(cap, 10.0 * math.log10(data_range**2 / mse))


def _gaussian_window(size: int, sigma: float) -> jnp.ndarray:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    g = jnp.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


@jax.jit
def _ssim_maps(a: jax.Array, b: jax.Array, data_range: jax.Array):
    """Per-image SSIM ``(N,)`` of ``(N, H, W, C)`` float32 arrays (separable Gaussian, valid)."""
    side = min(a.shape[1], a.shape[2])
    win = 11 if side >= 11 else (side if side % 2 else side - 1)  # odd, never larger than the image
    g = _gaussian_window(win, 1.5)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def blur(x):  # (N, H, W, C) -> valid Gaussian filtering per channel
        n, h, w, c = x.shape
        x = jnp.moveaxis(x, -1, 1).reshape(n * c, 1, h, w)
        x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, win, 1), (1, 1), "VALID")
        x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, win), (1, 1), "VALID")
        return x.reshape(n, c, x.shape[-2], x.shape[-1])

    mu_a, mu_b = blur(a), blur(b)
    s_aa = blur(a * a) - mu_a**2
    s_bb = blur(b * b) - mu_b**2
    s_ab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))


def ssim(a: Any, b: Any, value_range: tuple[float, float] = (-1.0, 1.0), reduce: bool = True):
    """Mean SSIM of two equally shaped sets of images ``(..., H, W, C)`` (videos: per frame).

    Values are first mapped from ``value_range`` to ``[0, 1]`` (SSIM's luminance term is not
    shift-invariant; the usual convention is images in [0, 1] or [0, 255]), then data range 1.
    ``reduce=False`` returns one value per image/frame (flattened leading axes).
    """
    lo, hi = value_range
    a = (jnp.asarray(a, jnp.float32) - lo) / (hi - lo)
    b = (jnp.asarray(b, jnp.float32) - lo) / (hi - lo)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"expected equal (..., H, W, C) shapes, got {a.shape} vs {b.shape}")
    a = a.reshape((-1,) + a.shape[-3:])
    b = b.reshape((-1,) + b.shape[-3:])
    vals = np.asarray(_ssim_maps(a, b, jnp.float32(1.0)), np.float64)
    return float(vals.mean()) if reduce else vals


def fidelity_metrics(samples: Any, reference: Any) -> dict[str, float]:
    """PSNR / SSIM / MSE of ``samples`` against ``reference`` (e.g. FP from the same noise)."""
    a = np.asarray(samples, np.float32)
    b = np.asarray(reference, np.float32)
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "mse": float(np.mean((a.astype(np.float64) - b) ** 2))}


def feature_metrics(out: dict[str, np.ndarray], labels: np.ndarray | None = None, directions: np.ndarray | None = None,
                    real_stats: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Metrics of one feature-network output (``FeatureExtractor(samples)``): ``fd`` to ``real_stats``
    ``(mu, cov)``, ``cond_acc`` given the caption classes ``labels``; for videos
    ``temporal_consistency`` and, given the caption ``directions``, ``motion_acc``. Metrics whose
    input is ``None`` are left out (e.g. no FD for a handful of samples)."""
    res: dict[str, float] = {}
    if real_stats is not None:
        res["fd"] = frechet_distance_from_stats(*feature_stats(out["features"]), *real_stats)
    if labels is not None:
        res["cond_acc"] = conditional_accuracy(out["logits"], labels)
    if "frame_features" in out:
        res["temporal_consistency"] = temporal_consistency(out["frame_features"])
    if "motion_logits" in out and directions is not None:
        res["motion_acc"] = motion_accuracy(out["motion_logits"], directions)
    return res


def _real_stats(extractor, real) -> tuple[np.ndarray, np.ndarray]:
    return real if isinstance(real, tuple) else feature_stats(extractor(real)["features"])


def image_quality(extractor, samples: np.ndarray, labels: np.ndarray, real: np.ndarray | tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """FD to the real set (samples ``(N, H, W, 3)`` or precomputed real ``(mu, cov)``) and conditional
    accuracy of ``samples`` given their caption classes ``labels``."""
    return feature_metrics(extractor(samples), labels, real_stats=_real_stats(extractor, real))


def video_quality(extractor, samples: np.ndarray, labels: np.ndarray, directions: np.ndarray,
                  real: np.ndarray | tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """FD, conditional (animal) accuracy, motion accuracy and temporal consistency of clips."""
    return feature_metrics(extractor(samples), labels, directions, real_stats=_real_stats(extractor, real))


def load_reference(name_or_path: str) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
    """Shipped feature network and real-data feature statistics: ``(extractor, (mu, cov))``.

    ``name_or_path``: ``"emoji"`` / ``"video"`` (folders under ``assets/feature_nets/``) or a folder
    written by ``python -m vidq_jax.train features``. Use as ``image_quality(fx, samples, labels, stats)``.
    """
    from pathlib import Path

    from vidq_jax.data.text import ASSETS_DIR
    from vidq_jax.eval.features import load_feature_net

    folder = Path(name_or_path)
    if not folder.exists():
        folder = ASSETS_DIR / "feature_nets" / str(name_or_path)
    if not (folder / "feature_net.json").exists():
        raise FileNotFoundError(f"{folder}: no feature network (train one: python -m vidq_jax.train features --data ...)")
    with np.load(folder / "real_stats.npz") as z:
        stats = (z["mu"].astype(np.float64), z["cov"].astype(np.float64))
    return load_feature_net(folder), stats
