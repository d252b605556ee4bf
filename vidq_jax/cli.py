"""The ``vidq`` command line.

    vidq convert --arch pixart-alpha CKPT OUT_DIR [--config JSON] [--dtype bf16] [--overwrite]
    vidq demo [--out outputs/demo] [--t2i FOLDER] [--t2v FOLDER] [--only t2i|t2v]
    vidq sample --prompt "a cat moving left" [--model t2i|t2v|FOLDER] [--preset viditq-w8a8] [--out FILE]
    vidq quantize MODEL_DIR OUT_DIR --preset viditq-w8a8 [--calib-prompts N] [--backend xla] [--cond NPZ] [--overwrite]

Each verb is a function ``cmd_<verb>(args) -> int`` registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _dtype(name: str | None):
    if name is None:
        return None
    import jax.numpy as jnp

    table = {"fp32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16, "fp16": jnp.float16}
    if name not in table:
        raise SystemExit(f"vidq: unknown dtype {name!r}; choose one of {sorted(table)}")
    return table[name]


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def cmd_convert(args) -> int:
    from conversion import ConversionError, load_checkpoint
    from vidq_jax.checkpoint import OutputFolderError, check_output, save_model

    try:
        check_output(args.out_dir, overwrite=args.overwrite, source=args.checkpoint)
    except OutputFolderError as e:
        print(f"vidq convert: {e}", file=sys.stderr)
        return 2
    config = None
    if args.config:
        text = args.config.strip()
        if not text.startswith("{"):
            text = Path(text).read_text()
        try:
            config = json.loads(text)
        except ValueError as e:
            print(f"vidq convert: --config is not valid JSON ({e})", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    try:
        model, params = load_checkpoint(args.checkpoint, args.arch, config, dtype=_dtype(args.dtype))
    except ConversionError as e:
        print(f"vidq convert: {e}", file=sys.stderr)
        return 2
    out = save_model(args.out_dir, model, params, arch=args.arch, extra={"source": str(args.checkpoint)},
                     overwrite=args.overwrite)
    meta = json.loads((out / "model.json").read_text())
    print(
        f"converted {args.checkpoint} ({args.arch}, {type(model).__name__}) -> {out} "
        f"[{_human_bytes(meta['param_bytes'])}, {time.perf_counter() - t0:.1f} s]"
    )
    return 0


def cmd_demo(args) -> int:
    from vidq_jax.bundled import ModelMissing
    from vidq_jax.demo import run_demo

    counts = {k: v for k, v in (("t2i", args.images), ("t2v", args.videos)) if v is not None}
    try:
        run_demo(Path(args.out), t2i=args.t2i, t2v=args.t2v, models_dir=args.models_dir,
                 tasks=[args.only] if args.only else ("t2i", "t2v"), counts=counts, backend=args.backend,
                 progress=not args.no_progress)
    except ModelMissing as e:
        print(f"vidq demo: {e}", file=sys.stderr)
        return 2
    return 0


def _slug(text: str, limit: int = 40) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "sample"


def cmd_sample(args) -> int:
    """Generate from typed prompts (MiniLM caption features: the text extra) with a bundled model."""
    import jax

    from vidq_jax.bundled import ModelMissing, load_demo_model
    from vidq_jax.data.text import TextExtraMissing, encode_prompts
    from vidq_jax.preview import save_sample_grid

    t0 = time.perf_counter()
    try:
        dm = load_demo_model(args.model, models_dir=args.models_dir)
    except (ModelMissing, ValueError) as e:
        print(f"vidq sample: {e}", file=sys.stderr)
        return 2
    suffix = ".gif" if dm.is_video else ".png"
    out = Path(args.out) if args.out else Path("outputs/sample") / f"{_slug(args.prompt[0])}_{args.preset}{suffix}"
    if out.suffix.lower() != suffix:
        print(f"vidq sample: {dm.name} makes {'videos' if dm.is_video else 'images'}: --out must end in {suffix}, "
              f"got {out}", file=sys.stderr)
        return 2
    try:
        y, mask = encode_prompts(args.prompt)
    except TextExtraMissing as e:
        print(f"vidq sample: {e}", file=sys.stderr)
        return 2
    cfg = dm.model.config
    if y.shape[1:] != (cfg.model_max_length, cfg.caption_channels):
        print(f"vidq sample: the text encoder gives {y.shape[1:]} caption features, {dm.name} expects "
              f"({cfg.model_max_length}, {cfg.caption_channels})", file=sys.stderr)
        return 2
    cond = dm.condition(y, mask)
    noise = dm.noise(len(args.prompt), jax.random.PRNGKey(args.seed))
    params = dm.params
    if args.preset != "fp":  # calibrate on the float run of these prompts, then quantize
        _, traj = dm.sample(dm.params, noise, cond, return_trajectory=True)
        params = dm.quantize(args.preset, dm.trajectory_calibration(noise, traj, cond), backend=args.backend)
    x = dm.to_pixels(dm.sample(params, noise, cond))
    save_sample_grid({f"{dm.name} {args.preset}": x}, args.prompt, out, value_range=dm.value_range, scale=args.scale,
                     fps=dm.preview_fps)
    print(f"sampled {len(args.prompt)} prompt(s) with {dm.name} ({args.preset}, {dm.describe_sampler()}) -> {out} "
          f"[{time.perf_counter() - t0:.1f} s]")
    return 0


def _load_cond(path: str | None, model, n: int) -> tuple[dict, dict | None, str]:
    """Calibration conditioning: an ``.npz`` (``y``, ``mask``, extras; optional ``uncond_y``) or random
    stand-in features shaped like the model's inputs."""
    import numpy as np

    from models.families import family_of
    from vidq_jax.calibration import random_conditioning

    if path is None:
        cond = random_conditioning(model, n)
        source = f"{n} random caption embeddings (pass --cond NPZ for real text-encoder features)"
    else:
        with np.load(path) as z:
            cond = {k: z[k] for k in z.files}
        source = str(path)
    uncond = None
    if "uncond_y" in cond:
        uncond = {"y": cond.pop("uncond_y")}
    elif family_of(model).null_caption_of(model) != "learned":
        uncond = {"y": np.zeros_like(np.asarray(cond["y"]))}
        source += "; null caption = zeros (give uncond_y = T5('') features in the npz)"
    return cond, uncond, source


