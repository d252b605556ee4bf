"""``vidq generate``: prompts → pictures and videos from a release's own files, all in JAX.

A release is four parts (:data:`PARTS`), found in its published layout or named one by one:

* the diffusers PixArt repos (``PixArt-alpha/PixArt-XL-2-1024-MS``, ``PixArt-Sigma-XL-2-1024-MS``, ...):
  ``RELEASE/transformer/`` (arch ``pixart-diffusers``), ``vae/`` (``sd-vae``), ``text_encoder/``
  (``t5-encoder``), ``tokenizer/``;
* Open-Sora's separate checkpoints: ``--transformer CKPT --arch stdit3 --vae VAE_DIR --text-encoder
  T5_DIR --tokenizer TOK_DIR`` (the VAE arch follows the family: ``opensora-vae-v1.2`` for STDiT3,
  ``sd-vae`` otherwise; ``--vae-arch`` overrides);
* any part may instead be given by flag; ``--transformer`` may also be a ``vidq convert`` / ``vidq
  quantize`` model folder (float or quantized, ``model.json``).

The run: load and (``--text-encoder-quant w8-only``) quantize the T5 encoder, encode the prompts and the
null caption the family uses for guidance (``models.families``: the learned ``y_embedding``, or T5 of the
empty / ``--negative-prompt``), free the encoder; load the transformer, quantize it with ``--preset``
(calibrated on the prompts' own float sampling runs when the preset needs statistics); sample with the
family's release sampler (:func:`vidq_jax.pipeline.sample`; seeds ``seed + i`` per prompt, so a prompt's
noise does not depend on the batching); decode with the release VAE (:mod:`models.vae`,
:mod:`models.opensora_vae`; ``--tile`` for bounded memory); write ``NNN_<prompt>.png`` (images) or
``.gif`` / ``.mp4`` (videos) and ``generate.json``: parts, settings, seeds, files and the time of every
stage. Every missing or unusable part is a one-line :class:`~vidq_jax.errors.VidqError` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.errors import VidqError

PARTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer")
DIFFUSERS_ARCH = "pixart-diffusers"  # the transformer/ folder of a diffusers release
VAE_ARCH_OF_FAMILY = {"stdit3": "opensora-vae-v1.2"}  # every other family decodes with the SD KL autoencoder
DEFAULT_VAE_ARCH = "sd-vae"
VIDEO_FORMATS: tuple[str, ...] = ("gif", "mp4")
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
RECORD = "generate.json"
TEXT_NULL_CAPTIONS = ("learned", "empty-prompt")  # the null-caption policies of the text-conditioned families
CALIB_STEPS = 5  # calibration batches recorded per float sampling run (presets that need statistics)


# ------------------------------------------------------------------------------------------------ the parts
@dataclasses.dataclass(frozen=True)
class Release:
    """Where each part lives. ``arch``: the transformer checkpoint's arch, ``None`` for a vidq model folder;
    ``vae_arch``: ``None`` = the family's (:data:`VAE_ARCH_OF_FAMILY`)."""

    transformer: Path
    arch: str | None
    vae: Path
    vae_arch: str | None
    text_encoder: Path
    tokenizer: Path

    def describe(self) -> dict[str, Any]:
        return {**{p: str(getattr(self, p)) for p in PARTS}, "arch": self.arch, "vae_arch": self.vae_arch}


def _flag(part: str) -> str:
    return "--" + part.replace("_", "-")


