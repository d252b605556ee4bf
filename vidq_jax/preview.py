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


def samples_to_uint8(x: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Pixel-space samples (any shape ``(..., 3)``, values in ``value_range``) → uint8 RGB (clipped)."""
    return _to_uint8(np.asarray(x, np.float32), *value_range)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def labelled_grid(cells: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str], *,
                  scale: int = 4, pad: int = 6, font_size: int = 14) -> np.ndarray:
    """uint8 RGB grid of equally sized pictures ``cells[row][col]`` (each upscaled ``scale``× with
    nearest neighbour), column labels on top and row labels on the left, on white."""
    from PIL import Image, ImageDraw

    h, w = cells[0][0].shape[:2]
    ch, cw = h * scale, w * scale
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(measure.textlength(s, font=font))  # noqa: E731
    left = max([text_w(s) for s in row_labels] + [0]) + 2 * pad
    top = font_size + 2 * pad
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    col_w = max([cw] + [text_w(s) for s in col_labels]) + pad  # a column fits its picture and its label
    canvas = Image.new("RGB", (left + n_cols * col_w, top + n_rows * (ch + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels):
        draw.text((left + j * col_w + (col_w - pad - text_w(label)) // 2, pad), label, fill=(0, 0, 0), font=font)
    for i, row in enumerate(cells):
        y = top + i * (ch + pad)
        draw.text((pad, y + (ch - font_size) // 2), row_labels[i], fill=(0, 0, 0), font=font)
        for j, cell in enumerate(row):
            big = np.kron(np.asarray(cell, np.uint8), np.ones((scale, scale, 1), np.uint8))
            canvas.paste(Image.fromarray(big), (left + j * col_w + (col_w - pad - cw) // 2, y))
    return np.asarray(canvas)


def save_sample_grid(columns: dict[str, np.ndarray], row_labels: Sequence[str], path: str | os.PathLike, *,
                     value_range: tuple[float, float] = (-1.0, 1.0), scale: int = 4, fps: float = 4.0) -> Path:
    """Pixel-space samples side by side, one row per sample (labelled), one column per entry of
    ``columns`` (``label -> (N, H, W, 3)`` images or ``(N, T, H, W, 3)`` videos): a PNG for images, an
    animated GIF (``fps``) for videos."""
    labels = list(columns)
    first = np.asarray(columns[labels[0]])

    def grid(frame: int | None) -> np.ndarray:
        cells = [[samples_to_uint8(columns[c][i] if frame is None else columns[c][i, frame], value_range) for c in labels]
                 for i in range(first.shape[0])]
        return labelled_grid(cells, row_labels, labels, scale=scale)

    if first.ndim == 5:
        return save_gif([grid(t) for t in range(first.shape[1])], path, fps)
    return save_png(grid(None), path)
