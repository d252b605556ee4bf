"""The two trained demo models shipped with vidq-jax (issue 6): loading, prompts, sampling,
calibration, quantization and quality scoring — shared by ``vidq demo``, ``vidq sample`` and
``benchmarks/quality.py``.

| key | default folder | model | prompts (``assets/``) | feature net |
|---|---|---|---|---|
| ``t2i`` | ``assets/models/pixart-emoji-32`` | PixArt, 32×32×3 pixels | ``t2i_prompts`` (demo), ``t2i_eval`` (benchmark) | ``emoji`` |
| ``t2v`` | ``assets/models/stdit3-sprites-8x32`` | STDiT3, 8×32×32×3 clips | ``t2v_prompts`` | ``video`` |

Everything model-specific comes from the folder's ``model.json`` as the training export wrote it
(:mod:`vidq_jax.train`): the sampler settings (:func:`vidq_jax.pipeline.exported_sampler`), the
sample shape and value range, the constant extras (``fps``/``height``/``width``) and the task.
Any folder in that format works (``--t2i``/``--t2v``/``--model`` options), e.g. a tiny
``python -m vidq_jax.train t2i --tiny --encoder hash --out /tmp/t2i`` stand-in.

Weights are quantized from the shipped bf16 params (byte counts compare with the bf16 export); every
sampling run computes in float32 (bf16 leaves upcast once, exactly: :func:`upcast_bf16`), quantized
variants with int8 / int4 records in place of the block linears.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.data.text import ASSETS_DIR

MODELS_DIR = ASSETS_DIR / "models"
BUNDLED: dict[str, str] = {"t2i": "pixart-emoji-32", "t2v": "stdit3-sprites-8x32", "c2i": "dit-emoji-32"}
PROMPT_BANK: dict[str, str] = {"t2i": "t2i_prompts", "t2v": "t2v_prompts"}
FEATURE_NET: dict[str, str] = {"t2i": "emoji", "t2v": "video", "c2i": "emoji"}  # c2i: emoji categories
TASK_TITLE: dict[str, str] = {"t2i": "text-to-image", "t2v": "text-to-video", "c2i": "class-conditional image"}
CALIB_TIMESTEPS = 5  # calibration batches per float run: every (steps // 5)-th step

__all__ = ["BUNDLED", "MODELS_DIR", "DemoModel", "ModelMissing", "Prompts", "load_demo_model", "load_prompts",
           "TASK_TITLE", "model_folder", "spread", "upcast_bf16", "weight_bytes"]


class ModelMissing(FileNotFoundError):
    """A trained model folder is not where it was looked for (the message says how to get it)."""


def model_folder(spec: str | Path | None, task: str | None = None, models_dir: str | Path | None = None) -> Path:
    """The model folder of ``spec``: ``"t2i"`` / ``"t2v"`` (or ``None`` with ``task``) = the bundled
    model under ``models_dir`` (default ``assets/models``); anything else is a folder path.
    Raises :class:`ModelMissing` naming the path and how to get the model."""
    if spec is None:
        spec = task
    if spec in BUNDLED:
        task = str(spec)
        folder = Path(models_dir or MODELS_DIR) / BUNDLED[task]
    else:
        folder = Path(spec)
    if (folder / "model.json").exists():
        return folder
    tasks = [task] if task in BUNDLED else list(BUNDLED)
    how = "; ".join(
        f"`python -m vidq_jax.train {t} --out runs/{t}` (GPU, see vidq_jax/train/README.md) then copy "
        f"runs/{t}/model to {Path(models_dir or MODELS_DIR) / BUNDLED[t]}" for t in tasks
    )
    raise ModelMissing(
        f"{folder.resolve()}: no trained model here (model.json missing). The demo models ship in "
        f"{MODELS_DIR} ({', '.join(BUNDLED.values())}); to rebuild: {how}. Or point at another model "
        "folder written by vidq_jax.train (e.g. a CPU stand-in: `python -m vidq_jax.train t2i --tiny "
        "--encoder hash --out /tmp/t2i`, folder /tmp/t2i/model)."
    )


def spread(total: int, n: int) -> list[int]:
    """``n`` indices evenly spread over ``range(total)`` (first and last included)."""
    if not 1 <= n <= total:
        raise ValueError(f"{n} prompts requested from a bank of {total}")
    return sorted({int(round(i * (total - 1) / max(n - 1, 1))) for i in range(n)})


def upcast_bf16(params: Any) -> Any:
    """``params`` with every bfloat16 array leaf cast to float32 (exact); other leaves unchanged."""
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32) if getattr(x, "dtype", None) == jnp.bfloat16 else x,
                                  params)


def weight_bytes(params: Any) -> int:
    """Bytes of all weights (quantized records count their int payload and scales)."""
    from vidq_jax.checkpoint import params_nbytes

    return params_nbytes(params)


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Caption features of a prompt bank (rows selected), with class labels where the bank has them:
    ``labels`` (emoji category / animal), ``directions`` (video motion)."""

    texts: list[str]
    y: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    directions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int]) -> "Prompts":
        idx = np.asarray(idx, int)
        sel = lambda a: None if a is None else a[idx]  # noqa: E731
        return Prompts([self.texts[i] for i in idx], self.y[idx], self.mask[idx], sel(self.labels), sel(self.directions))


