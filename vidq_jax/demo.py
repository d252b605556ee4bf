"""``make demo`` / ``vidq demo``: the main job on the embedded default.

Until the bundled trained models exist, the defaults are the public golden fixtures (tiny
random-weight models in the released checkpoint formats): PixArt-α-MS (``.pth``) for images and
STDiT3 (Open-Sora 1.2 safetensors folder) for video. Each is converted, saved as a vidq-jax model
folder (orbax) and loaded back, then sampled with its release sampler (DPM-Solver++ 20 steps CFG 4.5;
rectified flow 30 steps CFG 7.0) from fixed noise. Outputs in ``outputs/demo/``: a PNG of the image
latents, an animated GIF of the video latents, and ``summary.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np


def _log(msg: str) -> None:
    print(f"[vidq demo] {msg}", flush=True)


def _convert_roundtrip(case, out_dir: Path):
    from conversion import load_checkpoint
    from vidq_jax.checkpoint import load_model, save_model

    model, params = load_checkpoint(case.checkpoint, case.arch, case.manifest.get("config"))
    folder = save_model(out_dir / case.name, model, params, arch=case.arch, extra={"source": str(case.checkpoint)})
    model, params, meta = load_model(folder)
    _log(f"converted {case.checkpoint} -> {folder} ({meta['param_bytes'] / 1e6:.2f} MB of params)")
    return model, params


def _sample_case(case, out_dir: Path, timings: dict, **sampler_kwargs):
    from conversion.fixtures import sampling_inputs
    from vidq_jax.pipeline import SAMPLER_DEFAULTS, sample

    t0 = time.perf_counter()
    model, params = _convert_roundtrip(case, out_dir / "models")
    timings[f"{case.name}: convert + save + load"] = time.perf_counter() - t0
    cond, shape = sampling_inputs(case, n=2)
    noise = jax.random.normal(jax.random.PRNGKey(0), shape)
    run = lambda: sample(model, params, noise, cond, return_trajectory=True, **sampler_kwargs)  # noqa: E731
    t0 = time.perf_counter()
    latents, traj = jax.block_until_ready(run())
    timings[f"{case.name}: sample (compile + run)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again, _ = jax.block_until_ready(run())
    timings[f"{case.name}: sample (cached)"] = time.perf_counter() - t0
    latents, again = np.asarray(latents), np.asarray(again)
    if not np.array_equal(latents, again):
        raise RuntimeError(f"{case.name}: sampling is not deterministic")
    if not np.isfinite(latents).all():
        raise RuntimeError(f"{case.name}: sampling produced non-finite latents")
    d = SAMPLER_DEFAULTS[type(model).__name__]
    return model, np.asarray(noise), latents, np.asarray(traj), d


def _describe(case, model, latents, traj, d) -> list[str]:
    cfg = model.config
    per_step = np.asarray(traj).reshape(traj.shape[0], -1).std(axis=1)
    return [
        f"### {case.name} ({case.arch})",
        f"- model: {type(model).__name__}, hidden {cfg.hidden_size}, depth {cfg.depth}, heads {cfg.num_heads} (random weights)",
        f"- sampler: {d['sampler']}, {d['steps']} steps, CFG {d['guidance_scale']}, null caption = learned y_embedding",
        f"- latents {latents.shape}: mean {latents.mean():+.3f}, std {latents.std():.3f}",
        f"- latent std per step: {', '.join(f'{s:.2f}' for s in per_step)}",
        "",
    ]


def run_demo(out_dir: Path) -> dict:
    from conversion.fixtures import default_fixtures_dir, find_cases
    from vidq_jax.preview import save_latent_preview, save_video_latent_preview

    out_dir.mkdir(parents=True, exist_ok=True)
    cases = {c.arch: c for c in find_cases()}
    missing = [a for a in ("pixart-alpha", "stdit3") if a not in cases]
    if missing:
        raise SystemExit(f"vidq demo: no {', '.join(missing)} fixture under {default_fixtures_dir()} (set VIDQ_FIXTURES)")
    timings: dict[str, float] = {}
    lines = ["# vidq demo (interim default: the public golden fixtures, random weights)", ""]

    img_case = cases["pixart-alpha"]
    model, noise, latents, traj, d = _sample_case(img_case, out_dir, timings)
    png = save_latent_preview(np.concatenate([noise, latents]), out_dir / "image_latents.png")
    lines += _describe(img_case, model, latents, traj, d)
    lines += [f"Preview: `{png.name}` — rows 1–2 noise, rows 3–4 samples; columns: approximate RGB, then each latent channel.", ""]

    vid_case = cases["stdit3"]
    model, noise, latents, traj, d = _sample_case(vid_case, out_dir, timings, num_frames=51)
    gif = save_video_latent_preview(np.concatenate([noise, latents]), out_dir / "video_latents.gif")
    lines += _describe(vid_case, model, latents, traj, d)
    lines += [f"Preview: `{gif.name}` — animated over latent frames; rows 1–2 noise, rows 3–4 samples.", ""]

    lines += ["| stage | seconds |", "|---|---|", *[f"| {k} | {v:.2f} |" for k, v in timings.items()], ""]
    lines += [f"JAX {jax.__version__} on {jax.devices()[0].platform}"]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _log(f"wrote {png}, {gif} and {summary}")
    return {"png": png, "gif": gif, "summary": summary}
