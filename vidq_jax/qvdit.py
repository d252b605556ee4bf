"""``vidq distill``: Q-VDiT distillation of a float model folder into a quantized model folder.

    vidq distill MODEL_DIR --preset qvdit-w4a6 --out OUT_DIR [--steps 1000] [--lr 1e-5] [--resume]

Calibration batches are recorded along the float model's own sampling trajectories
(:func:`vidq_jax.calibration.collect`, every ``--every-k``-th step, both CFG halves): the caption
features of ``--cond NPZ``, else — for a folder exported by :mod:`vidq_jax.train` (the bundled models) —
its demo prompts, else random stand-in captions. :func:`vidq_jax.quant.distill.distill` trains and folds;
the result is written like every quantized folder (``model.json`` holds the recipe and a
``"distillation"`` entry: settings, loss history, calibration loss before/after, steps, seconds, device).
The training state is checkpointed in ``--ckpt-dir`` (default ``OUT_DIR.ckpt``); a run stopped by
``--time-limit`` (or killed) continues with ``--resume``. The command's body lives here; ``vidq_jax.cli``
holds its parser and hands over its calibration-conditioning helper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidq_jax.errors import VidqError


def _calibration(dm: Any, args: Any, calibration_cond: Callable) -> tuple[dict, dict | None, str, int]:
    """``(cond, uncond, description, prompts)`` of the calibration runs (module docstring)."""
    if args.cond is None and dm.meta.get("task"):
        n = args.calib_prompts or 4
        prompts = dm.demo_prompts(min(n, len(dm.default_prompts())))
        return dm.condition(prompts.y, prompts.mask), None, f"{len(prompts)} demo prompts of the model", len(prompts)
    return calibration_cond(dm, args.cond, args.calib_prompts)


def run(args: Any, calibration_cond: Callable) -> int:
    """The body of ``vidq distill`` (``args``: its parsed options; ``calibration_cond``: the CLI's
    ``--cond`` / random-caption conditioning helper)."""
    from vidq_jax.bundled import load_demo_model
    from vidq_jax.calibration import collect
    from vidq_jax.checkpoint import check_output, disk_bytes, save_quantized
    from vidq_jax.quant.distill import distill

    t0 = time.perf_counter()
    out = check_output(args.out, overwrite=args.overwrite, source=args.model_dir)
    ckpt = Path(args.ckpt_dir) if args.ckpt_dir else out.with_name(out.name + ".ckpt")
    if (ckpt / "distill.json").is_file() and not args.resume:
        raise VidqError(f"--ckpt-dir {ckpt}: holds an earlier distillation; pass --resume to continue it (same "
                        f"settings) or remove the folder to start over")
    dm = load_demo_model(args.model_dir)  # ModelMissing (a one-line user error) without model.json
    model, params, meta = dm.model, dm.params, dm.meta
    if meta.get("quantization"):
        raise VidqError(f"MODEL_DIR {args.model_dir}: already quantized; give a float model folder")
    cond, uncond, source, n = _calibration(dm, args, calibration_cond)
    calib = list(collect(model, dm.compute_params, cond, num_prompts=n, every_k_steps=args.every_k,
                         latent_shape=dm.sample_shape, uncond=uncond, **dm.sampler))
    result = distill(model, params, calib, config=args.preset, steps=args.steps, lr=args.lr, scale_lr=args.scale_lr,
                     rank=args.rank, gamma=args.gamma, frame_init=args.frame_init, checkpoint_dir=ckpt,
                     resume=args.resume, time_limit=args.time_limit, backend=args.backend,
                     progress=not args.no_progress)
    if not result.complete:
        print(f"distilled {result.steps}/{args.steps} steps before --time-limit {args.time_limit:g} s; the state is in "
              f"{ckpt}: rerun the same command with --resume to continue")
        return 0
    saved = save_quantized(out, model, result.params, arch=meta["arch"], config=result.config, preset=args.preset,
                           extra={"source": str(Path(args.model_dir).resolve()), "calibration": source,
                                  "distillation": result.record()}, overwrite=args.overwrite)
    b, a = result.before, result.after
    print(f"distilled {args.model_dir} with {args.preset} ({result.settings['trainable_layers']} layers, "
          f"{result.settings['trainable_params']} trainable values, {len(calib)} calibration batches from {source}; "
          f"{result.steps} steps in {result.seconds_all:.0f} s) -> {saved}\n"
          f"  calibration loss {b['loss']:.4g} -> {a['loss']:.4g} (MSE {b['mse']:.4g} -> {a['mse']:.4g}, frame KL "
          f"{b['kl']:.3g} -> {a['kl']:.3g}); on disk {disk_bytes(saved / 'params')} B "
          f"[{time.perf_counter() - t0:.1f} s]")
    return 0


__all__ = ["run"]
