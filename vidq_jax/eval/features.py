"""Feature network of the quality metrics: a small Flax CNN classifier trained on the demo data.

One module, two uses:

* images (emoji, 32×32 RGB): ``num_classes`` = the 10 emoji categories;
* videos (sprite clips, ``(T, 32, 32, 3)``): per-frame animal class (10) plus a motion head
  (left/right/up/down) on ``[first frame, last frame, last - first]``.

``features`` (the penultimate activations) are the space of the Fréchet distance
(:mod:`vidq_jax.eval.quality`). Trained with :func:`train_feature_net` (CPU is enough: a couple of
minutes), saved with :func:`save_feature_net` as ``feature_net.npz`` + JSON config in one folder
(numpy only, so the demo needs no orbax for it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "FeatureNetConfig",
    "FeatureNet",
    "FeatureExtractor",
    "train_feature_net",
    "save_feature_net",
    "load_feature_net",
]


@dataclasses.dataclass(frozen=True)
class FeatureNetConfig:
    num_classes: int = 10
    num_motions: int = 0  # 0 = image net; 4 = video net with a motion head
    width: int = 32
    feature_dim: int = 128
    class_names: tuple[str, ...] = ()
    motion_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNetConfig":
        d = dict(d)
        for k in ("class_names", "motion_names"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)


# LeCun-uniform: (truncated) normal sampling goes through erf_inv, which takes seconds to compile on CPU
_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class _Trunk(nn.Module):
    width: int
    feature_dim: int

    @nn.compact
    def __call__(self, x):
        w = self.width
        for i, (ch, stride) in enumerate([(w, 1), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 2)]):
            x = nn.Conv(ch, (3, 3), strides=stride, kernel_init=_INIT, name=f"conv{i}")(x)
            x = nn.GroupNorm(num_groups=math.gcd(8, ch), name=f"norm{i}")(x)
            x = nn.gelu(x)
        x = jnp.mean(x, axis=(-3, -2))
        return nn.gelu(nn.Dense(self.feature_dim, kernel_init=_INIT, name="proj")(x))


class FeatureNet(nn.Module):
    """``__call__(x)`` → dict ``features``, ``logits`` (and for video ``frame_features``,
    ``motion_features``, ``motion_logits``). Images ``(B, H, W, 3)``, videos ``(B, T, H, W, 3)``,
    values in ``[-1, 1]``."""

    config: FeatureNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        trunk = _Trunk(cfg.width, cfg.feature_dim, name="trunk")
        head = nn.Dense(cfg.num_classes, kernel_init=_INIT, name="head")
        if x.ndim == 4:
            f = trunk(x)
            return {"features": f, "logits": head(f)}
        b, t = x.shape[:2]
        ff = trunk(x.reshape((b * t,) + x.shape[2:])).reshape(b, t, -1)
        out = {"frame_features": ff, "frame_logits": head(ff), "logits": head(ff).mean(1)}
        fmean = ff.mean(1)
        if cfg.num_motions:
            pair = jnp.concatenate([x[:, 0], x[:, -1], x[:, -1] - x[:, 0]], axis=-1)
            mf = _Trunk(cfg.width // 2, cfg.feature_dim // 2, name="motion_trunk")(pair)
            out["motion_features"] = mf
            out["motion_logits"] = nn.Dense(cfg.num_motions, kernel_init=_INIT, name="motion_head")(mf)
            out["features"] = jnp.concatenate([fmean, mf], axis=-1)
        else:
            out["features"] = fmean
        return out


class FeatureExtractor:
    """A trained :class:`FeatureNet` with batched, jitted inference (numpy in, numpy out)."""

    def __init__(self, config: FeatureNetConfig, params: Any):
        self.config = config
        self.params = params
        self.net = FeatureNet(config)
        self._apply = jax.jit(lambda p, x: self.net.apply({"params": p}, x))

    def __call__(self, x: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        x = np.asarray(x, np.float32)
        outs: list[dict[str, np.ndarray]] = []
        for i in range(0, len(x), batch_size):
            outs.append(jax.tree_util.tree_map(np.asarray, self._apply(self.params, jnp.asarray(x[i : i + batch_size]))))
        if not outs:
            raise ValueError("no samples")
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _loss_fn(net: FeatureNet, params, x, labels, motions):
    out = net.apply({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    acc = (out["logits"].argmax(-1) == labels).mean()
    if "motion_logits" in out:
        loss = loss + optax.softmax_cross_entropy_with_integer_labels(out["motion_logits"], motions).mean()
        acc = 0.5 * acc + 0.5 * (out["motion_logits"].argmax(-1) == motions).mean()
    return loss, acc


def train_feature_net(
    config: FeatureNetConfig,
    batch_fn: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    steps: int = 2000,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 100,
    log: Callable[[str], None] = print,
) -> tuple[Any, list[tuple[int, float, float]]]:
    """Train with AdamW (cosine decay). ``batch_fn(step) -> (x, labels, motions or None)``.

    Returns ``(params, history)`` with ``history`` rows ``(step, loss, accuracy)``.
    """
    net = FeatureNet(config)
    x0, _, _ = batch_fn(0)
    # "rbg" keys: threefry initialisers take seconds each to compile on CPU
    params = jax.jit(net.init)(jax.random.key(seed, impl="rbg"), jnp.asarray(x0[:1]))["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, min(100, steps // 10)), max(steps, 2)), weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step_fn(params, opt, x, labels, motions):
        (loss, acc), g = jax.value_and_grad(lambda p: _loss_fn(net, p, x, labels, motions), has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss, acc

    history = []
    t0 = time.time()
    for s in range(steps):
        x, labels, motions = batch_fn(s)
        motions = np.zeros_like(labels) if motions is None else motions
        params, opt, loss, acc = step_fn(params, opt, jnp.asarray(x), jnp.asarray(labels), jnp.asarray(motions))
        if s % log_every == 0 or s == steps - 1:
            history.append((s, float(loss), float(acc)))
            log(f"feature net step {s:5d} loss {float(loss):.4f} acc {float(acc):.3f} ({time.time() - t0:.0f}s)")
    return params, history


def save_feature_net(folder: str | os.PathLike, config: FeatureNetConfig, params: Any, extra: dict | None = None) -> Path:
    """``folder/feature_net.npz`` (flattened params, float32) + ``folder/feature_net.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v, np.float32)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez_compressed(folder / "feature_net.npz", **flat)
    meta = {"config": config.to_dict(), **(extra or {})}
    (folder / "feature_net.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_feature_net(folder: str | os.PathLike) -> FeatureExtractor:
    """Inverse of :func:`save_feature_net`."""
    folder = Path(folder)
    meta = json.loads((folder / "feature_net.json").read_text())
    config = FeatureNetConfig.from_dict(meta["config"])
    params: dict = {}
    with np.load(folder / "feature_net.npz") as z:
        for key in z.files:
            node = params
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = jnp.asarray(z[key])
    return FeatureExtractor(config, params)