def find_release(release: str | Path | None = None, **given: str | Path | None) -> Release:
    """The parts of ``release`` (a folder in the diffusers layout) with ``given`` ones (``transformer``,
    ``vae``, ``text_encoder``, ``tokenizer``, ``arch``, ``vae_arch``) taking precedence; one-line
    :class:`VidqError` naming the first part that is missing."""
    from conversion import ARCHS

    unknown = set(given) - {*PARTS, "arch", "vae_arch"}
    if unknown:
        raise TypeError(f"find_release: unknown parts {sorted(unknown)}")
    root = None if release is None else Path(release)
    if root is not None and not root.is_dir():
        raise VidqError(f"RELEASE {root}: no such folder (a release in the diffusers layout: "
                        f"{', '.join(p + '/' for p in PARTS)})")
    paths: dict[str, Path] = {}
    for part in PARTS:
        if given.get(part) is not None:
            path = Path(given[part])
            if not path.exists():
                raise VidqError(f"{part}: {_flag(part)} {path}: no such file or folder")
        elif root is not None and (root / part).exists():
            path = root / part
        elif part == "tokenizer" and "text_encoder" in paths and _holds_tokenizer(paths["text_encoder"]):
            path = paths["text_encoder"]  # some T5 folders keep spiece.model next to the weights
        else:
            where = f"RELEASE {root} has no {part}/ folder" if root is not None else "no RELEASE folder given"
            raise VidqError(f"{part}: {where}; give {_flag(part)} PATH")
        paths[part] = path
    arch = given.get("arch")
    if (paths["transformer"] / "model.json").is_file():
        if arch is not None:
            raise VidqError(f"--arch {arch}: transformer {paths['transformer']} is a vidq model folder (model.json "
                            "names its arch); drop --arch")
    elif arch is None:
        if not _is_diffusers_transformer(paths["transformer"]):
            raise VidqError(f"transformer {paths['transformer']}: not a diffusers transformer/ folder nor a vidq model "
                            f"folder; give --arch (one of {', '.join(ARCHS)})")
        arch = DIFFUSERS_ARCH
    for name, value in (("--arch", arch), ("--vae-arch", given.get("vae_arch"))):
        if value is not None and value not in ARCHS:
            raise VidqError(f"{name} {value}: unknown arch; choose one of {', '.join(ARCHS)}")
    return Release(paths["transformer"], arch, paths["vae"], given.get("vae_arch"), paths["text_encoder"],
                   paths["tokenizer"])


def _holds_tokenizer(folder: Path) -> bool:
    from vidq_jax.text_encoder import TOKENIZER_FILES

    return folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_FILES)


