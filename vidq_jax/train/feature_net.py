"""Training the feature networks of the quality metrics on the demo data, plus real-data statistics.

``python -m vidq_jax.train features --data emoji|video --out assets/feature_nets/<data>`` writes
``feature_net.npz``/``.json`` (weights in float16) and ``real_stats.npz`` (mean/covariance of the
features of held-out real samples, the reference of the Fréchet distance).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from vidq_jax.eval.features import FeatureExtractor, FeatureNetConfig, save_feature_net, train_feature_net
from vidq_jax.eval.quality import conditional_accuracy, feature_stats, motion_accuracy, temporal_consistency

__all__ = ["train_emoji_features", "train_video_features"]


def _save_fp16(folder: Path) -> None:
    z = dict(np.load(folder / "feature_net.npz"))
    np.savez_compressed(folder / "feature_net.npz", **{k: v.astype(np.float16) for k, v in z.items()})


def train_emoji_features(out: Path, steps: int = 3000, batch: int = 128, seed: int = 0, tiny: bool = False, log=print) -> dict:
    """Emoji category classifier (10 classes); every 10th emoji held out for the statistics."""
    from vidq_jax.data.emoji import EMOJI_CATEGORIES, load_emoji

    data = load_emoji(32, limit=80 if tiny else None, stride=37 if tiny else 1)
    n = len(data)
    held = np.arange(n) % 10 == 0
    tr = np.flatnonzero(~held)
    rng = np.random.default_rng(seed)
    # class-balanced sampling ("People & Body" is 55 % of the emoji)
    cats = data.categories
    weights = np.zeros(n)
    for c in np.unique(cats[tr]):
        sel = tr[cats[tr] == c]
        weights[sel] = 1.0 / len(sel)
    weights /= weights.sum()

    def batch_fn(step):
        idx = rng.choice(n, batch, p=weights)
        x = data.images[idx]
        shift = rng.integers(-2, 3, size=2)  # small translation augmentation
        x = np.roll(x, tuple(shift), axis=(1, 2))
        return x, cats[idx], None

    cfg = FeatureNetConfig(num_classes=len(EMOJI_CATEGORIES), class_names=EMOJI_CATEGORIES)
    t0 = time.time()
    params, hist = train_feature_net(cfg, batch_fn, steps=steps, seed=seed, log=log, log_every=max(1, steps // 20))
    fx = FeatureExtractor(cfg, params)
    ho = fx(data.images[held])
    info = {"data": "emoji", "steps": steps, "train_s": round(time.time() - t0, 1),
            "heldout_acc": conditional_accuracy(ho["logits"], cats[held]), "heldout_n": int(held.sum()),
            "history": hist}
    _finish(out, cfg, params, fx(data.images)["features"], info)
    return info


def train_video_features(out: Path, steps: int = 3000, batch: int = 64, seed: int = 0, tiny: bool = False, log=print) -> dict:
    """Clip classifier: animal (10, per frame) + motion direction (4); real statistics from test sprites."""
    from vidq_jax.data.animals import ANIMAL_CLASSES
    from vidq_jax.data.video import DIRECTIONS, VideoDataset

    train_ds = VideoDataset(seed=seed + 1, split="train")
    test_ds = VideoDataset(seed=seed + 2, split="test")

    def batch_fn(step):
        c = train_ds.clips(np.arange(step * batch, (step + 1) * batch))
        return c["video"], c["animal"], c["direction"]

    cfg = FeatureNetConfig(num_classes=len(ANIMAL_CLASSES), num_motions=len(DIRECTIONS),
                           class_names=ANIMAL_CLASSES, motion_names=DIRECTIONS)
    t0 = time.time()
    params, hist = train_feature_net(cfg, batch_fn, steps=steps, seed=seed, log=log, log_every=max(1, steps // 20))
    fx = FeatureExtractor(cfg, params)
    c = test_ds.clips(np.arange(64 if tiny else 1000))
    o = fx(c["video"])
    info = {"data": "video", "steps": steps, "train_s": round(time.time() - t0, 1),
            "heldout_acc": conditional_accuracy(o["logits"], c["animal"]),
            "heldout_motion_acc": motion_accuracy(o["motion_logits"], c["direction"]),
            "heldout_temporal_consistency": temporal_consistency(o["frame_features"]),
            "heldout_n": int(len(c["animal"])), "history": hist}
    _finish(out, cfg, params, o["features"], info)
    return info


def _finish(out: Path, cfg: FeatureNetConfig, params, real_features: np.ndarray, info: dict) -> None:
    out = Path(out)
    save_feature_net(out, cfg, jax.device_get(params), extra={k: v for k, v in info.items() if k != "history"})
    _save_fp16(out)
    mu, cov = feature_stats(real_features)
    np.savez_compressed(out / "real_stats.npz", mu=mu.astype(np.float32), cov=cov.astype(np.float32), n=len(real_features))
    (out / "train_log.json").write_text(json.dumps(info, indent=1, default=str))
