"""``make demo`` / ``vidq demo``: the main job on the embedded default.

Until the bundled trained models exist, the default is the public PixArt-α golden fixture (a tiny
random-weight PixArt-α-MS in the released ``.pth`` format): convert it, save it as a vidq-jax model
folder (orbax), sample with DPM-Solver++ (20 steps, CFG 4.5, learned null caption) from fixed noise,
and write a PNG preview of the output latents plus a short text summary.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _log(msg: str) -> None:
    print(f"[vidq demo] {msg}", flush=True)


def run_demo(out_dir: Path) -> dict:
    from conversion import load_checkpoint
    from conversion.fixtures import default_fixtures_dir, find_cases
    from vidq_jax.checkpoint import load_model, save_model
    from vidq_jax.preview import save_latent_preview
    from vidq_jax.sampling import sample_dpm_solver

    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in find_cases() if c.arch == "pixart-alpha"]
    if not cases:
        raise SystemExit(f"vidq demo: no pixart-alpha fixture under {default_fixtures_dir()} (set VIDQ_FIXTURES)")
    case = cases[0]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model, params = load_checkpoint(case.checkpoint, case.arch, case.manifest.get("config"))
    model_dir = save_model(out_dir / "model", model, params, arch=case.arch, extra={"source": str(case.checkpoint)})
    model, params, meta = load_model(model_dir)  # round trip through the saved folder
    timings["convert + save + load"] = time.perf_counter() - t0
    _log(f"converted {case.checkpoint} -> {model_dir} ({meta['param_bytes'] / 1e6:.2f} MB of params)")

    cfg = model.config
    inputs = case.inputs()
    n = 2
    y = np.asarray(inputs["y"])[:n, 0]  # caption features of the fixture (stand-ins for T5 output)
    mask = np.asarray(inputs["mask"])[:n]
    h, w = inputs["x"].shape[2:]
    cond = {"y": y, "mask": mask}
    extra = {}
    if cfg.micro_condition:
        extra = {"img_hw": np.tile([[h * 8.0, w * 8.0]], (n, 1)).astype(np.float32), "aspect_ratio": np.full((n, 1), h / w, np.float32)}
    cond.update(extra)
    null = np.broadcast_to(np.asarray(params["y_embedder"]["y_embedding"]), y.shape)
    uncond = {"y": null, **extra}  # mask: the conditional mask is reused, as in the originals

    def apply_fn(p, x, t, **kw):
        return model.apply({"params": p}, x, t, **kw)

    noise = jax.random.normal(jax.random.PRNGKey(0), (n, h, w, cfg.in_channels), jnp.float32)
    t0 = time.perf_counter()
    latents, traj = sample_dpm_solver(apply_fn, params, noise, cond, uncond, steps=20, guidance_scale=4.5, return_trajectory=True)
    latents = np.asarray(jax.block_until_ready(latents))
    timings["sample (compile + 20 steps)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    latents2, _ = sample_dpm_solver(apply_fn, params, noise, cond, uncond, steps=20, guidance_scale=4.5, return_trajectory=True)
    latents2 = np.asarray(jax.block_until_ready(latents2))
    timings["sample (cached, 20 steps)"] = time.perf_counter() - t0
    assert np.array_equal(latents, latents2), "sampling is not deterministic"
    if not np.isfinite(latents).all():
        raise RuntimeError("sampling produced non-finite latents")

    png = save_latent_preview(np.concatenate([np.asarray(noise), latents]), out_dir / "latents.png")
    lines = [
        "# vidq demo (interim default: PixArt-α fixture, random weights)",
        "",
        f"- model: {type(model).__name__} {case.arch}, hidden {cfg.hidden_size}, depth {cfg.depth}, heads {cfg.num_heads}",
        f"- checkpoint: {case.checkpoint}",
        f"- converted model folder: {model_dir}",
        f"- sampler: DPM-Solver++(2M), 20 steps, CFG 4.5, null caption = learned y_embedding",
        f"- latents: {n} × {h}×{w}×{cfg.in_channels}; preview {png} (rows 1–{n}: noise, rows {n + 1}–{2 * n}: samples;"
        " columns: approximate RGB, then each latent channel)",
        f"- latent stats: mean {latents.mean():+.3f}, std {latents.std():.3f}, range [{latents.min():+.3f}, {latents.max():+.3f}]",
        f"- per-step latent std: {', '.join(f'{s:.2f}' for s in np.asarray(traj).std(axis=(1, 2, 3, 4)))}",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in timings.items()],
        "",
        f"JAX {jax.__version__} on {jax.devices()[0].platform}",
    ]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _log(f"wrote {png} and {summary}")
    return {"png": png, "summary": summary, "latents": latents}