def _is_diffusers_transformer(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name") == "PixArtTransformer2DModel"
    except (OSError, ValueError, AttributeError):
        return False


def _part_error(part: str, path: Path, e: Exception) -> VidqError:
    """A part that does not load: one line naming it (the converter's key lists are summarised)."""
    lines = str(e).splitlines() or [type(e).__name__]
    detail = lines[0] + (f" ({len(lines) - 1} more lines: {'; '.join(x.strip() for x in lines[1:4])}...)"
                         if len(lines) > 1 else "")
    return VidqError(f"{part} {path}: {detail}")


# ------------------------------------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run does besides its prompts (``None``: the release's / model's value)."""

    out_dir: Path = Path("outputs/generate")
    preset: str | None = None  # quantization preset of the transformer ("fp" / None: as loaded)
    backend: str = "auto"
    calib_prompts: int = 2
    text_encoder_quant: str | None = None  # weight-only preset of the T5 encoder ("w8-only")
    max_length: int | None = None  # caption tokens (default: the transformer's model_max_length)
    negative_prompt: str | None = None  # None: the family's null caption
    lowercase: bool = True
    height: int | None = None  # pixels
    width: int | None = None
    num_frames: int | None = None  # pixel frames (videos)
    fps: float = 24.0
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int = 1
    dtype: str = "auto"  # "auto": bf16 on a GPU, fp32 elsewhere
    video_format: str = "gif"
    tile: bool = False
    progress: bool = True
    # sharded sampling (vidq_jax.sharding.cli.MeshOptions from --devices / --mesh); None: one device
    sharding: Any = None

    def compute_dtype(self):
        name = self.dtype
        if name == "auto":
            name = "bf16" if jax.default_backend() == "gpu" else "fp32"
        if name not in DTYPES:
            raise VidqError(f"--dtype {self.dtype}: choose one of auto, {', '.join(DTYPES)}")
        return DTYPES[name]


def read_prompts(prompts: Sequence[str] | None = None, prompts_file: str | Path | None = None) -> list[str]:
    """``prompts`` plus the lines of ``prompts_file`` (blank lines and ``#`` comments skipped)."""
    out = list(prompts or [])
    if prompts_file is not None:
        path = Path(prompts_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise VidqError(f"--prompts {path}: not a readable UTF-8 text file ({' '.join(str(e).split())})") from None
        out += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise VidqError("no prompt: give --prompt TEXT (repeatable) or --prompts FILE (one per line)")
    empty = [i for i, p in enumerate(out) if not p.strip()]
    if empty:
        raise VidqError(f"--prompt: prompt {empty[0] + 1} is empty; give some text")
    return out


def _check_output(settings: Settings) -> None:
    """Everything about the output checkable before any work: folder writable, the MP4 writer installed."""
    out = Path(settings.out_dir).absolute()
    for anc in (out, *out.parents):
        if anc.exists():
            if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
                raise VidqError(f"--out {settings.out_dir}: {anc} is not a writable folder")
            break
    if settings.video_format not in VIDEO_FORMATS:
        raise VidqError(f"--video-format {settings.video_format}: choose one of {', '.join(VIDEO_FORMATS)}")
    if settings.video_format == "mp4":
        _mp4_writer()


def _mp4_writer():
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401 - the encoder imageio writes MP4 with
    except ImportError:
        raise VidqError("--video-format mp4 needs imageio + imageio-ffmpeg: pip install 'vidq-jax[generate]' "
                        "(or use --video-format gif)") from None
    return iio


# ------------------------------------------------------------------------------------------------ stages
class _Clock:
    """Wall time of each stage (results blocked on, so asynchronous dispatch is not mistaken for speed)."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        return out


def _load_transformer(release: Release, dtype) -> tuple[Any, Any, dict, Any]:
    """``(model, params, meta, plan)``; ``meta`` = the folder's model.json (``{}`` for a checkpoint)."""
    from conversion import ConversionError, load_checkpoint

    if release.arch is None:
        from vidq_jax.checkpoint import load_model
        from vidq_jax.quant.plan import MixedPrecisionPlan

        try:
            model, params, meta = load_model(release.transformer, dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            raise _part_error("transformer", release.transformer, e) from None
        q = meta.get("quantization") or {}
        plan = MixedPrecisionPlan.from_dict(q["plan"]) if q.get("plan") else None
        return model, params, meta, plan
    try:
        model, params = load_checkpoint(release.transformer, release.arch, dtype=dtype)
    except (ConversionError, OSError) as e:
        raise _part_error("transformer", release.transformer, e) from None
    return model.clone(dtype=dtype), params, {"arch": release.arch}, None


def _load_vae(release: Release, family: str):
    from conversion import ConversionError, is_implemented, load_checkpoint

    arch = release.vae_arch or VAE_ARCH_OF_FAMILY.get(family, DEFAULT_VAE_ARCH)
    if not is_implemented(arch):
        raise VidqError(f"vae {release.vae}: arch {arch!r} is not implemented in this version")
    try:
        model, params = load_checkpoint(release.vae, arch)
    except (ConversionError, OSError) as e:
        raise _part_error("vae", release.vae, e) from None
    return arch, model, params


@functools.lru_cache(maxsize=8)
def _decoder(vae_arch: str, vae, num_frames: int | None, tile: bool) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted ``(params, latents) -> pixels in [-1, 1]`` of the release VAE (the autoencoder component's own
    bounded-memory helper); one per equal module and options, so a second run does not recompile."""
    from models.families import owner_of_arch

    if owner_of_arch(vae_arch).name == "opensora-vae":
        from models import opensora_vae

        return jax.jit(lambda p, z: opensora_vae.decode(vae, p, z, num_frames, tile=tile or None))
    from models import vae as sd_vae

    return jax.jit(lambda p, z: sd_vae.decode_latents(vae, p, z, tile=tile or None, batch_size=1))


class _Progress:
    """One tqdm bar over every denoising step of a run, ticked from inside the jitted sampler loop
    (``jax.debug.callback``) by :func:`_ticking_apply_fn`: one function per model for every run, so the
    samplers' compiled loops (cached on the function's identity) are reused by later runs."""

    current = None

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True)

    def __enter__(self) -> "_Progress":
        _Progress.current = self
        return self

    def __exit__(self, *exc) -> None:
        _Progress.current = None
        self.bar.close()

    @staticmethod
    def tick(*_) -> None:
        if _Progress.current is not None:
            _Progress.current.bar.update(1)


@functools.lru_cache(maxsize=8)
def _ticking_apply_fn(model) -> Callable:
    def apply_fn(params, x, t, **cond):
        jax.debug.callback(_Progress.tick, t)
        return model.apply({"params": params}, x, t, **cond)

    return apply_fn


def _latent_shape(model, vae, settings: Settings, video: bool) -> tuple[tuple[int, ...], int | None]:
    """``(latent shape of one sample, pixel frames or None)`` from the model's default and the size flags."""
    default = tuple(int(s) for s in model.init_inputs()["x"].shape[1:])
    *lat, channels = default
    factor = 8
    for flag, value in (("--height", settings.height), ("--width", settings.width)):
        if value is not None and value % factor:
            raise VidqError(f"{flag} {value}: must be a multiple of {factor} (the VAE's downsampling)")
    h = settings.height // factor if settings.height else lat[-2]
    w = settings.width // factor if settings.width else lat[-1]
    if not video:
        if settings.num_frames is not None:
            raise VidqError(f"--num-frames {settings.num_frames}: the transformer makes images; it applies to videos")
        return (h, w, channels), None
    cfg = getattr(vae, "config", None)
    temporal = hasattr(cfg, "latent_frames")  # Open-Sora 1.2's video VAE compresses time
    if settings.num_frames is None:
        t = lat[0]
        frames = cfg.max_frames(t) if temporal else t
    else:
        frames = settings.num_frames
        t = cfg.latent_frames(frames) if temporal else frames
    return (t, h, w, channels), frames


def _extras(model, n: int, height: int, width: int, fps: float) -> dict[str, jax.Array]:
    """The size / fps conditions the model's forward takes (PixArt-α-MS micro-conditions, STDiT3 sizes)."""
    accepted = inspect.signature(type(model).__call__).parameters
    cfg = model.config
    out: dict[str, jax.Array] = {}
    if "img_hw" in accepted and getattr(cfg, "micro_condition", False):
        out["img_hw"] = jnp.tile(jnp.asarray([[height, width]], jnp.float32), (n, 1))
        out["aspect_ratio"] = jnp.full((n, 1), height / width, jnp.float32)
    for name, value in (("fps", fps), ("height", height), ("width", width)):
        if name in accepted:
            out[name] = jnp.full((n,), float(value), jnp.float32)
    return out


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip((np.asarray(x, np.float32) + 1.0) * 127.5, 0, 255) + 0.5).astype(np.uint8)


def _write(pixels: np.ndarray, path: Path, settings: Settings) -> None:
    from vidq_jax.preview import save_gif, save_png

    img = _to_uint8(pixels)
    if img.ndim == 3:
        save_png(img, path)
    elif settings.video_format == "gif":
        save_gif(list(img), path, fps=settings.fps)
    else:
        _mp4_writer().imwrite(path, img, fps=settings.fps, codec="libx264")


def _quantize(model, params, preset: str, settings: Settings, clock: _Clock, calibration: Callable[[], list]):
    """``(params, config)`` quantized with ``preset`` (calibrated through ``calibration()`` if it needs it)."""
    from vidq_jax.quant import QuantConfig, quantize_params
    from vidq_jax.quant.methods import layer_statistics
    from vidq_jax.quant.tree import dense_paths

    config = QuantConfig.preset(preset, backend=settings.backend)
    paths = dense_paths(params)
    layers = config.for_model(model, paths).resolve_all(paths)
    calib = None
    if any(lq is not None and layer_statistics(lq, p) for p, lq in layers.items()):
        calib = clock("calibrate", calibration)
    return clock("quantize", quantize_params, params, calib, model=model, config=config), config


# ------------------------------------------------------------------------------------------------ the run
@dataclasses.dataclass
class Parts:
    """A release's loaded parts: the transformer (``model``, ``params``, its folder's ``meta``, a
    mixed-precision ``plan`` of planned params), the VAE (``vae_arch``, ``vae``, ``vae_params``) and the
    text encoder (:class:`vidq_jax.text_encoder.TextEncoder`). ``describe``: what the record says of them."""

    model: Any
    params: Any
    meta: dict
    plan: Any
    vae_arch: str
    vae: Any
    vae_params: Any
    text: Any
    describe: dict = dataclasses.field(default_factory=dict)


def load_parts(release: Release, settings: Settings = Settings(), clock: _Clock | None = None) -> Parts:
    """Load and cross-check every part (nothing is computed yet: a bad part costs seconds)."""
    from models.families import family_of

    clock = clock or _Clock()
    dtype = settings.compute_dtype()
    model, params, meta, plan = clock("load_transformer", _load_transformer, release, dtype)
    fam = family_of(model)
    if fam.null_caption_of(model) not in TEXT_NULL_CAPTIONS:
        raise VidqError(f"transformer {release.transformer}: {fam.name} is not conditioned on text "
                        f"({fam.description}); vidq generate needs a text-to-image / text-to-video transformer")
    vae_arch, vae, vparams = clock("load_vae", _load_vae, release, fam.name)
    text = clock("load_text_encoder", _load_text, release, model, settings, dtype)
    return Parts(model, params, meta, plan, vae_arch, vae, vparams, text, release.describe())


def generate(release: Release, prompts: Sequence[str], settings: Settings = Settings()) -> dict[str, Any]:
    """Run the whole pipeline (module docstring); returns the record also written to ``out_dir/generate.json``."""
    _check_output(settings)
    clock = _Clock()
    t_start = time.perf_counter()
    parts = load_parts(release, settings, clock)
    return run_parts(parts, prompts, settings, clock, t_start)


def run_parts(parts: Parts, prompts: Sequence[str], settings: Settings = Settings(), clock: _Clock | None = None,
              t_start: float | None = None) -> dict[str, Any]:
    """Encode, (quantize,) sample, decode and write with loaded ``parts``; returns the record (also written to
    ``out_dir/generate.json``) with the time of every stage. Compiled functions are cached per model, so a
    second call with the same parts and shapes measures the warm pipeline."""
    from models.families import family_of
    from vidq_jax import pipeline

    prompts = list(prompts)
    _check_output(settings)
    clock = clock or _Clock()
    t_start = time.perf_counter() if t_start is None else t_start
    model, params, meta, plan = parts.model, parts.params, parts.meta, parts.plan
    fam = family_of(model)
    quantized = bool(meta.get("quantization"))
    preset = None if settings.preset in (None, "fp") else settings.preset
    if preset is not None and quantized:
        raise VidqError(f"--preset {preset}: the transformer is already quantized "
                        f"({meta['quantization'].get('preset') or 'custom'}); drop --preset")
    latent, frames = _latent_shape(model, parts.vae, settings, fam.video)
    height, width = latent[-3] * 8, latent[-2] * 8
    st, sampler_kw = _sampler(model, meta, settings)

    # text: the prompts and, unless the model has a learned one, the null caption of guidance
    policy = fam.null_caption_of(model)
    with_null = settings.negative_prompt is not None or policy != "learned"
    texts = prompts + [settings.negative_prompt or ""] * with_null
    y, mask = clock("encode_text", parts.text.encode, texts, lowercase=settings.lowercase)
    null = (y[len(prompts):], mask[len(prompts):]) if with_null else None
    y, mask = y[: len(prompts)], mask[: len(prompts)]
    cfg_on = st["guidance_scale"] != 1.0

    def conditions(rows: slice) -> tuple[dict, dict | None]:
        n = len(range(*rows.indices(len(prompts))))
        cond = {"y": y[rows], "mask": mask[rows], **_extras(model, n, height, width, settings.fps)}
        if not cfg_on or null is None:
            return cond, None
        return cond, {"y": jnp.broadcast_to(null[0], (n, *null[0].shape[1:])),
                      "mask": jnp.broadcast_to(null[1], (n, null[1].shape[1]))}

    config = None
    if preset is not None:
        def calibration() -> list:
            from vidq_jax.calibration import collect

            cond, unc = conditions(slice(0, min(settings.calib_prompts, len(prompts))))
            return list(collect(model, params, cond, latent_shape=latent, uncond=unc, prompt_batch=settings.batch_size,
                                every_k_steps=max(1, st["steps"] // CALIB_STEPS),
                                noise_key=jax.random.PRNGKey(settings.seed), **st, **sampler_kw))

        params, config = _quantize(model, params, preset, settings, clock, calibration)

    shard_kw = settings.sharding.kwargs if settings.sharding is not None else {}
    writer = settings.sharding.writer if settings.sharding is not None else True  # multi-host: process 0 writes
    if shard_kw:
        params = settings.sharding.place(params)

    # sample batch by batch (prompt i: noise of seed + i, whatever the batching)
    batches = [slice(i, min(i + settings.batch_size, len(prompts))) for i in range(0, len(prompts), settings.batch_size)]
    latents = []
    with _Progress(len(batches) * st["steps"], settings.progress) as progress:
        for bi, rows in enumerate(batches):
            progress.bar.set_description_str(f"sampling {bi + 1}/{len(batches)}")
            idx = range(*rows.indices(len(prompts)))
            noise = jnp.stack([jax.random.normal(jax.random.PRNGKey(settings.seed + i), latent, jnp.float32)
                               for i in idx])
            cond, unc = conditions(rows)
            kw = dict(plan=plan) if plan is not None else dict(apply_fn=_ticking_apply_fn(model))
            latents.append(clock("sample", pipeline.sample, model, params, noise, cond, unc,
                                 key=jax.random.PRNGKey(settings.seed + idx[0]), **st, **sampler_kw, **kw,
                                 **shard_kw))
            if shard_kw:
                latents[-1] = settings.sharding.host(latents[-1])
            if plan is not None:  # segment-planned params run their own apply function: no per-step ticks
                progress.bar.update(st["steps"])

    # decode and write one prompt at a time (bounded memory)
    decode = _decoder(parts.vae_arch, parts.vae, frames, settings.tile)
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "." + settings.video_format if fam.video else ".png"
    files = []
    for i, z in enumerate(jnp.concatenate(latents)):
        pixels = np.asarray(clock("decode", decode, parts.vae_params, z[None])[0])
        path = out_dir / f"{i:03d}_{_slug(prompts[i])}{suffix}"
        if writer:
            clock("write", _write, pixels, path, settings)
        files.append(path.name)

    record = {
        "release": parts.describe,
        "family": fam.name,
        "transformer": {"arch": meta.get("arch"),
                        "quantization": (meta.get("quantization") or {}).get("preset") if quantized else preset,
                        "plan": plan.name if plan is not None else None,
                        "config": None if config is None else config.to_dict()},
        "vae_arch": parts.vae_arch,
        "prompts": prompts,
        "seeds": [settings.seed + i for i in range(len(prompts))],
        "files": files,
        "settings": {
            **st, **{k: v for k, v in sampler_kw.items() if isinstance(v, (int, float, str, bool))},
            "size_keywords": pipeline.size_keywords(model, st["sampler"], (1, *latent), sampler_kw),
            "latent_shape": list(latent), "height": height, "width": width, "num_frames": frames,
            "fps": settings.fps if fam.video else None, "dtype": jnp.dtype(settings.compute_dtype()).name,
            "backend": settings.backend, "batch_size": settings.batch_size, "max_length": int(y.shape[1]),
            "null_caption": policy, "negative_prompt": settings.negative_prompt, "lowercase": settings.lowercase,
            "text_encoder_quant": settings.text_encoder_quant, "tile": settings.tile,
        },
        "timings_s": {**{k: round(v, 4) for k, v in clock.timings.items()},
                      "total": round(time.perf_counter() - t_start, 4)},
        "device": jax.devices()[0].device_kind, "jax": jax.__version__, "python": platform.python_version(),
    }
    if writer:
        (out_dir / RECORD).write_text(json.dumps(record, indent=2, default=_json_default))
    return record


def _load_text(release: Release, model, settings: Settings, dtype):
    """The text encoder at the transformer's caption length, checked against the transformer's width."""
    from vidq_jax.text_encoder import load_text_encoder

    max_length = settings.max_length or int(getattr(model.config, "model_max_length", 120))
    try:
        text = load_text_encoder(release.text_encoder, release.tokenizer, max_length=max_length, dtype=dtype,
                                 quantize=settings.text_encoder_quant)
    except VidqError:
        raise
    except (ValueError, OSError) as e:
        raise _part_error("text_encoder", release.text_encoder, e) from None
    width = int(getattr(model.config, "caption_channels", text.model.config.d_model))
    if text.model.config.d_model != width:
        raise VidqError(f"text_encoder {release.text_encoder}: gives {text.model.config.d_model}-d features, the "
                        f"transformer {release.transformer} expects caption_channels {width}")
    return text


def _sampler(model, meta: dict, settings: Settings) -> tuple[dict, dict]:
    """``(sampler / steps / guidance_scale, the sampler's other keywords)``: the release's (or the model
    folder's exported) settings with the flags applied. Keywords that depend on the sample size (STDiT3's
    pixel frame count for the rectified-flow shift) are derived by the family from the latent
    (:func:`vidq_jax.pipeline.size_keywords`): exact for every release clip length (multiples of 17)."""
    from vidq_jax import pipeline

    exported = pipeline.exported_sampler(meta)
    guidance = settings.guidance if settings.guidance is not None else exported.get("guidance_scale")
    st = pipeline.sampler_settings(model, sampler=settings.sampler or exported.get("sampler"),
                                   steps=settings.steps or exported.get("steps"), guidance_scale=guidance)
    return st, {k: v for k, v in exported.items() if k not in st}


def _json_default(o: Any):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def run(args) -> int:
    """The ``vidq generate`` verb (``args`` from :func:`vidq_jax.cli.build_parser`)."""
    from vidq_jax.sharding import cli as sharding_cli

    prompts = read_prompts(args.prompt, args.prompts)
    sharding = sharding_cli.from_args(args, rows=2)  # --devices / --mesh (rows: the CFG pair)
    release = find_release(args.release, transformer=args.transformer, arch=args.arch, vae=args.vae,
                           vae_arch=args.vae_arch, text_encoder=args.text_encoder, tokenizer=args.tokenizer)
    settings = Settings(
        out_dir=Path(args.out), preset=args.preset, backend=args.backend, calib_prompts=args.calib_prompts,
        text_encoder_quant=args.text_encoder_quant, max_length=args.max_length, negative_prompt=args.negative_prompt,
        lowercase=not args.keep_case, height=args.height, width=args.width, num_frames=args.num_frames,
        fps=args.fps, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed,
        batch_size=args.batch_size, dtype=args.dtype, video_format=args.video_format, tile=args.tile,
        progress=not args.no_progress, sharding=sharding)
    record = generate(release, prompts, settings)
    t = record["timings_s"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if k != "total")
    print(f"generated {len(prompts)} {'video' if record['settings']['num_frames'] else 'image'}(s) with "
          f"{record['family']} ({record['transformer']['quantization'] or 'float'}, {record['settings']['sampler']} "
          f"{record['settings']['steps']} steps) -> {settings.out_dir} [{stages}; total {t['total']:.1f} s]")
    return 0


__all__ = ["PARTS", "Parts", "Release", "Settings", "find_release", "generate", "load_parts", "read_prompts", "run",
           "run_parts"]
