"""Where the time of a real generation goes: the whole ``vidq generate`` pipeline at release size with random
weights — T5-XXL text encoding (bf16, and int8 weight-only), 20 DPM-Solver++ steps of PixArt-Σ-XL/2 at
1024² with CFG (bf16 vs quantized presets), SDXL-VAE decoding — each stage timed.

Shapes come from ``../shared/fixtures/xl_keys`` (``pixart-diffusers``, ``t5-encoder``, ``sdxl-vae``: the
released checkpoints' key tables run through the converters); weights are random, drawn on the device in
bf16 (the VAE in float32, as the pipelines upcast it). Each row runs :func:`vidq_jax.generate.run_parts`
twice on the same parts: ``cold`` (compilation included) and ``warm`` (the compiled pipeline; what a
second generation costs). Text encoding sees ``--prompts`` prompts plus the empty null caption at 300
tokens; tokens are stand-ins (hashed words), which changes nothing of the cost.

    python -m benchmarks.bench_generate [--presets dynamic-w8a8,viditq-w8a8] [--text-encoder bf16,w8-only] [--prompts 1] [--steps 20] [--tiny]

Writes ``benchmarks/results/generate.json`` and ``generate.md`` (``--tiny``: ``generate_tiny.*``, fixture-size
models on the CPU: a smoke run of the same code, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.common import REPO, environment, peak_memory_bytes, results_path, title
from conversion import convert_state_dict
from conversion.fixtures import load_xl_keys, synthesize_state_dict
from vidq_jax.checkpoint import params_nbytes
from vidq_jax.generate import Parts, Settings, run_parts
from vidq_jax.text_encoder import TextEncoder, Tokenizer, quantize_text_encoder

# (xl_keys name, arch) of each part; the tiny run takes the fixture-size models instead
PARTS = {"transformer": ("pixart-diffusers", "pixart-diffusers"), "vae": ("sdxl-vae", "sd-vae"),
         "text_encoder": ("t5-encoder", "t5-encoder")}
TINY_FIXTURES = {"transformer": "pixart_diffusers/transformer", "vae": "sd_vae_kl/vae",
                 "text_encoder": "t5_v1_1_encoder/text_encoder"}


def random_params(model, dtype, key: jax.Array):
    """Random params of ``model`` drawn on the device: matrices N(0, 0.02), vectors (norm scales, biases) ones /
    zeros-ish N(1, 0.02) — values that keep the activations finite through 24 T5 blocks."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    leaves, tree = jax.tree_util.tree_flatten(shapes)

    @jax.jit
    def draw(k):
        keys = jax.random.split(k, len(leaves))
        vals = [(1.0 if len(s.shape) == 1 else 0.0) + 0.02 * jax.random.normal(kk, s.shape, jnp.float32)
                for kk, s in zip(keys, leaves)]
        return jax.tree_util.tree_unflatten(tree, [v.astype(dtype) for v in vals])

    return draw(key)


def build_part(part: str, tiny: bool):
    """The module of a part at release size, from its key table (``--tiny``: the fixture's, CPU-sized)."""
    from conversion import load_checkpoint
    from conversion.fixtures import default_fixtures_dir

    name, arch = PARTS[part]
    if tiny:
        return load_checkpoint(Path(default_fixtures_dir()) / TINY_FIXTURES[part], arch)[0]
    listing = load_xl_keys(name)
    return convert_state_dict(synthesize_state_dict(listing), arch, listing.get("saved_config") or listing["config"])[0]


def hashed_tokenizer(vocab: int) -> Tokenizer:
    """Stand-in tokens: each word hashed into the vocabulary (ids 3..vocab-1; the cost is the same)."""
    return Tokenizer(lambda text: [3 + zlib.crc32(w.encode()) % (vocab - 3) for w in text.split()], source="hashed")


def make_parts(tiny: bool, dtype, text_quant: str | None) -> tuple[Parts, dict]:
    key = jax.random.key(0, impl="rbg")  # threefry draws of ~700 leaves compile for minutes
    sizes = {}
    t0 = time.perf_counter()
    model = build_part("transformer", tiny).clone(dtype=dtype)
    params = random_params(model, dtype, jax.random.fold_in(key, 1))
    vae = build_part("vae", tiny)
    vparams = random_params(vae, jnp.float32, jax.random.fold_in(key, 2))
    t5 = build_part("text_encoder", tiny).clone(dtype=dtype)
    tparams = random_params(t5, dtype, jax.random.fold_in(key, 3))
    jax.block_until_ready((params, vparams, tparams))
    sizes["t5_bytes_bf16"] = params_nbytes(tparams)
    if text_quant:
        tparams = jax.block_until_ready(quantize_text_encoder(t5, tparams, text_quant))
    sizes.update(transformer_bytes=params_nbytes(params), vae_bytes=params_nbytes(vparams),
                 t5_bytes=params_nbytes(tparams), build_s=round(time.perf_counter() - t0, 2))
    max_length = int(model.config.model_max_length)
    text = TextEncoder(hashed_tokenizer(t5.config.vocab_size), t5, tparams, max_length)
    parts = Parts(model, params, {"arch": "pixart-diffusers"}, None, "sd-vae", vae, vparams, text,
                  {"transformer": "random PixArt-Σ-XL/2 (pixart-diffusers)", "vae": "random SDXL VAE",
                   "text_encoder": "random T5-v1.1-XXL encoder"})
    return parts, sizes


PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed, cinematic lighting"


def run(presets: list[str], *, tiny: bool, prompts: int, steps: int, text_quant: list[str | None],
        tile: bool, out: Path) -> list[dict]:
    """Every (text encoder, transformer) row; the results are rewritten after each row (a time limit keeps
    what was measured)."""
    dtype = jnp.float32 if tiny else jnp.bfloat16
    rows = []
    for tq in text_quant:
        parts, sizes = make_parts(tiny, dtype, tq)
        print(f"[generate] parts ready (text encoder {tq or 'bf16'}): {json.dumps(sizes)}", flush=True)
        for preset in presets:
            settings_kw = dict(preset=None if preset == "bf16" else preset, steps=steps, batch_size=prompts,
                               dtype="fp32" if tiny else "bf16", tile=tile, progress=False,
                               backend="auto", text_encoder_quant=tq)
            row = {"model": "PixArt-Σ-XL/2 1024² + T5-XXL + SDXL VAE" if not tiny else "fixture-size parts [toy size]",
                   "transformer": preset, "text_encoder": tq or ("fp32" if tiny else "bf16"), "prompts": prompts,
                   "steps": steps, "tiny": tiny, **sizes}
            try:
                for phase in ("cold", "warm"):
                    with tempfile.TemporaryDirectory() as out:
                        rec = run_parts(parts, [PROMPT] * prompts, Settings(out_dir=Path(out), **settings_kw))
                    row[phase] = rec["timings_s"]
                    print(f"[generate/{preset}/{tq or 'bf16'}] {phase}: {json.dumps(rec['timings_s'])}", flush=True)
                row["peak_memory_bytes"] = peak_memory_bytes()
            except Exception as e:  # noqa: BLE001 - record (e.g. OOM) and go on
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                print(row["error"], flush=True)
            rows.append({**row, **environment()})
            save(rows, out)
        del parts
    return rows


STAGES = ("encode_text", "calibrate", "quantize", "sample", "decode", "write")


def save(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    write_md(rows, out.with_suffix(".md"))


def write_md(rows: list[dict], path: Path) -> None:
    env = rows[0]
    lines = ["# " + title(f"`vidq generate` stages, {env['gpu']}, JAX {env['jax_version']}, {env['date']}",
                          any(r.get("tiny") for r in rows)), "",
             f"{rows[0]['model']}; {rows[0]['prompts']} prompt(s) in one batch, {rows[0]['steps']} steps, CFG. "
             "Seconds per stage of the warm run (compiled; cold run incl. compilation in brackets).", "",
             "| transformer | text encoder | " + " | ".join(STAGES) + " | total | peak GPU mem GiB |",
             "|---|---|" + "---|" * (len(STAGES) + 2)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['transformer']} | {r['text_encoder']} | error: {r['error'][:100]} |")
            continue
        w, c = r["warm"], r["cold"]
        cells = [f"{w[s]:.2f} ({c.get(s, 0):.1f})" if s in w else "" for s in STAGES]
        pm = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "n/a"
        lines.append(f"| {r['transformer']} | {r['text_encoder']} | " + " | ".join(cells)
                     + f" | {w['total']:.2f} ({c['total']:.1f}) | {pm} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="dynamic-w8a8,viditq-w8a8",
                    help="quantization presets compared with bf16 (comma-separated)")
    ap.add_argument("--text-encoder", default="bf16,w8-only", help="T5 variants: bf16 and/or w8-only")
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tile", action="store_true", help="tiled VAE decoding")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/generate.json, generate_tiny.json with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="fixture-size parts on the CPU (smoke run of the same code)")
    args = ap.parse_args(argv)
    presets = ["bf16"] + [p for p in args.presets.split(",") if p and p != "bf16"]
    text_quant = [None if t == "bf16" else t for t in args.text_encoder.split(",")]
    out = Path(results_path(REPO / "benchmarks" / "results" / "generate.json", args.out, args.tiny))
    run(presets, tiny=args.tiny, prompts=args.prompts, steps=args.steps, text_quant=text_quant, tile=args.tile, out=out)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
