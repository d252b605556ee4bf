"""Decoding cost of the release autoencoders at full size (random weights): time and XLA-planned memory of the
bounded-memory helpers :func:`models.vae.decode` / :func:`models.opensora_vae.decode` — plain vs tiled images,
frame micro-batches of a video, Open-Sora 1.2's chunked video decode.

Shapes come from ``../shared/fixtures/xl_keys`` (``sd-vae``, ``sdxl-vae``, ``opensora-vae-v1.2``) through the
converters; weights are random, drawn on the device. Per row: compile time, ``temp_bytes`` = the activations'
high-water mark XLA plans for the compiled decode (``compiled.memory_analysis()``; what tiling / micro-batching
bound), and the median wall time of ``--iters`` warm calls.

    python -m benchmarks.bench_vae [--dtype float32|bfloat16] [--only sdxl-1024,...] [--iters 3] [--tiny]

Writes ``benchmarks/results/vae.json`` and ``vae.md`` (``--tiny``: ``vae_tiny.*``, the fixture-size models on
the CPU: a smoke run of the same code, not a measurement).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import REPO, environment, mark_toy, median_time, results_path, title
from conversion import convert_state_dict, load_checkpoint
from conversion.fixtures import find_cases, load_xl_keys, synthesize_state_dict
from models import opensora_vae
from models import vae as sd_vae

# name -> (xl_keys listing, arch, latent shape of one sample, decode options, what it stands for)
ROWS: dict[str, tuple[str, str, tuple[int, ...], dict[str, Any], str]] = {
    "sdxl-1024": ("sdxl-vae", "sd-vae", (1, 128, 128, 4), {}, "PixArt-Σ 1024² image, whole"),
    "sdxl-1024-tiled": ("sdxl-vae", "sd-vae", (1, 128, 128, 4), {"tile": 64}, "PixArt-Σ 1024² image, 512 px tiles"),
    "sd-16x512": ("sd-vae", "sd-vae", (1, 16, 64, 64, 4), {}, "Open-Sora 1.0 16×512² clip, all frames at once"),
    "sd-16x512-mb4": ("sd-vae", "sd-vae", (1, 16, 64, 64, 4), {"batch_size": 4},
                      "Open-Sora 1.0 16×512² clip, 4 frames per step (its micro_batch_size)"),
    "os12-51x480p": ("opensora-vae-v1.2", "opensora-vae-v1.2", (1, 15, 60, 106, 4), {"num_frames": 51},
                     "Open-Sora 1.2 51 frames 480×848 (3 chunks of 17, 4 frames per spatial step)"),
}
TINY = {"sd-vae": ("sd_vae_kl", (1, 6, 10, 4)), "opensora-vae-v1.2": ("opensora_v1_2_video_vae", (1, 3, 3, 4, 4))}


def random_params(model, dtype, seed: int = 0):
    """Weights drawn on the device: conv/linear kernels N(0, 1/fan_in), norm scales 1, the rest 0.01·N(0, 1)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    paths, tree = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for k, (path, s) in zip(jax.random.split(jax.random.PRNGKey(seed), len(paths)), paths):
        name = path[-1].key
        if name == "kernel":
            v = jax.random.normal(k, s.shape, jnp.float32) / np.sqrt(np.prod(s.shape[:-1]))
        elif name in ("weight", "scale"):
            v = jnp.ones(s.shape, jnp.float32)
        else:
            v = 0.01 * jax.random.normal(k, s.shape, jnp.float32)
        out.append(v.astype(dtype))
    return jax.tree_util.tree_unflatten(tree, out)


def _model(name: str, tiny: bool):
    listing, arch, shape, options, what = ROWS[name]
    if tiny:
        case_name, shape = TINY[arch]
        case = next(c for c in find_cases() if c.name == case_name)
        model, _ = load_checkpoint(case.checkpoint, arch, case.manifest.get("config"))
        options = {k: (4 if k == "tile" else v) for k, v in options.items()}
        if "num_frames" in options:
            options["num_frames"] = None
        return model, shape, options, f"{what} [toy size]"
    keys = load_xl_keys(listing)
    model, _ = convert_state_dict(synthesize_state_dict(keys), arch, keys.get("saved_config") or keys["config"])
    return model, shape, options, what


def measure(name: str, dtype, iters: int, tiny: bool) -> dict[str, Any]:
    model, shape, options, what = _model(name, tiny)
    params = random_params(model, dtype)
    z = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32).astype(dtype)
    if isinstance(model, opensora_vae.OpenSoraVAE):
        options = {"num_frames": None, **options}
        fn = functools.partial(opensora_vae.decode, model, **options)
    else:
        fn = functools.partial(sd_vae.decode, model, **options)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, z).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    out_shape = tuple(jax.eval_shape(fn, params, z).shape)
    timing = median_time(compiled, [(params, z)], iters=iters, reps=3, warmup=1)
    return {"row": name, "what": what, "dtype": jnp.dtype(dtype).name, "latent": list(shape), "pixels": list(out_shape),
            "options": {k: v for k, v in options.items()}, "compile_s": round(compile_s, 1),
            "temp_bytes": temp, "median_ms": round(timing["median_ms"], 2), **environment()}


def write_md(rows: list[dict], path: Path, tiny: bool) -> None:
    env = rows[0] if rows else environment()
    lines = [f"# {title('VAE decoding at release size (random weights)', tiny)}", "",
             f"{env['gpu']}, JAX {env['jax_version']}, {env['date']}. temp = XLA-planned activation memory.", "",
             "| row | what | dtype | latent → pixels | options | temp GiB | ms | compile s |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        temp = "—" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**30:.2f}"
        lines.append(f"| {r['row']} | {r['what']} | {r['dtype']} | {tuple(r['latent'])} → {tuple(r['pixels'])} | "
                     f"{r['options'] or '—'} | {temp} | {r['median_ms']:.1f} | {r['compile_s']} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated rows of {', '.join(ROWS)}")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="fixture-size models (CPU smoke run)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/vae.json)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    rows = []
    for n in names:
        rows.append(measure(n, getattr(jnp, args.dtype), args.iters, args.tiny))
        print(json.dumps({k: rows[-1][k] for k in ("row", "temp_bytes", "median_ms", "compile_s")}), flush=True)
    rows = mark_toy(rows, args.tiny)
    out = results_path(REPO / "benchmarks/results/vae.json", args.out, args.tiny)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    write_md(rows, out.with_suffix(".md"), args.tiny)
    return rows


if __name__ == "__main__":
    main()
