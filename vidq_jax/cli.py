"""The ``vidq`` command line.

    vidq convert --arch pixart-alpha CKPT OUT_DIR [--config JSON] [--dtype bf16]
    vidq demo [--out outputs/demo]
    vidq quantize MODEL_DIR OUT_DIR --preset viditq-w8a8 [--calib-prompts N] [--backend xla] [--cond NPZ]

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
    from vidq_jax.checkpoint import save_model

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
    out = save_model(args.out_dir, model, params, arch=args.arch, extra={"source": str(args.checkpoint)})
    meta = json.loads((out / "model.json").read_text())
    print(
        f"converted {args.checkpoint} ({args.arch}, {type(model).__name__}) -> {out} "
        f"[{_human_bytes(meta['param_bytes'])}, {time.perf_counter() - t0:.1f} s]"
    )
    return 0


def cmd_demo(args) -> int:
    from vidq_jax.demo import run_demo

    run_demo(Path(args.out))
    return 0


def _load_cond(path: str | None, model, n: int) -> tuple[dict, dict | None, str]:
    """Calibration conditioning: an ``.npz`` (``y``, ``mask``, extras; optional ``uncond_y``) or random
    stand-in features shaped like the model's inputs."""
    import numpy as np

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
    elif getattr(model.config, "null_caption", "learned") != "learned":
        uncond = {"y": np.zeros_like(np.asarray(cond["y"]))}
        source += "; null caption = zeros (give uncond_y = T5('') features in the npz)"
    return cond, uncond, source


def cmd_quantize(args) -> int:
    import warnings

    from vidq_jax.calibration import collect
    from vidq_jax.checkpoint import load_model, params_nbytes
    from vidq_jax.quant import QuantConfig, quantization_summary, quantize_params
    from vidq_jax.quant.io import disk_bytes, save_quantized
    from vidq_jax.quant.mixed_precision import MixedPrecisionPlan, quantize_params_mp

    t0 = time.perf_counter()
    try:
        model, params, meta = load_model(args.model_dir)
    except (FileNotFoundError, ValueError) as e:
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
        if plan is None:
            qparams = quantize_params(params, calib, model=model, config=config)
        else:
            qparams = quantize_params_mp(params, calib, model=model, config=config, plan=plan)
    for w in caught:
        print(f"vidq quantize: warning: {w.message}", file=sys.stderr)
    out = save_quantized(args.out_dir, model, qparams, arch=meta["arch"], config=config, plan=plan, preset=args.preset,
                         extra={"source": str(Path(args.model_dir).resolve()), "calibration": source})
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

    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    if not bench_dir.is_dir():
        print(f"vidq bench: {bench_dir} not found (run from a repository checkout)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(bench_dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    linear = ["--json", str(out / "linear.json"), "--md", str(out / "linear.md")]
    e2e = ["--out", str(out / "e2e.json")] + (["--tiny"] if args.tiny else [])
    for script, argv in (("bench_linear.py", linear), ("bench_e2e.py", e2e)):
        if args.only and args.only not in script:
            continue
        print(f"== {script}", flush=True)
        sys.argv = [script, *argv]
        try:
            runpy.run_path(str(bench_dir / script), run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                return int(e.code) if isinstance(e.code, int) else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from conversion import ARCHS

    p = argparse.ArgumentParser(prog="vidq", description="ViDiT-Q quantization of diffusion transformers in JAX")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("convert", help="PyTorch checkpoint -> orbax params + model.json")
    c.add_argument("--arch", required=True, choices=ARCHS)
    c.add_argument("checkpoint", help=".pth / .safetensors file, or a diffusers / Hugging Face folder")
    c.add_argument("out_dir")
    c.add_argument("--config", help="JSON (inline or a file) completing/overriding the model config")
    c.add_argument("--dtype", help="cast params: fp32 | bf16 | fp16 (default: as stored)")
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="GPU benchmarks: fused linear and one denoising step vs XLA bf16")
    b.add_argument("--only", choices=["linear", "e2e"], help="run one of the two")
    b.add_argument("--tiny", action="store_true", help="toy sizes for the step benchmark (CPU smoke run)")
    b.add_argument("--out", default="outputs/bench", help="where the JSON/markdown tables go (default outputs/bench)")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the main job on the embedded default (writes outputs/demo/)")
    d.add_argument("--out", default="outputs/demo")
    d.set_defaults(func=cmd_demo)

    from vidq_jax.quant.config import PRESETS

    q = sub.add_parser("quantize", help="calibrate + quantize a converted model folder (orbax, int8 on disk)")
    q.add_argument("model_dir", help="a float vidq-jax model folder (vidq convert output)")
    q.add_argument("out_dir")
    q.add_argument("--preset", default="viditq-w8a8", choices=list(PRESETS))
    q.add_argument("--backend", default="xla", choices=["simulate", "xla", "pallas"])
    q.add_argument("--calib-prompts", type=int, default=4, help="prompts sampled for calibration (default 4)")
    q.add_argument("--every-k", type=int, default=2, help="record every k-th sampling step (default 2)")
    q.add_argument("--steps", type=int, help="sampling steps of the calibration runs (default: the release's)")
    q.add_argument("--cond", help=".npz with y (P, L, C), mask, extras (optional uncond_y); default random")
    q.add_argument("--plan", help="timestep-segment mixed-precision plan: JSON (inline/file) or 'opensora1-w4a8'")
    q.set_defaults(func=cmd_quantize)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
