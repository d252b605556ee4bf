"""The XL denoising step that ``bench_e2e`` times and ``profile_step`` profiles.

* :data:`MODELS` / :data:`VARIANTS` — PixArt-XL/2 at 1024 px, STDiT-XL/2 at 16×512×512 and DiT-XL/2 at
  256 px (class labels) (shapes
  from ``../shared/fixtures/xl_keys``, random weights drawn on the device); bf16 and the quantized
  layer settings of the block Dense layers;
* :func:`build` / :func:`step_fn` — the model, its params and inputs; one jitted CFG-batch-2 step
  (model forward on [cond; uncond] + guidance combine: what a sampler calls once per step);
  :func:`random_params` draws the weights (one small compiled draw per distinct leaf shape);
* :func:`profile_variant` / :func:`summarize` — GPU kernel time of a compiled step from a
  ``jax.profiler`` trace (the Perfetto trace JAX writes; kernels of the GPU stream lines), summed per
  kernel kind (:data:`CATEGORIES`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from conversion import convert_state_dict
from conversion.fixtures import load_xl_keys, synthesize_state_dict
from vidq_jax.quant import LayerQuant

VARIANTS = {
    "bf16": None,
    "w8a8": LayerQuant(w_bits=8, w_symmetric=True, a_bits=8, backend="pallas"),
    "w4a8": LayerQuant(w_bits=4, w_symmetric=True, a_bits=8, backend="pallas"),
    "w8a8-rot": LayerQuant(w_bits=8, w_symmetric=True, a_bits=8, rotate=True, backend="pallas"),
}

MODELS = {
    # name: (xl_keys arch, latent shape without batch, caption length, extra conditions)
    "pixart": ("pixart-alpha", (128, 128, 4), 120),
    "stdit": ("stdit", (16, 64, 64, 4), 120),
    "dit": ("dit", (32, 32, 4), 0),  # DiT-XL/2 256 px, class labels (no caption)
}


def build(model_name: str, tiny: bool = False):
    arch, latent, length = MODELS[model_name]
    listing = load_xl_keys(arch)
    model, _ = convert_state_dict(synthesize_state_dict(listing), arch, listing["config"])
    cls, config = type(model), model.config
    labels = model_name == "dit"  # class-conditional: y = labels [class; null class]
    if tiny:  # CPU smoke run: same code path, toy sizes
        small = dict(hidden_size=96, depth=2, num_heads=4) | ({} if labels else dict(caption_channels=32))
        if model_name == "stdit":
            small["input_size"] = (2, 8, 8)
            latent = (2, 8, 8, 4)
        else:
            latent = (8, 8, 4)
            small |= dict(input_size=8) if labels else {}
        config, length = dataclasses.replace(config, **small), 8
    model = cls(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    b = 2  # CFG: [cond; uncond]
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 4)
    inputs = {
        "x": jax.random.normal(ks[0], (b, *latent), jnp.bfloat16),
        "timestep": jnp.full((b,), 500.0, jnp.float32),
    }
    if labels:
        inputs["y"] = jnp.array([207, config.num_classes], jnp.int32)
    else:
        inputs["y"] = jax.random.normal(ks[1], (b, length, model.config.caption_channels), jnp.bfloat16)
        inputs["mask"] = jnp.ones((b, length), jnp.int32).at[:, (length * 5) // 6 :].set(0)
    if getattr(model.config, "micro_condition", False):
        inputs["img_hw"] = jnp.full((b, 2), 1024.0)
        inputs["aspect_ratio"] = jnp.ones((b, 1))

    shapes = jax.eval_shape(lambda: model.init(key, **inputs))["params"]
    # "rbg" keys: threefry normal draws compile slowly on the GPU
    return model, random_params(shapes, jax.random.key(2, impl="rbg")), inputs


@functools.partial(jax.jit, static_argnums=(2, 3))
def _draw(keys, i, shape, dtype):
    return (0.02 * jax.random.normal(keys[i], shape, jnp.float32)).astype(dtype)


def random_params(shapes, key, dtype=jnp.bfloat16):
    """``0.02 * N(0, 1)`` leaves (cast to ``dtype``) of a tree of ``ShapeDtypeStruct``, leaf ``i`` drawn from
    ``split(key, n_leaves)[i]``: the values one jit over the whole tree gives, but compiled once per distinct
    leaf shape (~20 small programs) instead of one RNG fusion per leaf (~550 for an XL model: minutes)."""
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [_draw(keys, i, s.shape, dtype) for i, s in enumerate(leaves)])


def step_fn(model):
    def step(params, inputs, guidance):
        out = model.apply({"params": params}, **inputs)
        c = inputs["x"].shape[-1]
        eps_c, eps_u = jnp.split(out[..., :c], 2, axis=0)
        return eps_u + guidance * (eps_c - eps_u)

    return jax.jit(step)



# first match wins; patterns are matched against the lower-cased kernel name
CATEGORIES = [
    ("attention (cuDNN / flash)", r"cudnn|flash|fmha|sdpa|attn_fwd"),
    ("int8 GEMM: Pallas Mosaic (wgmma + epilogue)", r"mosaic|int8_gemm|wgmma_int8|_s8_|ws_gemm"),
    ("Pallas Triton (quantize / producer / w4a8)", r"quantize|producer|w4a8|triton"),
    ("GEMM: cuBLAS/cuBLASLt (bf16 or int8)", r"gemm|xmma|cublas|cutlass|sm90_|sm80_|nvjet"),
    ("transpose / copy", r"transpose|copy|memcpy|memset"),
    ("XLA reduction fusions (LayerNorm, absmax, ...)", r"reduce|reduction"),
    ("XLA elementwise fusions", r"fusion|loop_|broadcast|convert|add|multiply"),
]


def categorize(name: str) -> str:
    low = name.lower()
    for cat, pat in CATEGORIES:
        if re.search(pat, low):
            return cat
    return "other"


def _load_trace(folder: Path) -> dict:
    files = sorted(folder.rglob("*.trace.json.gz")) + sorted(folder.rglob("perfetto_trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no trace file under {folder}: {[str(p) for p in folder.rglob('*')][:20]}")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)


def gpu_kernel_times(trace: dict) -> tuple[dict[str, float], dict]:
    """{kernel name: total µs} over the GPU stream lines, and a debug record of the lines seen."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pnames, tnames = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            pnames[e["pid"]] = e.get("args", {}).get("name", "")
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            tnames[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    gpu_pids = {p for p, n in pnames.items() if "gpu" in n.lower() and "host" not in n.lower()}
    # kernels live on "Stream #..." lines; "XLA Ops"/"XLA Modules" lines repeat the same time
    stream = {k for k, n in tnames.items() if k[0] in gpu_pids and "stream" in n.lower()}
    times: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in stream:
            times[e.get("name", "?")] += float(e.get("dur", 0.0))
    debug = {"gpu_processes": [pnames[p] for p in gpu_pids],
             "stream_lines": sorted({tnames[k] for k in stream})[:20]}
    if not stream:  # say what the trace holds instead
        debug["all_processes"] = sorted(set(pnames.values()))[:30]
        debug["all_lines"] = sorted(set(tnames.values()))[:40]
    return dict(times), debug


def profile_variant(step, args: tuple, steps: int) -> tuple[dict[str, float], dict]:
    jax.block_until_ready(step(*args))  # compile + warm
    jax.block_until_ready(step(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                out = step(*args)
            jax.block_until_ready(out)
        times, debug = gpu_kernel_times(_load_trace(Path(d)))
    return {k: v / steps for k, v in times.items()}, debug


def summarize(times: dict[str, float]) -> dict:
    cats: dict[str, float] = collections.defaultdict(float)
    for k, v in times.items():
        cats[categorize(k)] += v
    total = sum(times.values())
    top = sorted(times.items(), key=lambda kv: -kv[1])[:25]
    return {"gpu_busy_ms": total / 1e3,
            "categories_ms": {k: round(v / 1e3, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": [(k[:120], round(v / 1e3, 3), categorize(k)) for k, v in top]}