def cmd_quantize(args) -> int:
    import warnings

    from vidq_jax.calibration import collect
    from vidq_jax.checkpoint import (OutputFolderError, check_output, disk_bytes, load_model, params_nbytes,
                                     save_quantized)
    from vidq_jax.quant import QuantConfig, quantization_summary, quantize_params
    from vidq_jax.quant.plan import MixedPrecisionPlan

    t0 = time.perf_counter()
    try:
        check_output(args.out_dir, overwrite=args.overwrite, source=args.model_dir)
        model, params, meta = load_model(args.model_dir)
    except (OutputFolderError, FileNotFoundError, ValueError) as e:
        print(f"vidq quantize: {e}", file=sys.stderr)
        return 2
    if meta.get("quantization"):
        print(f"vidq quantize: {args.model_dir} is already quantized", file=sys.stderr)
        return 2
    try:
        config = QuantConfig.preset(args.preset, backend=None if args.preset == "fp" else args.backend)
        plan = None
        if args.plan:
            text = args.plan
            if text == "opensora1-w4a8":
                plan = MixedPrecisionPlan.opensora_v1_w4a8(num_steps=args.steps or 20)
            else:
                plan = MixedPrecisionPlan.from_json(Path(text).read_text() if not text.strip().startswith("{") else text)
    except (ValueError, OSError) as e:
        print(f"vidq quantize: {e}", file=sys.stderr)
        return 2
    cond, uncond, source = _load_cond(args.cond, model, args.calib_prompts)
    calib = list(collect(model, params, cond, num_prompts=min(args.calib_prompts, len(cond["y"])),
                         every_k_steps=args.every_k, steps=args.steps, uncond=uncond))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qparams = quantize_params(params, calib, model=model, config=config, plan=plan)
    for w in caught:
        print(f"vidq quantize: warning: {w.message}", file=sys.stderr)
    out = save_quantized(args.out_dir, model, qparams, arch=meta["arch"], config=config, plan=plan, preset=args.preset,
                         extra={"source": str(Path(args.model_dir).resolve()), "calibration": source},
                         overwrite=args.overwrite)
    summary = quantization_summary(qparams)
    nq = sum(v != "float" for v in summary.values())
    fb, qb = disk_bytes(Path(args.model_dir) / "params"), disk_bytes(out / "params")
    print(
        f"quantized {args.model_dir} with {args.preset}{' + ' + plan.name if plan else ''} ({nq}/{len(summary)} Dense "
        f"layers, {len(calib)} calibration batches) -> {out}\n"
        f"  params {_human_bytes(params_nbytes(qparams))} (float {_human_bytes(params_nbytes(params))}); on disk "
        f"{_human_bytes(qb)} (float {_human_bytes(fb)}, {fb / max(qb, 1):.2f}x smaller) [{time.perf_counter() - t0:.1f} s]"
    )
    return 0


