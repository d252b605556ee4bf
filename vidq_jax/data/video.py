"""Procedural text-to-video clips: an animal sprite translating over a coloured background.

Clip ``i`` of a dataset with seed ``s`` is a pure function of ``(s, i)``: the sprite (an animal-mnist
silhouette, white), the direction (left / right / up / down), the start position and the background
colour are drawn from ``jax.random.fold_in(PRNGKey(s), i)``. Rendering is one jitted ``jnp`` function
(also used on the GPU inside the training step, so the data never leave the device).

Caption: ``"a {animal} moving {direction}"`` (``"an"`` before a vowel) (40 distinct captions, index ``animal * 4 + direction``).
Frames: ``(T, S, S, 3)`` float32 in ``[-1, 1]``. Defaults: 8 frames of 32×32, 16×16 sprite moving
2 px per frame.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.data.animals import load_sprites

__all__ = ["DIRECTIONS", "BACKGROUNDS", "VideoSpec", "VideoDataset", "render_clips", "video_caption"]

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# (row, col) displacement per frame unit for each direction
_DIR_VEC = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], np.int32)
# muted background palette (sprites are white)
BACKGROUNDS = np.array(
    [
        [0.10, 0.20, 0.55],  # blue
        [0.15, 0.45, 0.20],  # green
        [0.55, 0.15, 0.15],  # red
        [0.45, 0.30, 0.10],  # brown
        [0.35, 0.15, 0.45],  # purple
        [0.10, 0.40, 0.45],  # teal
        [0.25, 0.25, 0.25],  # gray
        [0.05, 0.05, 0.05],  # black
    ],
    np.float32,
)


def video_caption(animal: str, direction: str) -> str:
    """``"a cat moving left"`` / ``"an elephant moving up"``."""
    article = "an" if animal[:1] in "aeiou" else "a"
    return f"{article} {animal} moving {direction}"


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    frames: int = 8
    size: int = 32
    sprite: int = 16
    speed: int = 2  # pixels per frame

    def __post_init__(self):
        if self.sprite + self.speed * (self.frames - 1) > self.size:
            raise ValueError(f"a {self.sprite}px sprite moving {self.speed}px x {self.frames - 1} does not fit in {self.size}px")


@functools.partial(jax.jit, static_argnames=("spec",))
def render_clips(key: jax.Array, sprites: jax.Array, sprite_labels: jax.Array, spec: VideoSpec = VideoSpec()):
    """Render ``B = key.shape[0]`` clips, one per key (``key``: ``(B,)`` typed keys or ``(B, 2)`` raw keys).

    Returns ``(video (B, T, S, S, 3) float32 in [-1,1], animal (B,) int32, direction (B,) int32,
    caption_index (B,) int32 = animal * 4 + direction)``.
    """
    t_, s, ps, sp = spec.frames, spec.size, spec.sprite, spec.speed
    travel = sp * (t_ - 1)
    dir_vec = jnp.asarray(_DIR_VEC)
    palette = jnp.asarray(BACKGROUNDS)

    def one(k):
        k1, k2, k3, k4, k5 = jax.random.split(k, 5)
        idx = jax.random.randint(k1, (), 0, sprites.shape[0])
        d = jax.random.randint(k2, (), 0, 4)
        bg = palette[jax.random.randint(k3, (), 0, palette.shape[0])]
        free = s - ps
        along = jax.random.randint(k4, (), 0, free - travel + 1)
        across = jax.random.randint(k5, (), 0, free + 1)
        vec = dir_vec[d]
        # start so that the sprite moves ``travel`` px in direction vec without leaving the frame
        start_along = jnp.where(vec.sum() < 0, along + travel, along)
        horizontal = vec[0] == 0
        r0 = jnp.where(horizontal, across, start_along)
        c0 = jnp.where(horizontal, start_along, across)
        alpha = sprites[idx]

        def frame(f):
            r = r0 + vec[0] * sp * f
            c = c0 + vec[1] * sp * f
            a = jax.lax.dynamic_update_slice(jnp.zeros((s, s), jnp.float32), alpha, (r, c))
            return bg[None, None, :] * (1.0 - a[..., None]) + a[..., None]

        video = jax.vmap(frame)(jnp.arange(t_))
        lab = sprite_labels[idx]
        return video * 2.0 - 1.0, lab, d, lab * 4 + d

    return jax.vmap(one)(key)


class VideoDataset:
    """Deterministic procedural clips; ``clips(indices)`` renders clips by index."""

    def __init__(self, seed: int = 0, spec: VideoSpec = VideoSpec(), source: str = "animals", split: str = "train"):
        self.seed = int(seed)
        self.spec = spec
        alpha, labels, names = load_sprites(source, spec.sprite, split)
        self.sprites = jnp.asarray(alpha)
        self.sprite_labels = jnp.asarray(labels)
        self.class_names: tuple[str, ...] = names
        self.captions: tuple[str, ...] = tuple(video_caption(a, d) for a in names for d in DIRECTIONS)

    def keys(self, indices: np.ndarray | jax.Array) -> jax.Array:
        base = jax.random.PRNGKey(self.seed)
        return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))

    def clips(self, indices) -> dict[str, np.ndarray]:
        """Clips ``indices`` as numpy: ``video``, ``animal``, ``direction``, ``caption_index``, ``caption``."""
        video, animal, direction, cap = render_clips(self.keys(indices), self.sprites, self.sprite_labels, self.spec)
        cap = np.asarray(cap)
        return dict(
            video=np.asarray(video),
            animal=np.asarray(animal),
            direction=np.asarray(direction),
            caption_index=cap,
            caption=[self.captions[i] for i in cap],
        )
