"""The ``vidq`` command line.

    vidq [--debug] convert --arch pixart-alpha CKPT OUT_DIR [--config JSON] [--dtype bf16] [--overwrite]
    vidq demo [--out outputs/demo] [--t2i FOLDER] [--t2v FOLDER] [--c2i FOLDER] [--only t2i|t2v|c2i]
    vidq sample --prompt "a cat moving left" [--model t2i|t2v|FOLDER] [--preset viditq-w8a8] [--out FILE]
    vidq sample --class NAME|INDEX --model FOLDER [...]             (class-conditional models: DiT)
                [--num-frames N] [--height H] [--width W] [--steps N] [--guidance G] [--sampler NAME]
    vidq quantize MODEL_DIR OUT_DIR --preset viditq-w8a8 [--calib-prompts N] [--backend xla] [--cond NPZ]
                  [--plan JSON] [--num-frames N] [--height H] [--width W] [--steps N] [--guidance G] [--overwrite]
    vidq search-groups MODEL_DIR --out PLAN.json [--preset qdit-w4a8] [--population 50] [--generations 10]
                  [--top-k 10] [--samples 32] [--seed 0] [--resume]
    vidq generate [RELEASE] --prompt TEXT [--prompts FILE] [--out DIR] [--transformer PATH --arch ARCH] [--vae PATH]
                  [--text-encoder PATH] [--tokenizer PATH] [--preset NAME] [--text-encoder-quant w8-only] [--seed S]
                  [--height H] [--width W] [--num-frames N] [--steps N] [--guidance G] [--batch-size N]
    vidq distill MODEL_DIR --preset qvdit-w4a6 --out OUT_DIR [--steps 1000] [--lr 1e-5] [--resume] [--time-limit S]

Each verb is a function ``cmd_<verb>(args) -> int`` registered in :func:`build_parser`. Errors are
handled once, in :func:`main`: a user error (a bad argument, file or value: the project's own exception
types, a ``ValueError`` raised by the project's checks, an ``OSError`` naming a file) is ONE line on
stderr and exit status 2; anything else is a bug, reported as one line asking for ``--debug`` (or
``VIDQ_DEBUG=1``), which prints the traceback, and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from vidq_jax.errors import VidqError

BACKENDS = ["auto", "simulate", "xla", "pallas"]
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16"}
# top-level packages whose own checks raise ValueError with a message meant for the user
_PROJECT_PACKAGES = ("vidq_jax", "conversion", "models", "pallas_kernels", "benchmarks")


# ---------------------------------------------------------------------------------------------- argument types
def _int_in(lo: int, hi: int | None = None):
    """argparse type: an integer in ``[lo, hi]``."""
    allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {allowed}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {value}")
        return value

    return parse


def _finite_float(lo: float):
    """argparse type: a finite float ``>= lo``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < lo:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {lo:g}, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------------------------------------- input checks