def cmd_bench(args) -> int:
    """Run the GPU benchmarks of ``benchmarks/`` (repository checkout) and print their tables."""
    import runpy

    repo = Path(__file__).resolve().parent.parent
    bench_dir = repo / "benchmarks"
    if not bench_dir.is_dir():
        print(f"vidq bench: {bench_dir} not found (run from a repository checkout)", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    from conversion import ARCHS

    p = argparse.ArgumentParser(prog="vidq", description="ViDiT-Q quantization of diffusion transformers in JAX")
    p.add_argument("--version", action="version", version=f"vidq {_version()}")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("convert", help="PyTorch checkpoint -> orbax params + model.json")
    c.add_argument("--arch", required=True, choices=ARCHS)
    c.add_argument("checkpoint", help=".pth / .safetensors file, or a diffusers / Hugging Face folder")
    c.add_argument("out_dir")
    c.add_argument("--config", help="JSON (inline or a file) completing/overriding the model config")
    c.add_argument("--dtype", help="cast params: fp32 | bf16 | fp16 (default: as stored)")
    c.add_argument("--overwrite", action="store_true", help="replace the model in OUT_DIR (its other files stay)")
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="GPU benchmarks: fused linear and one denoising step vs XLA bf16")
    b.add_argument("--only", choices=["linear", "e2e"], help="run one of the two")
    b.add_argument("--tiny", action="store_true", help="toy sizes for the step benchmark (CPU smoke run)")
    b.add_argument("--out", default="outputs/bench", help="where the JSON/markdown tables go (default outputs/bench)")
    b.set_defaults(func=cmd_bench)

    from vidq_jax.quant.config import PRESETS

    d = sub.add_parser("demo", help="quantize the bundled trained models and compare with FP (writes outputs/demo/)")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--t2i", help="text-to-image model folder (default: assets/models/pixart-emoji-32)")
    d.add_argument("--t2v", help="text-to-video model folder (default: assets/models/stdit3-sprites-8x32)")
    d.add_argument("--models-dir", help="folder holding the bundled models (default: assets/models)")
    d.add_argument("--only", choices=["t2i", "t2v"], help="run one of the two models")
    d.add_argument("--images", type=int, help="image prompts (default 4)")
    d.add_argument("--videos", type=int, help="video prompts (default 2)")
    d.add_argument("--backend", default="auto", choices=["auto", "simulate", "xla", "pallas"])
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sample", help="generate from typed prompts with a bundled model (needs the text extra)")
    s.add_argument("--prompt", action="append", required=True, help="the prompt (repeat for several)")
    s.add_argument("--model", default="t2i", help="t2i | t2v | a model folder (default t2i)")
    s.add_argument("--models-dir", help="folder holding the bundled models (default: assets/models)")
    s.add_argument("--preset", default="fp", choices=list(PRESETS),
                   help="fp, or a quantization preset (calibrated on the prompts' own float run)")
    s.add_argument("--backend", default="auto", choices=["auto", "simulate", "xla", "pallas"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=int, default=8, help="nearest-neighbour upscaling of the 32-px output (default 8)")
    s.add_argument("--out", help="output .png (images) / .gif (videos); default outputs/sample/<prompt>_<preset>.*")
    s.set_defaults(func=cmd_sample)

    q = sub.add_parser("quantize", help="calibrate + quantize a converted model folder (orbax, int8 on disk)")
    q.add_argument("model_dir", help="a float vidq-jax model folder (vidq convert output)")
    q.add_argument("out_dir")
    q.add_argument("--preset", default="viditq-w8a8", choices=list(PRESETS))
    q.add_argument("--backend", default="auto", choices=["auto", "simulate", "xla", "pallas"])
    q.add_argument("--calib-prompts", type=int, default=4, help="prompts sampled for calibration (default 4)")
    q.add_argument("--every-k", type=int, default=2, help="record every k-th sampling step (default 2)")
    q.add_argument("--steps", type=int, help="sampling steps of the calibration runs (default: the release's)")
    q.add_argument("--cond", help=".npz with y (P, L, C), mask, extras (optional uncond_y); default random")
    q.add_argument("--plan", help="timestep-segment mixed-precision plan: JSON (inline/file) or 'opensora1-w4a8'")
    q.add_argument("--overwrite", action="store_true", help="replace the model in OUT_DIR (its other files stay)")
    q.set_defaults(func=cmd_quantize)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidq-jax")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vidq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