def load_prompts(bank: str) -> Prompts:
    """A shipped prompt bank (``assets/<bank>.npz``) with its labels: ``category`` (t2i_eval),
    ``animal`` + ``direction`` (t2v_prompts); the demo emoji names get their category from the
    emoji metadata when the data extra is installed."""
    from vidq_jax.data.text import load_prompt_bank

    texts, y, mask = load_prompt_bank(bank)
    path = Path(bank) if Path(bank).suffix else ASSETS_DIR / f"{bank}.npz"
    with np.load(path) as z:
        extra = {k: z[k].astype(np.int32) for k in ("category", "animal", "direction") if k in z.files}
    labels = extra.get("category", extra.get("animal"))
    if labels is None and Path(bank).stem == PROMPT_BANK["t2i"]:
        from vidq_jax.data.emoji import caption_category

        cats = [caption_category(t) for t in texts]
        labels = None if any(c is None for c in cats) else np.asarray(cats, np.int32)
    return Prompts(texts, y, mask, labels, extra.get("direction"))


@dataclasses.dataclass
class DemoModel:
    """A loaded model folder plus everything its ``model.json`` says about sampling it."""

    folder: Path
    model: Any
    params: Any
    meta: dict

    @functools.cached_property
    def compute_params(self) -> Any:
        """The float params as the float model computes with them (bf16 leaves upcast to float32)."""
        return upcast_bf16(self.params)

    # -- description --------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.meta.get("task") or ("t2v" if self.is_video else "c2i" if self.is_class_conditional else "t2i")

    @property
    def is_class_conditional(self) -> bool:
        """Conditioned on class labels (DiT: ``y`` = ``(B,)`` ints, the null class ``num_classes``), not captions."""
        from models.families import family_of

        return family_of(self.model).null_caption_of(self.model) == "null-class"

    @property
    def class_names(self) -> list[str]:
        """The class names of a class-conditional model (``model.json``'s ``classes``; else the indices)."""
        n = int(self.model.config.num_classes)
        names = [str(c) for c in self.meta.get("classes") or ()]
        return names if len(names) == n else [str(i) for i in range(n)]

    def class_labels(self, specs: Sequence[str]) -> np.ndarray:
        """``(B,)`` int32 labels of class names (case-insensitive) or indices ``0..num_classes-1``;
        :class:`~vidq_jax.errors.VidqError` naming the allowed values otherwise."""
        from vidq_jax.errors import VidqError

        names = self.class_names
        lookup = {n.lower(): i for i, n in enumerate(names)} | {str(i): i for i in range(len(names))}
        bad = [s for s in specs if str(s).strip().lower() not in lookup]
        if bad or not specs:
            shown = ", ".join(f"{i} {n!r}" if n != str(i) else n for i, n in enumerate(names[:12]))
            more = f" ... {len(names) - 1}" if len(names) > 12 else ""
            what = f"--class {bad[0]!r}: not a class of {self.name}" if bad else f"--class: {self.name} is class-conditional"
            raise VidqError(f"{what}; give a class name or index, repeat for several ({shown}{more})")
        return np.asarray([lookup[str(s).strip().lower()] for s in specs], np.int32)

    @property
    def trained_classes(self) -> list[int]:
        """Class labels the model saw in training (``train_record.data.per_class`` > 0; else all):
        the emoji DiT's "Other" holds no emoji."""
        per = (self.meta.get("train_record") or {}).get("data", {}).get("per_class")
        n = int(self.model.config.num_classes)
        return [i for i in range(n) if per[i] > 0] if per and len(per) == n and any(per) else list(range(n))

    def class_prompts(self, labels: Sequence[int]) -> Prompts:
        """Class labels as a :class:`Prompts` (texts = class names, ``y`` = ``labels = (B,)`` ints, a dummy
        mask), so class-conditional models go through the same code as the caption banks."""
        labels = np.asarray(labels, np.int32).reshape(-1)
        return Prompts([self.class_names[i] for i in labels], labels, np.ones((len(labels), 1), np.int32), labels)

    @property
    def name(self) -> str:
        return self.meta.get("arch") or self.folder.name

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if "sample_shape" in self.meta:
            return tuple(int(s) for s in self.meta["sample_shape"])
        return tuple(self.model.init_inputs()["x"].shape[1:])

    @property
    def is_video(self) -> bool:
        return len(self.sample_shape) == 4

    @property
    def value_range(self) -> tuple[float, float]:
        lo, hi = self.meta.get("value_range", (-1.0, 1.0))
        return float(lo), float(hi)

    @property
    def sampler(self) -> dict[str, Any]:
        """Keyword arguments of :func:`vidq_jax.pipeline.sample` (sampler, steps, CFG, schedule)."""
        from vidq_jax import pipeline

        kw = pipeline.exported_sampler(self.meta)
        st = pipeline.sampler_settings(self.model, sampler=kw.get("sampler"), steps=kw.get("steps"),
                                       guidance_scale=kw.get("guidance_scale"))
        return {**kw, **st}

    @property
    def steps(self) -> int:
        return int(self.sampler["steps"])

    @property
    def calib_every_k(self) -> int:
        """Calibration stride over the sampling steps (:data:`CALIB_TIMESTEPS` batches per run)."""
        return max(1, self.steps // CALIB_TIMESTEPS)

    @property
    def preview_fps(self) -> float:
        """GIF frame rate: half the clips' fps (8-frame clips loop in 2 s)."""
        return float((self.meta.get("extras") or {}).get("fps", 8.0)) / 2

    def with_settings(self, *, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                      sampler: str | None = None, steps: int | None = None,
                      guidance_scale: float | None = None) -> "DemoModel":
        """This model sampling another sample size (frames / height / width of the array it denoises) or
        with other sampler settings (``None``: keep); :class:`~vidq_jax.errors.VidqError` naming the
        option when a size does not apply (frames of an image model; a model whose config fixes it)."""
        import inspect

        from vidq_jax import pipeline
        from vidq_jax.errors import VidqError

        meta = dict(self.meta)
        sizes = {"num_frames": num_frames, "height": height, "width": width}
        if any(v is not None for v in sizes.values()):
            shape = list(self.sample_shape)
            dims = ("num_frames", "height", "width") if self.is_video else ("height", "width")
            accepted = inspect.signature(self.model.init_inputs).parameters
            for k, v in sizes.items():
                if v is None:
                    continue
                flag = "--" + k.replace("_", "-")
                if k not in dims:
                    raise VidqError(f"{flag}: {self.name} is an image model; {flag} applies to video models")
                if {"num_frames": "frames"}.get(k, k) not in accepted:
                    raise VidqError(f"{flag}: {self.name} ({type(self.model).__name__}) samples the one size its "
                                    f"config fixes, {tuple(shape[:-1])}")
                if int(v) < 1:
                    raise VidqError(f"{flag} {v}: must be >= 1")
                shape[dims.index(k)] = int(v)
            meta["sample_shape"] = shape
            if self.params is not None:  # the model's own size checks (e.g. multiples of the patch), traced only
                inputs = self.model.init_inputs(
                    batch=1, **{n: d for n, d in zip(("frames", "height", "width")[-len(dims):], shape) if n in accepted})
                try:
                    jax.eval_shape(lambda x: self.model.apply({"params": self.params}, **x), inputs)
                except ValueError as e:
                    given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sizes.items() if v is not None)
                    raise VidqError(f"{given}: {self.name} cannot sample {tuple(shape[:-1])}: {e}") from None
        if sampler is not None or steps is not None or guidance_scale is not None:
            current = dict(self.meta.get("sampler") or {})
            name = sampler or current.get("name") or current.get("sampler") or self.sampler["sampler"]
            current.pop("sampler", None)
            new = {**current, "name": name, "steps": steps or self.steps,
                   "guidance_scale": self.sampler["guidance_scale"] if guidance_scale is None else guidance_scale}
            pipeline.exported_sampler({"sampler": new})  # ValueError naming the samplers for an unknown name
            meta["sampler"] = new
        return dataclasses.replace(self, meta=meta)

    def describe_sampler(self) -> str:
        """``rflow 30 steps, CFG 4 (use_timestep_transform=False)``: the settings, those the family derives
        from the sample size included."""
        from vidq_jax import pipeline

        s = self.sampler
        s = {**s, **pipeline.size_keywords(self.model, s["sampler"], (1, *self.sample_shape), s)}
        extra = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("sampler", "steps", "guidance_scale"))
        return f"{s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}" + (f" ({extra})" if extra else "")

    def default_prompts(self) -> Prompts:
        """The demo prompt bank; class-conditional: every trained class once."""
        if self.is_class_conditional:
            return self.class_prompts(self.trained_classes)
        return load_prompts(PROMPT_BANK[self.task])

    def demo_prompts(self, n: int) -> Prompts:
        """``n`` demo prompts: the first ``n`` emoji names of ``t2i_prompts``; for video ``n`` captions
        spread over ``t2v_prompts`` (different animals and directions); class-conditional: ``n`` trained classes
        spread over them."""
        bank = self.default_prompts()
        if not 1 <= n <= len(bank):
            raise ValueError(f"{self.name}: {n} prompts requested, the demo bank has {len(bank)}")
        return bank.take(spread(len(bank), n) if self.is_video or self.is_class_conditional else range(n))

    # -- sampling -----------------------------------------------------------------------------
    def condition(self, y: Any, mask: Any = None) -> dict[str, jax.Array]:
        """Model keyword inputs of ``y (B, L, C)`` / ``mask (B, L)`` (class-conditional: ``y`` = ``(B,)``
        labels, no mask) plus the constant extras."""
        if self.is_class_conditional:
            y = jnp.asarray(y, jnp.int32)
            cond = {"y": y}
        else:
            y = jnp.asarray(y, jnp.float32)
            cond = {"y": y, "mask": jnp.asarray(mask, jnp.int32)}
        for k, v in (self.meta.get("extras") or {}).items():
            cond[k] = jnp.full((y.shape[0],), float(v), jnp.float32)
        return cond

    def noise(self, n: int, key: jax.Array) -> jax.Array:
        return jax.random.normal(key, (n, *self.sample_shape), jnp.float32)

    def sample(self, params: Any, noise: jax.Array, cond: dict, *, apply_fn=None, return_trajectory: bool = False,
               key: jax.Array | None = None, **mesh_kw: Any):
        """Sample with the exported settings (CFG against the learned null caption). bf16 leaves of
        ``params`` (the shipped weights, the float layers of a quantized tree) are upcast to float32
        first: the same values, and ~1.6x faster on a CPU than converting them in every call. ``key``:
        the noise of an ancestral sampler (IDDPM; default ``PRNGKey(0)``), unused by the others.
        ``mesh_kw``: ``mesh=`` / ``seq_strategy=`` / ``param_placement=`` of :func:`vidq_jax.pipeline.sample`
        (several devices)."""
        from vidq_jax import pipeline

        key = jax.random.PRNGKey(0) if key is None else key
        return pipeline.sample(self.model, upcast_bf16(params), noise, cond, apply_fn=apply_fn,
                               return_trajectory=return_trajectory, key=key, **self.sampler, **mesh_kw)

    def to_pixels(self, samples: Any) -> np.ndarray:
        """Samples as float32 numpy clipped to the value range (what the metrics and previews read)."""
        lo, hi = self.value_range
        return np.clip(np.asarray(samples, np.float32), lo, hi)

    # -- calibration / quantization -----------------------------------------------------------
    def _uncond(self, cond: dict) -> dict | None:
        from vidq_jax import pipeline

        return pipeline.null_condition(self.model, self.params, cond) if self.sampler["guidance_scale"] != 1.0 else None

    def trajectory_calibration(self, noise: jax.Array, trajectory: jax.Array, cond: dict, *,
                               every_k_steps: int | None = None) -> list:
        """Calibration batches (every :attr:`calib_every_k`-th step, or every ``every_k_steps``-th) of a
        float run that already happened: no second sampling run."""
        from vidq_jax.calibration import trajectory_batches

        kw = {k: v for k, v in self.sampler.items() if k not in ("steps", "guidance_scale")}
        return list(trajectory_batches(noise, trajectory, cond, self._uncond(cond),
                                       every_k_steps=every_k_steps or self.calib_every_k, model=self.model, **kw))

    def collect_calibration(self, cond: dict, *, key: jax.Array, prompt_batch: int | None = None) -> list:
        """Calibration batches (every :attr:`calib_every_k`-th step) along float trajectories of
        ``cond``'s prompts from fresh noise (:func:`vidq_jax.calibration.collect`)."""
        from vidq_jax.calibration import collect

        n = int(cond["y"].shape[0])
        return list(collect(self.model, self.compute_params, cond, every_k_steps=self.calib_every_k, noise_key=key,
                            latent_shape=self.sample_shape, prompt_batch=prompt_batch or n, **self.sampler))

    def quant_config(self, preset: str, backend: str = "xla"):
        """The preset's :class:`~vidq_jax.quant.QuantConfig` for THIS model's layers (block-specific
        rules such as ``viditq-w4a8-mp``'s first/last block name this model's blocks)."""
        from vidq_jax.quant import QuantConfig, dense_paths

        return QuantConfig.preset(preset, backend=None if preset == "fp" else backend, model=self.model,
                                  paths=dense_paths(self.params))

    def quantize(self, preset: str, calib: Sequence[Any], *, backend: str = "xla", stats: Any = None) -> Any:
        """Quantized params of ``preset`` (``"fp"``: the float params). ``stats``: reuse the
        calibration statistics of :func:`vidq_jax.quant.collect_stats` over ``calib``."""
        from vidq_jax.quant import quantize_params

        cfg = self.quant_config(preset, backend)
        if cfg.default is None and not cfg.rules:
            return self.params
        return quantize_params(self.params, calib, model=self.model, config=cfg, stats=stats)

    def average_weight_bits(self, preset: str) -> float | None:
        """Element-weighted mean weight bits over the layers ``preset`` quantizes (``None``: float)."""
        from vidq_jax.quant.plan import MixedPrecisionPlan

        cfg = self.quant_config(preset)
        if cfg.default is None and not cfg.rules:
            return None
        return MixedPrecisionPlan("all-steps", 1, (0,), ()).average_bits(self.params, cfg)

    # -- quality --------------------------------------------------------------------------------
    def reference(self):
        """``(feature extractor, real-data (mu, cov))`` of the task's shipped feature network."""
        from vidq_jax.eval.quality import load_reference

        return load_reference(FEATURE_NET[self.task])


def load_demo_model(spec: str | Path | None = None, task: str | None = None,
                    models_dir: str | Path | None = None) -> DemoModel:
    """Load a bundled model (``"t2i"`` / ``"t2v"``) or a model folder (see :func:`model_folder`)."""
    from vidq_jax.checkpoint import load_model

    folder = model_folder(spec, task, models_dir)
    model, params, meta = load_model(folder)
    dm = DemoModel(folder, model, params, meta)
    if task is not None and dm.task != task:
        raise ValueError(f"{folder}: a {dm.task} model ({meta.get('arch')}), expected {task}")
    return dm