def _writable_folder(path: str | Path, what: str) -> None:
    """``path`` (a folder, existing or to be created) can be written: its nearest existing ancestor is a
    writable folder. Checked before any work, so a bad output never costs a calibration run."""
    p = Path(path).absolute()
    for anc in (p, *p.parents):
        if anc.exists():
            if not anc.is_dir():
                raise VidqError(f"{what} {path}: {anc} is a file, not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise VidqError(f"{what} {path}: {anc} is not writable")
            return


def _writable_file(path: str | Path, what: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise VidqError(f"{what} {path}: is a folder; give a file name")
    _writable_folder(p.absolute().parent, what)


def _read_text(text: str, what: str) -> tuple[str, str]:
    """``(text, where)`` of an option holding inline JSON or a file name."""
    if text.lstrip().startswith(("{", "[")):
        return text, f"{what} (inline JSON)"
    try:
        return Path(text).read_text(), f"{what} {text}"
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not a text file"
        raise VidqError(f"{what} {text}: cannot read it ({reason}); give a JSON file or inline JSON") from None


def _json_object(text: str, what: str) -> tuple[dict, str]:
    body, where = _read_text(text, what)
    try:
        value = json.loads(body)
    except ValueError as e:
        raise VidqError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise VidqError(f"{where}: expected a JSON object {{...}}, got {type(value).__name__}")
    return value, where


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------------------------------- verbs
def cmd_convert(args) -> int:
    from conversion import load_checkpoint
    from vidq_jax.checkpoint import check_output, save_model

    if not Path(args.checkpoint).exists():
        raise VidqError(f"CHECKPOINT {args.checkpoint}: no such file or folder")
    check_output(args.out_dir, overwrite=args.overwrite, source=args.checkpoint)
    _writable_folder(args.out_dir, "OUT_DIR")
    config = _json_object(args.config, "--config")[0] if args.config else None
    dtype = None
    if args.dtype:
        import jax.numpy as jnp

        dtype = getattr(jnp, DTYPES[args.dtype])
    t0 = time.perf_counter()
    model, params = load_checkpoint(args.checkpoint, args.arch, config, dtype=dtype)
    out = save_model(args.out_dir, model, params, arch=args.arch, extra={"source": str(args.checkpoint)},
                     overwrite=args.overwrite)
    meta = json.loads((out / "model.json").read_text())
    print(
        f"converted {args.checkpoint} ({args.arch}, {type(model).__name__}) -> {out} "
        f"[{_human_bytes(meta['param_bytes'])}, {time.perf_counter() - t0:.1f} s]"
    )
    return 0


def cmd_demo(args) -> int:
    from vidq_jax.demo import run_demo

    _writable_folder(args.out, "--out")
    counts = {k: v for k, v in (("t2i", args.images), ("t2v", args.videos), ("c2i", args.classes)) if v is not None}
    run_demo(Path(args.out), t2i=args.t2i, t2v=args.t2v, c2i=args.c2i, models_dir=args.models_dir,
             tasks=[args.only] if args.only else ("t2i", "t2v", "c2i"), counts=counts, backend=args.backend,
             progress=not args.no_progress)
    return 0


def _slug(text: str, limit: int = 40) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "sample"


def _with_sampling_options(dm, args):
    """The model with the sampling options of ``args`` applied (sizes, sampler, steps, guidance)."""
    return dm.with_settings(num_frames=args.num_frames, height=args.height, width=args.width,
                            sampler=args.sampler, steps=args.steps, guidance_scale=args.guidance)


def cmd_sample(args) -> int:
    """Generate from typed prompts (MiniLM caption features: the text extra) with a bundled model."""
    import jax

    from vidq_jax.bundled import load_demo_model
    from vidq_jax.data.text import encode_prompts
    from vidq_jax.preview import save_sample_grid
    from vidq_jax.sharding import cli as sharding_cli

    t0 = time.perf_counter()
    mo = sharding_cli.from_args(args, rows=2)  # --devices/--mesh (first: --distributed initialises JAX)
    dm = _with_sampling_options(load_demo_model(args.model, models_dir=args.models_dir), args)
    dm.params = mo.place(dm.params)
    labels = _class_labels(dm, args)
    texts = args.prompt if labels is None else [dm.class_names[i] for i in labels]
    suffix = ".gif" if dm.is_video else ".png"
    out = Path(args.out) if args.out else Path("outputs/sample") / f"{_slug(texts[0])}_{args.preset}{suffix}"
    if out.suffix.lower() != suffix:
        raise VidqError(f"--out {out}: {dm.name} makes {'videos' if dm.is_video else 'images'}; the file name must "
                        f"end in {suffix}")
    _writable_file(out, "--out")
    if labels is not None:
        cond = dm.condition(labels)
    else:
        if any(not p.strip() for p in args.prompt):
            raise VidqError("--prompt: a prompt is empty; give some text")
        y, mask = encode_prompts(args.prompt)
        cfg = dm.model.config
        if y.shape[1:] != (cfg.model_max_length, cfg.caption_channels):
            raise VidqError(f"--model {args.model}: the text encoder gives {y.shape[1:]} caption features, {dm.name} "
                            f"expects ({cfg.model_max_length}, {cfg.caption_channels})")
        cond = dm.condition(y, mask)
    noise = dm.noise(len(texts), jax.random.PRNGKey(args.seed))
    params = dm.params
    if args.preset != "fp":  # calibrate on the float run of these prompts, then quantize
        _, traj = dm.sample(dm.params, noise, cond, return_trajectory=True, **mo.kwargs)
        with mo.activated():
            params = dm.quantize(args.preset, dm.trajectory_calibration(noise, traj, cond), backend=args.backend)
    x = dm.to_pixels(mo.host(dm.sample(params, noise, cond, **mo.kwargs)))
    if not mo.writer:
        return 0
    save_sample_grid({f"{dm.name} {args.preset}": x}, texts, out, value_range=dm.value_range, scale=args.scale,
                     fps=dm.preview_fps)
    print(f"sampled {len(texts)} {'class(es)' if labels is not None else 'prompt(s)'} with {dm.name} ({args.preset}, {dm.describe_sampler()}{mo.describe()}) -> {out} "
          f"[{time.perf_counter() - t0:.1f} s]")
    return 0


def _class_labels(dm, args):
    """The ``--class`` labels of a class-conditional model (DiT), ``None`` for a text-conditional one;
    a one-line error when the other option (or neither) is given."""
    if not dm.is_class_conditional:
        if args.classes:
            raise VidqError(f"--class: {dm.name} is conditioned on text; give --prompt TEXT instead")
        if not args.prompt:
            raise VidqError("--prompt: give the prompt to sample (repeat for several)")
        return None
    if args.prompt:
        raise VidqError(f"--prompt: {dm.name} is conditioned on class labels; give --class NAME|INDEX instead")
    return dm.class_labels(args.classes or [])


def _read_npz(path: str) -> dict:
    import zipfile

    import numpy as np

    if not Path(path).is_file():
        raise VidqError(f"--cond {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise VidqError(f"--cond {path}: not an .npz archive (numpy.savez) of named arrays (y, mask, ...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VidqError(f"--cond {path}: not a readable .npz archive ({' '.join(str(e).split())})") from None


def _npz_cond(path: str, ref: dict) -> dict:
    """The model inputs of a ``--cond`` archive, checked against ``ref`` (the model's inputs of one prompt):
    ``y (P, L, C)``, optional ``mask (P, L)``, ``uncond_y`` (``(P, L, C)`` or ``(L, C)``) and extras."""
    import numpy as np

    data = _read_npz(path)
    where = f"--cond {path}"
    if ref["y"].ndim == 1:  # class labels (class-conditional models: DiT); their range is checked by sampling
        y = data.get("y")
        if set(data) != {"y"} or y.ndim != 1 or not y.size or not np.issubdtype(y.dtype, np.integer):
            held = ", ".join(f"'{k}' {v.dtype} {tuple(v.shape)}" for k, v in data.items()) or "nothing"
            raise VidqError(f"{where}: a class-conditional model takes one array 'y' of (P,) integer class labels; "
                            f"it holds {held}")
        return {"y": y.astype(np.int32)}
    L, C = ref["y"].shape[1:]
    if "y" not in data:
        raise VidqError(f"{where}: no array 'y' (caption features (P, {L}, {C})); it holds {sorted(data) or 'nothing'}")
    y = data["y"]
    if y.ndim == 4 and y.shape[1] == 1:  # the original models' (P, 1, L, C)
        y = y[:, 0]
    if y.ndim != 3 or y.shape[1:] != (L, C) or y.shape[0] == 0:
        raise VidqError(f"{where}: 'y' has shape {tuple(data['y'].shape)}; the model expects (P, {L}, {C}), P >= 1")
    p = y.shape[0]
    expected = {"y": (p, L, C), "mask": (p, L), "uncond_y": (p, L, C)}
    expected.update({k: (p, *np.shape(v)[1:]) for k, v in ref.items() if k not in ("x", "timestep", "y", "mask")})
    unknown = sorted(set(data) - set(expected))
    if unknown:
        raise VidqError(f"{where}: unknown array(s) {unknown}; allowed: {sorted(expected)}")
    out = {"y": y}
    for k, v in data.items():
        if k == "y":
            continue
        if k == "uncond_y" and v.shape == (L, C):
            v = np.broadcast_to(v, (p, L, C))
        if v.shape != expected[k]:
            raise VidqError(f"{where}: '{k}' has shape {tuple(v.shape)}, expected {expected[k]} (P = {p} prompts)")
        out[k] = v
    for k, v in out.items():
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise VidqError(f"{where}: '{k}' holds {v.dtype} values, expected numbers")
        if not np.all(np.isfinite(v)):
            raise VidqError(f"{where}: '{k}' holds NaN or infinite values")
    if "mask" in out and not np.isin(out["mask"], (0, 1)).all():
        raise VidqError(f"{where}: 'mask' must hold 0/1 (1 = valid token)")
    if "mask" in out and not out["mask"].any(axis=1).all():
        raise VidqError(f"{where}: 'mask' has a prompt without any valid token")
    return out


def _calibration_cond(dm, path: str | None, n: int | None) -> tuple[dict, dict | None, str, int]:
    """Calibration conditioning ``(cond, uncond, description, prompts)``: an ``.npz`` (``y``, ``mask``,
    extras; optional ``uncond_y``) or ``n`` random stand-in caption features, the extras the model needs
    (its own defaults for the sample size; the folder's ``extras``) filled in."""
    import inspect

    import numpy as np

    from models.families import family_of
    from vidq_jax.calibration import random_conditioning

    names = ("frames", "height", "width") if dm.is_video else ("height", "width")
    accepted = inspect.signature(dm.model.init_inputs).parameters
    sizes = {k: v for k, v in zip(names, dm.sample_shape) if k in accepted}
    given = None if path is None else _npz_cond(path, dm.model.init_inputs(batch=1, **sizes))
    available = None if given is None else len(given["y"])
    if n is None:
        n = available or 4
    elif available is not None and n > available:
        raise VidqError(f"--calib-prompts {n}: --cond {path} holds {available} prompt(s)")
    cond = random_conditioning(dm.model, available or n, **sizes)
    cond.update({k: v for k, v in dm.condition(cond["y"], cond.get("mask")).items() if k not in ("y", "mask")})
    if given is None and dm.is_class_conditional:
        source = f"{n} random class labels (pass --cond NPZ with y = (P,) labels to choose them)"
    elif given is None:
        source = f"{n} random caption embeddings (pass --cond NPZ for real text-encoder features)"
    else:
        cond.update(given)
        source = str(path)
    uncond = None
    if "uncond_y" in cond:
        uncond = {"y": cond.pop("uncond_y")}
    elif family_of(dm.model).null_caption_of(dm.model) == "empty-prompt":
        uncond = {"y": np.zeros_like(np.asarray(cond["y"]))}
        source += "; null caption = zeros (give uncond_y = T5('') features in the npz)"
    return cond, uncond, source, n


def _plan(text: str, steps: int):
    from vidq_jax.quant.plan import MixedPrecisionPlan

    if text == "opensora1-w4a8":
        try:
            return MixedPrecisionPlan.opensora_v1_w4a8(num_steps=steps)
        except ValueError as e:
            raise VidqError(f"--plan opensora1-w4a8 with {steps} sampling steps (--steps): {e}") from None
    d, where = _json_object(text, "--plan")
    try:
        return MixedPrecisionPlan.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing key {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
        raise VidqError(f"{where}: not a mixed-precision plan ({detail}); see MixedPrecisionPlan.to_json()") from None


def cmd_quantize(args) -> int:
    import warnings

    from vidq_jax.bundled import DemoModel
    from vidq_jax.calibration import collect
    from vidq_jax.checkpoint import check_output, disk_bytes, load_model, params_nbytes, save_quantized
    from vidq_jax.quant import QuantConfig, quantization_summary, quantize_params
    from vidq_jax.sharding import cli as sharding_cli

    t0 = time.perf_counter()
    mo = sharding_cli.from_args(args, rows=2)  # --devices/--mesh (first: --distributed initialises JAX)
    check_output(args.out_dir, overwrite=args.overwrite, source=args.model_dir)
    _writable_folder(args.out_dir, "OUT_DIR")
    if not (Path(args.model_dir) / "model.json").is_file():
        raise VidqError(f"MODEL_DIR {args.model_dir}: not a model folder (no model.json); convert a checkpoint "
                        "with `vidq convert` first")
    model, params, meta = load_model(args.model_dir)
    if meta.get("quantization"):
        raise VidqError(f"MODEL_DIR {args.model_dir}: already quantized; give a float model folder")
    params = mo.place(params)
    dm = _with_sampling_options(DemoModel(Path(args.model_dir), model, params, meta), args)
    sized = "sample_shape" in meta or any(v is not None for v in (args.num_frames, args.height, args.width))
    config = QuantConfig.preset(args.preset, backend=None if args.preset == "fp" else args.backend)
    plan = _plan(args.plan, dm.steps) if args.plan else None
    cond, uncond, source, n = _calibration_cond(dm, args.cond, args.calib_prompts)
    calib = list(collect(model, params, cond, num_prompts=n, every_k_steps=args.every_k, latent_shape=dm.sample_shape,
                         uncond=uncond, **dm.sampler, **mo.kwargs))
    with warnings.catch_warnings(record=True) as caught, mo.activated():
        warnings.simplefilter("always")
        qparams = quantize_params(params, calib, model=model, config=config, plan=plan)
    for w in caught:
        print(f"vidq quantize: warning: {w.message}", file=sys.stderr)
    if not mo.writer:
        return 0
    out = save_quantized(args.out_dir, model, mo.host(qparams), arch=meta["arch"], config=config, plan=plan, preset=args.preset,
                         extra={"source": str(Path(args.model_dir).resolve()), "calibration": source},
                         overwrite=args.overwrite)
    summary = quantization_summary(qparams)
    nq = sum(v != "float" for v in summary.values())
    fb, qb = disk_bytes(Path(args.model_dir) / "params"), disk_bytes(out / "params")
    print(
        f"quantized {args.model_dir} with {args.preset}{' + ' + plan.name if plan else ''} ({nq}/{len(summary)} Dense "
        f"layers, {len(calib)} calibration batches of {dm.describe_sampler()} runs on {_shape(dm.sample_shape)} "
        f"samples{'' if sized else ' (the model default; --num-frames/--height/--width set the size)'}) -> {out}\n"
        f"  params {_human_bytes(params_nbytes(qparams))} (float {_human_bytes(params_nbytes(params))}); on disk "
        f"{_human_bytes(qb)} (float {_human_bytes(fb)}, {fb / max(qb, 1):.2f}x smaller) [{time.perf_counter() - t0:.1f} s]"
    )
    return 0


def cmd_search_groups(args) -> int:
    """Q-DiT's evolutionary group-size search (body: :mod:`vidq_jax.search_groups`)."""
    from vidq_jax.search_groups import run

    return run(args)


def cmd_generate(args) -> int:
    """Prompts -> images / videos from a release's own parts (body: :mod:`vidq_jax.generate`)."""
    from vidq_jax.generate import run

    return run(args)


def cmd_distill(args) -> int:
    """Q-VDiT distillation into a quantized folder (body: :mod:`vidq_jax.qvdit`)."""
    from vidq_jax.qvdit import run

    return run(args, _calibration_cond)


def cmd_bench(args) -> int:
    """Run the GPU benchmarks of ``benchmarks/`` (repository checkout) and print their tables."""
    import runpy

    repo = Path(__file__).resolve().parent.parent
    bench_dir = repo / "benchmarks"
    if not bench_dir.is_dir():
        raise VidqError(f"{bench_dir} not found: `vidq bench` runs from a repository checkout")
    _writable_folder(args.out, "--out")
    if str(repo) not in sys.path:  # the benchmarks package lives at the checkout's root
        sys.path.insert(0, str(repo))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    linear = ["--json", str(out / "linear.json"), "--md", str(out / "linear.md")]
    e2e = ["--out", str(out / "e2e.json")] + (["--tiny"] if args.tiny else [])
    for module, argv in (("benchmarks.bench_linear", linear), ("benchmarks.bench_e2e", e2e)):
        if args.only and args.only not in module:
            continue
        print(f"== python -m {module}", flush=True)
        sys.argv = [module, *argv]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            if e.code not in (0, None):
                return int(e.code) if isinstance(e.code, int) else 1
    return 0


# ---------------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``vidq quantize: argument --steps: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _sampling_options(p: argparse.ArgumentParser, what: str) -> None:
    from vidq_jax.sampling import SAMPLERS

    size = "the sampled array (latent units for a converted checkpoint, pixels for the bundled models)"
    p.add_argument("--num-frames", type=_int_in(1, 4096), help=f"frames of {size}; video models (default: the model's)")
    p.add_argument("--height", type=_int_in(1, 4096), help=f"height of {size} (default: the model's)")
    p.add_argument("--width", type=_int_in(1, 4096), help=f"width of {size} (default: the model's)")
    p.add_argument("--steps", type=_int_in(1, 1000), help=f"sampling steps of the {what} (default: the model's)")
    p.add_argument("--guidance", type=_finite_float(0.0), help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="sampler (default: the model's release sampler)")


def _sharding_options(p: argparse.ArgumentParser) -> None:
    from vidq_jax.sharding import cli as sharding_cli

    sharding_cli.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    from conversion import ARCHS
    from models.families import ARCHS as DENOISER_ARCHS
    from models.families import COMPONENT_ARCHS
    from vidq_jax.quant.config import PRESETS

    autoencoder_archs = [a for a, c in COMPONENT_ARCHS.items() if c.role == "autoencoder"]

    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of an error (also: VIDQ_DEBUG=1)")
    p = _Parser(prog="vidq", description="ViDiT-Q quantization of diffusion transformers in JAX")
    p.add_argument("--version", action="version", version=f"vidq {_version()}")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (also: VIDQ_DEBUG=1)")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("convert", parents=[debug], help="PyTorch checkpoint -> orbax params + model.json")
    c.add_argument("--arch", required=True, choices=ARCHS)
    c.add_argument("checkpoint", help=".pth / .safetensors file, or a diffusers / Hugging Face folder")
    c.add_argument("out_dir")
    c.add_argument("--config", help="JSON (inline or a file) completing/overriding the model config")
    c.add_argument("--dtype", choices=list(DTYPES), help="cast params (default: as stored)")
    c.add_argument("--overwrite", action="store_true", help="replace the model in OUT_DIR (its other files stay)")
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", parents=[debug], help="GPU benchmarks: fused linear and one denoising step vs XLA bf16")
    b.add_argument("--only", choices=["linear", "e2e"], help="run one of the two")
    b.add_argument("--tiny", action="store_true", help="toy sizes for the step benchmark (CPU smoke run)")
    b.add_argument("--out", default="outputs/bench", help="where the JSON/markdown tables go (default outputs/bench)")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", parents=[debug],
                       help="quantize the bundled trained models and compare with FP (writes outputs/demo/)")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--t2i", help="text-to-image model folder (default: assets/models/pixart-emoji-32)")
    d.add_argument("--t2v", help="text-to-video model folder (default: assets/models/stdit3-sprites-8x32)")
    d.add_argument("--c2i", help="class-conditional model folder (default: assets/models/dit-emoji-32)")
    d.add_argument("--models-dir", help="folder holding the bundled models (default: assets/models)")
    d.add_argument("--only", choices=["t2i", "t2v", "c2i"], help="run one of the three models")
    d.add_argument("--images", type=_int_in(1), help="image prompts (default 4)")
    d.add_argument("--videos", type=_int_in(1), help="video prompts (default 2)")
    d.add_argument("--classes", type=_int_in(1), help="class labels of the class-conditional model (default 3)")
    d.add_argument("--backend", default="auto", choices=BACKENDS)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sample", parents=[debug],
                       help="generate from typed prompts (needs the text extra) or class labels with a bundled model")
    s.add_argument("--prompt", action="append", help="the prompt (repeat for several)")
    s.add_argument("--class", dest="classes", action="append", metavar="NAME|INDEX",
                   help="a class of a class-conditional model such as DiT, instead of --prompt (repeat for several)")
    s.add_argument("--model", default="t2i", help="t2i | t2v | a model folder (default t2i)")
    s.add_argument("--models-dir", help="folder holding the bundled models (default: assets/models)")
    s.add_argument("--preset", default="fp", choices=list(PRESETS),
                   help="fp, or a quantization preset (calibrated on the prompts' own float run)")
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0)
    s.add_argument("--scale", type=_int_in(1, 64), default=8,
                   help="nearest-neighbour upscaling of the output, 1..64 (default 8)")
    s.add_argument("--out", help="output .png (images) / .gif (videos); default outputs/sample/<prompt>_<preset>.*")
    _sampling_options(s, "run")
    _sharding_options(s)
    s.set_defaults(func=cmd_sample)

    q = sub.add_parser("quantize", parents=[debug],
                       help="calibrate + quantize a converted model folder (orbax, int8 on disk)")
    q.add_argument("model_dir", help="a float vidq-jax model folder (vidq convert output)")
    q.add_argument("out_dir")
    q.add_argument("--preset", default="viditq-w8a8", choices=list(PRESETS))
    q.add_argument("--backend", default="auto", choices=BACKENDS)
    q.add_argument("--calib-prompts", type=_int_in(1, 4096),
                   help="prompts sampled for calibration (default: all of --cond, else 4)")
    q.add_argument("--every-k", type=_int_in(1), default=2, help="record every k-th sampling step (default 2)")
    q.add_argument("--cond", help=".npz with y (P, L, C), mask, extras (optional uncond_y), or y (P,) class labels of a "
                   "class-conditional model; default random")
    q.add_argument("--plan", help="timestep-segment mixed-precision plan: JSON (inline/file) or 'opensora1-w4a8'")
    q.add_argument("--overwrite", action="store_true", help="replace the model in OUT_DIR (its other files stay)")
    _sampling_options(q, "calibration runs")
    _sharding_options(q)
    q.set_defaults(func=cmd_quantize)

    g = sub.add_parser("search-groups", parents=[debug],
                       help="Q-DiT evolutionary search of one group size per layer (writes a plan for quantize --plan)")
    g.add_argument("model_dir", help="t2i | t2v (bundled) or a float model folder with a feature network (vidq_jax.train)")
    g.add_argument("--out", required=True, help="the plan (.json); PLAN.state.json / PLAN.log.json go next to it")
    g.add_argument("--preset", default="qdit-w4a8", choices=[p for p in PRESETS if p != "fp"])
    g.add_argument("--population", type=_int_in(1), default=50)
    g.add_argument("--generations", type=_int_in(1), default=10)
    g.add_argument("--top-k", type=_int_in(1), default=10)
    g.add_argument("--min-mean-group", type=_finite_float(1.0), default=128.0,
                   help="constraint: mean group size over the searched layers (default 128)")
    g.add_argument("--max-bitops", type=_finite_float(0.01), help="constraint instead of --min-mean-group: BitOps "
                   "(MACs x bits + group-scale arithmetic) at most this multiple of the all-128 genome's, e.g. 1.0")
    g.add_argument("--samples", type=_int_in(2), default=32, help="samples per candidate for the FD (default 32)")
    g.add_argument("--batch", type=_int_in(1), default=32, help="samples per sampler call (default 32)")
    g.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0)
    g.add_argument("--reference", help="feature-network folder with real_stats.npz (default: the task's shipped one)")
    g.add_argument("--resume", action="store_true", help="continue the search of PLAN.state.json")
    g.add_argument("--overwrite", action="store_true", help="start over, replacing an earlier search's files")
    g.add_argument("--backend", default="auto", choices=BACKENDS)
    g.add_argument("--models-dir", help="folder holding the bundled models (default: assets/models)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _sampling_options(g, "search's sampling runs")
    g.set_defaults(func=cmd_search_groups)

    gen = sub.add_parser("generate", parents=[debug],
                         help="prompts -> PNG / GIF / MP4 from a release folder (transformer, vae, text_encoder, tokenizer)")
    gen.add_argument("release", nargs="?", help="a release in the diffusers layout (transformer/ vae/ text_encoder/ "
                     "tokenizer/); the flags below name parts elsewhere (Open-Sora) or override them")
    gen.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    gen.add_argument("--prompts", help="a text file of prompts, one per line ('#' comments)")
    gen.add_argument("--out", default="outputs/generate", help="output folder (default outputs/generate)")
    gen.add_argument("--transformer", help="transformer checkpoint (file/folder) or a vidq model folder (float or "
                     "quantized)")
    _sharding_options(gen)
    gen.add_argument("--arch", choices=list(DENOISER_ARCHS), help="arch of --transformer (default: pixart-diffusers for a diffusers "
                     "transformer/ folder)")
    gen.add_argument("--vae", help="VAE folder (default RELEASE/vae)")
    gen.add_argument("--vae-arch", choices=autoencoder_archs, help="default: opensora-vae-v1.2 for STDiT3, else sd-vae")
    gen.add_argument("--text-encoder", help="T5 encoder folder (default RELEASE/text_encoder)")
    gen.add_argument("--tokenizer", help="tokenizer folder or file (default RELEASE/tokenizer)")
    gen.add_argument("--preset", choices=list(PRESETS), help="quantize the transformer (calibrated on the prompts' "
                     "float runs when the preset needs statistics)")
    gen.add_argument("--backend", default="auto", choices=BACKENDS)
    gen.add_argument("--calib-prompts", type=_int_in(1, 4096), default=2, help="prompts of the calibration runs")
    gen.add_argument("--text-encoder-quant", choices=["w8-only"], help="int8 weight-only T5 encoder (XXL: ~4.9 GB)")
    gen.add_argument("--max-length", type=_int_in(1, 4096), help="caption tokens (default: the transformer's, "
                     "120 PixArt-α / Open-Sora 1.0, 300 PixArt-Σ / Open-Sora 1.2)")
    gen.add_argument("--negative-prompt", help="the guidance's null prompt (default: the family's null caption)")
    gen.add_argument("--keep-case", action="store_true", help="do not lower-case prompts (diffusers does)")
    gen.add_argument("--height", type=_int_in(8, 8192), help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--width", type=_int_in(8, 8192), help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--num-frames", type=_int_in(1, 4096), help="video frames (default: the model's)")
    gen.add_argument("--fps", type=_finite_float(1.0), default=24.0, help="video frame rate (condition and file)")
    gen.add_argument("--steps", type=_int_in(1, 1000), help="sampling steps (default: the release's)")
    gen.add_argument("--guidance", type=_finite_float(0.0), help="classifier-free guidance scale (default: the release's)")
    gen.add_argument("--sampler", help="sampler (default: the release sampler of the family)")
    gen.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0, help="prompt i uses seed + i (default 0)")
    gen.add_argument("--batch-size", type=_int_in(1, 4096), default=1, help="prompts per sampling call (default 1)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on a GPU")
    gen.add_argument("--video-format", default="gif", choices=["gif", "mp4"], help="mp4 needs the generate extra")
    gen.add_argument("--tile", action="store_true", help="tiled VAE decoding (bounded memory for large sizes)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_generate)

    qv = sub.add_parser("distill", parents=[debug],
                        help="Q-VDiT: distill LoRA, step sizes and the TQE branch against the float model, save quantized")
    qv.add_argument("model_dir", help="a float vidq-jax model folder (vidq convert output, or a bundled model folder)")
    qv.add_argument("--out", required=True, help="the quantized model folder to write")
    qv.add_argument("--preset", default="qvdit-w4a6", choices=[p for p in PRESETS if p.startswith("qvdit-")])
    qv.add_argument("--steps", type=_int_in(1), default=1000,
                    help="distillation steps (default 1000; the released code: 10000 W4A6, 15000 W3A8)")
    qv.add_argument("--lr", type=_finite_float(0.0), default=1e-5, help="peak LR of LoRA / TQE branch (default 1e-5)")
    qv.add_argument("--scale-lr", type=_finite_float(0.0), help="peak LR of the weight step sizes (default lr / 10)")
    qv.add_argument("--rank", type=_int_in(1), default=32, help="LoRA rank (default 32)")
    qv.add_argument("--gamma", type=_finite_float(0.0), default=100.0, help="weight of the frame-relation KL (100)")
    qv.add_argument("--frame-init", default="ones", choices=["ones", "saliency"],
                    help="per-frame scales: ones (the released code) or the paper's saliency rule")
    qv.add_argument("--calib-prompts", type=_int_in(1, 4096), help="prompts sampled for calibration (default 4)")
    qv.add_argument("--every-k", type=_int_in(1), default=2, help="record every k-th sampling step (default 2)")
    qv.add_argument("--cond", help=".npz with y (P, L, C), mask, extras (optional uncond_y); default: the model's demo "
                    "prompts (bundled models) or random")
    qv.add_argument("--ckpt-dir", help="training state for --resume (default OUT.ckpt)")
    qv.add_argument("--resume", action="store_true", help="continue the distillation checkpointed in --ckpt-dir")
    qv.add_argument("--time-limit", type=_finite_float(0.0), help="stop (checkpointed) after this many seconds")
    qv.add_argument("--backend", default="auto", choices=BACKENDS)
    qv.add_argument("--overwrite", action="store_true", help="replace the model in OUT (its other files stay)")
    qv.add_argument("--no-progress", action="store_true", help="no progress bar")
    qv.set_defaults(func=cmd_distill)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidq-jax")
    except PackageNotFoundError:
        return "(not installed)"


# ---------------------------------------------------------------------------------------------- errors
def _user_error_types() -> tuple[type, ...]:
    from conversion import ConversionError
    from vidq_jax.bundled import ModelMissing
    from vidq_jax.checkpoint import OutputFolderError
    from vidq_jax.data.text import TextExtraMissing

    return VidqError, ConversionError, OutputFolderError, ModelMissing, TextExtraMissing, OSError


def _raised_by_project(e: BaseException) -> bool:
    """True when the innermost frame that raised ``e`` is the project's own code (a deliberate check)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.split(".")[0] in _PROJECT_PACKAGES


def _message(e: BaseException) -> str:
    """The error as one line: an OSError as ``file: reason``, anything else its text, whitespace folded."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    elif isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("VIDQ_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    prog = f"vidq {args.verb}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vidq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place errors become messages
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, _user_error_types()) or (isinstance(e, ValueError) and _raised_by_project(e)):
            print(f"{prog}: {_message(e)}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error, a bug ({type(e).__name__}: {_message(e)}); rerun with --debug (or "
              "VIDQ_DEBUG=1) for the traceback and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
