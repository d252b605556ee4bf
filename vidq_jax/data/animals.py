"""Animal silhouettes from the ``animal-mnist`` wheel (10 classes × 1,000 grayscale 28×28).

The package's own loader imports TensorFlow at import time; the data are two gzip-pickled numpy
arrays that are read directly here (the package is located with ``importlib.util.find_spec``, never
imported). Labels are in the alphabetical order of the package description (checked visually):
bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra. Fallback for machines without it:
scikit-learn's 8×8 digits (``load_digits_sprites``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

__all__ = ["ANIMAL_CLASSES", "DIGIT_CLASSES", "load_animals", "load_digits_sprites", "load_sprites"]

ANIMAL_CLASSES: tuple[str, ...] = (
    "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
)
DIGIT_CLASSES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _data_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the package 'animal-mnist' is not installed; install the training data extra "
            "(`pip install --no-deps animal-mnist`: its declared TensorFlow dependency is not needed here)"
        )
    return Path(spec.origin).parent / "data" / "Animal_MNIST"


@functools.lru_cache(maxsize=1)
def load_animals() -> tuple[np.ndarray, np.ndarray]:
    """``(images (10000, 28, 28) uint8, labels (10000,) int32)``; white silhouette on black."""
    folder = _data_dir()
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(pickle.load(f), np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(pickle.load(f), np.int32)
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise ValueError(f"unexpected animal-mnist arrays {images.shape}, {labels.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=1)
def load_digits_sprites() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as ``(1797, 8, 8) uint8`` (0..255) and labels (fallback sprite set)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images, d.target.astype(np.int32)


def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` area-averaging weights (the box filter of PIL's ``Image.BOX`` resize)."""
    w = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            w[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
    return w / w.sum(1, keepdims=True)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Box-filter resize of ``(N, S, S)`` uint8 images to ``(N, size, size)`` float32 (0..255)."""
    if images.shape[1] == size:
        return images.astype(np.float32)
    a = _box_matrix(images.shape[1], size).astype(np.float32)
    return np.matmul(np.matmul(a, images.astype(np.float32)), a.T)


@functools.lru_cache(maxsize=8)
def load_sprites(source: str = "animals", size: int = 16, split: str = "train") -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Sprites as alpha masks ``(N, size, size) float32`` in [0, 1], labels, class names.

    ``split``: ``"train"`` (first 90 % of each class), ``"test"`` (last 10 %) or ``"all"``.
    ``source``: ``"animals"`` (animal-mnist) or ``"digits"`` (scikit-learn fallback).
    """
    if source == "animals":
        images, labels = load_animals()
        names = ANIMAL_CLASSES
    elif source == "digits":
        images, labels = load_digits_sprites()
        names = DIGIT_CLASSES
    else:
        raise ValueError(f"unknown sprite source {source!r} (animals | digits)")
    keep = np.zeros(len(labels), bool)
    for c in range(len(names)):
        idx = np.flatnonzero(labels == c)
        cut = int(round(len(idx) * 0.9))
        sel = {"train": idx[:cut], "test": idx[cut:], "all": idx}.get(split)
        if sel is None:
            raise ValueError(f"unknown split {split!r} (train | test | all)")
        keep[sel] = True
    alpha = np.clip(_resize(images[keep], size) / 255.0, 0.0, 1.0).astype(np.float32)
    alpha.setflags(write=False)
    lab = labels[keep].copy()
    lab.setflags(write=False)
    return alpha, lab, names
