"""Pictures of latents and samples: PNG grids for images, animated GIFs for videos.

Without a VAE decoder a 4-channel latent is shown two ways per sample: an approximate RGB rendering
(the well-known linear map from SD-VAE latent channels to RGB; for any other latent it is just a
fixed colour mix) and each channel as a grayscale tile, all upscaled with nearest neighbour so
pixels stay visible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

# Linear approximation latent -> RGB for SD-VAE latents (rows: latent channel, cols: R, G, B).
_SD_LATENT_RGB = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    np.float32,
)


def _to_uint8(x: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    lo = float(np.min(x)) if lo is None else lo
    hi = float(np.max(x)) if hi is None else hi
    y = (x - lo) / max(hi - lo, 1e-8)
    return (np.clip(y, 0, 1) * 255).round().astype(np.uint8)


def latent_rgb(latent: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` latent → ``(H, W, 3)`` uint8 approximate colour picture."""
    c = latent.shape[-1]
    if c == 3:
        return _to_uint8(latent)
    mix = _SD_LATENT_RGB[:c] if c <= 4 else np.resize(_SD_LATENT_RGB, (c, 3))
    rgb = latent[..., :c] @ mix
    return _to_uint8(rgb, -1.0, 1.0) if np.abs(rgb).max() <= 1.5 else _to_uint8(rgb)


def _upscale(img: np.ndarray, target: int) -> np.ndarray:
    k = max(1, target // max(img.shape[0], img.shape[1]))
    return np.kron(img, np.ones((k, k, 1), img.dtype)) if img.ndim == 3 else np.kron(img, np.ones((k, k), img.dtype))


def latent_tiles(latent: np.ndarray, tile: int = 96) -> np.ndarray:
    """One sample ``(H, W, C)`` → a row ``[approx RGB | ch0 | ch1 | ...]`` as uint8 RGB."""
    parts = [_upscale(latent_rgb(latent), tile)]
    for ch in range(latent.shape[-1]):
        g = _upscale(_to_uint8(latent[..., ch]), tile)
        parts.append(np.repeat(g[..., None], 3, axis=-1))
    h = max(p.shape[0] for p in parts)
    parts = [np.pad(p, ((0, h - p.shape[0]), (0, 2), (0, 0)), constant_values=255) for p in parts]
    return np.concatenate(parts, axis=1)


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 4) -> np.ndarray:
    """Grid of uint8 RGB pictures (ragged sizes padded with white)."""
    h = max(im.shape[0] for r in rows for im in r)
    w = max(im.shape[1] for r in rows for im in r)
    out_rows = []
    for r in rows:
        cells = [np.pad(im, ((0, h - im.shape[0] + pad), (0, w - im.shape[1] + pad), (0, 0)), constant_values=255) for im in r]
        out_rows.append(np.concatenate(cells, axis=1))
    width = max(r.shape[1] for r in out_rows)
    out_rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in out_rows]
    return np.concatenate(out_rows, axis=0)


def save_png(img: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def save_latent_preview(latents: np.ndarray, path: str | os.PathLike, tile: int = 96) -> Path:
    """Image latents ``(B, H, W, C)`` → PNG with one row per sample."""
    latents = np.asarray(latents, np.float32)
    return save_png(image_grid([[latent_tiles(x, tile)] for x in latents]), path)


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """uint8 RGB frames → looping animated GIF."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
    return path


def save_video_latent_preview(latents: np.ndarray, path: str | os.PathLike, tile: int = 96, fps: float = 4.0) -> Path:
    """Video latents ``(B, T, H, W, C)`` → animated GIF, samples stacked vertically in every frame."""
    latents = np.asarray(latents, np.float32)
    frames = [image_grid([[latent_tiles(x[t], tile)] for x in latents]) for t in range(latents.shape[1])]
    return save_gif(frames, path, fps)
