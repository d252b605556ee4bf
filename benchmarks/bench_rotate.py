"""ViDiT-Q's online rotation at memory speed? ``rotate_quantize`` against the plain quantizer (GPU).

``python -m benchmarks.bench_rotate [--out DIR] [--tiny] [--batch 8] [--no-sweep] [--only fast,pack]
[--k 4608] [--producer]`` writes
``rotate.json`` + ``rotate.md`` under ``--out`` (default ``benchmarks/results``). At
M = 8192 / 32768 and K = 1152 / 4608 (bf16 activations, random ±1 signs), in one run:

* ``copy_floor`` — an XLA read-bf16 / write-int8 pass (what a one-pass kernel can reach);
* ``quantize_triton`` — (a) the unrotated Pallas-Triton quantizer ``pallas_kernels.quantize_per_token``;
* ``xla_rotation+quantize`` — (b) today's path: ``vidq_jax.quant.hadamard.hadamard_transform``
  (float32, XLA) then the Triton quantizer; ``xla_fused_ref`` — the jitted reference;
* ``kernel:<name>`` — (c) every tiling of ``pallas_kernels.ops.rotate_quantize`` in the sweep (the
  stored one first, also with in-kernel smoothing: ``+smooth``), each checked against the reference
  (max |dq|, ±1 flips, scale error) in the same row.

Every row: ``ms`` (GPU time per call: ``--batch`` calls inside one jit, median over repetitions),
``vs_quantizer`` (ratio to (a); target <= 1.2), ``vs_floor`` (ratio to bytes read + written over the
HBM bandwidth of the GPU, when known) and the GPU name, JAX version and date. A variant that fails to
compile or run is a row with its ``error``, so one GPU call tells everything. ``--tiny`` runs toy
shapes (CPU smoke test, Triton in interpret mode) and marks every row ``tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks.common import environment, median_time, title
from pallas_kernels._compat import on_gpu
from pallas_kernels.ops.rotate_quantize import RotateTiling, rotate_tiling, triton_rotate_quantize
from vidq_jax.quant.hadamard import base_hadamard, hadamard_factors, hadamard_transform

SHAPES = [(8192, 1152), (8192, 4608), (32768, 1152), (32768, 4608)]
TINY_SHAPES = [(24, 144), (9, 1152)]
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}  # SXM datasheet figures


def sweep(k: int) -> dict[str, RotateTiling]:
    """The stored tiling, then the alternatives worth measuring at this K (see the folder's NOTES.md)."""
    cfgs = {"stored": rotate_tiling(k)}
    mma = lambda **kw: RotateTiling(variant="mma", **kw)  # noqa: E731
    packed = {"pack_int8": True, "hoist_ms": True}
    fast = {**packed, "prescale": True}
    if k == 1152:
        cfgs.update({
            "mma_w16_g2_nw1_bm4_padblock": mma(w=16, grow=2, num_warps=1, bm=4, pad_block=True),
            "mma_w16_g2_nw1_bm16_loop": mma(w=16, grow=2, num_warps=1, bm=16, unroll=False),
            "mma_w16_g2_nw1_bm8": mma(w=16, grow=2, num_warps=1, bm=8),
            "mma_w16_g2_nw2_bm4": mma(w=16, grow=2, num_warps=2, bm=4),
            "mma_w16_g2_nw1_bm4_loop": mma(w=16, grow=2, num_warps=1, bm=4, unroll=False),
            "mma_w32_g1_nw1_bm4": mma(w=32, num_warps=1, bm=4),
            "mma_w32_g1_nw2_bm1": mma(w=32, num_warps=2, bm=1),
            "mma_w32_g1_nw4_bm1": mma(w=32, num_warps=4, bm=1),
            "mma_w16_g2_nw1_bm4_bf16x3": mma(w=16, grow=2, num_warps=1, bm=4, split="bf16x3"),
            # static counts (NOTES.md): pack = codes packed in PTX + the multiplier loaded once per
            # program (0.70 instr/elem at bm4); fast = pack + the fp16 scale on x in bf16 (0.64-0.60)
            "mma_w16_g2_nw1_bm4_pack": mma(w=16, grow=2, num_warps=1, bm=4, **packed),
            "mma_w16_g2_nw1_bm4_fast": mma(w=16, grow=2, num_warps=1, bm=4, **fast),
            "mma_w16_g2_nw1_bm8_fast": mma(w=16, grow=2, num_warps=1, bm=8, **fast),
            "mma_w16_g2_nw1_bm16_fast": mma(w=16, grow=2, num_warps=1, bm=16, **fast),
            "mma_w16_g2_nw1_bm32_loop_fast": mma(w=16, grow=2, num_warps=1, bm=32, unroll=False,
                                                 **fast),
            # option (b), H_b as signed sums on the CUDA cores: spills, ~60 s to compile
            "fma_bm16_nw4": RotateTiling(variant="fma", bm=16, num_warps=4),
            # latency / occupancy (NOTES.md, session 7): pf = next row's loads before this row's
            # math; ns = Triton's cp.async pipeline of the row loop; pN = persistent grid of N
            # programs (132 SMs x 13 / 12 / 10 resident one-warp programs)
            "lat_w16_g2_nw1_bm8_fast_pf": mma(w=16, grow=2, num_warps=1, bm=8, prefetch=True, **fast),
            "lat_w16_g2_nw1_bm4_loop_fast_pf": mma(w=16, grow=2, num_warps=1, bm=4, unroll=False,
                                                   prefetch=True, **fast),
            "lat_w16_g2_nw1_bm8_loop_fast_pf": mma(w=16, grow=2, num_warps=1, bm=8, unroll=False,
                                                   prefetch=True, **fast),
            "lat_w16_g2_nw1_bm8_loop_fast_ns2": mma(w=16, grow=2, num_warps=1, bm=8, unroll=False,
                                                    num_stages=2, **fast),
            "lat_w16_g2_nw1_bm8_loop_fast_ns3": mma(w=16, grow=2, num_warps=1, bm=8, unroll=False,
                                                    num_stages=3, **fast),
            "lat_w16_g2_nw1_loop_fast_p1716": mma(w=16, grow=2, num_warps=1, bm=1, unroll=False,
                                                  programs=1716, **fast),
            "lat_w16_g2_nw1_loop_fast_pf_p1716": mma(w=16, grow=2, num_warps=1, bm=1, unroll=False,
                                                     prefetch=True, programs=1716, **fast),
            "lat_w16_g2_nw1_loop_fast_pf_p1584": mma(w=16, grow=2, num_warps=1, bm=1, unroll=False,
                                                     prefetch=True, programs=1584, **fast),
            "lat_w16_g2_nw1_loop_fast_ns3_p1320": mma(w=16, grow=2, num_warps=1, bm=1, unroll=False,
                                                      num_stages=3, programs=1320, **fast),
        })
    elif k == 4608:
        cfgs.update({
            "mma_w32_g4_nw2_padblock": mma(w=32, grow=4, num_warps=2, pad_block=True),
            "mma_w32_g4_nw2_bm8_loop": mma(w=32, grow=4, num_warps=2, bm=8, unroll=False),
            "mma_w32_g4_nw4": mma(w=32, grow=4, num_warps=4),
            "mma_w32_g2_nw2": mma(w=32, grow=2, num_warps=2),
            "mma_w32_g2_nw1": mma(w=32, grow=2, num_warps=1),
            "mma_w64_g2_nw2": mma(w=64, grow=2, num_warps=2),
            "mma_w16_g4_nw2": mma(w=16, grow=4, num_warps=2),
            "mma_w32_g1_nw4": mma(w=32, num_warps=4),
            "mma_w32_g4_nw2_bf16x3": mma(w=32, grow=4, num_warps=2, split="bf16x3"),
            # rows looped in one program (the base, signs and H_w loaded once); pack / fast as above
            # (static counts 0.71 / 0.68-0.60 instr/elem against 0.89 stored, NOTES.md)
            "mma_w32_g4_nw2_bm8_loop_pack": mma(w=32, grow=4, num_warps=2, bm=8, unroll=False,
                                                **packed),
            "mma_w32_g4_nw2_bm8_loop_fast": mma(w=32, grow=4, num_warps=2, bm=8, unroll=False,
                                                **fast),
            "mma_w32_g4_nw2_bm16_loop_fast": mma(w=32, grow=4, num_warps=2, bm=16, unroll=False,
                                                 **fast),
            "mma_w32_g4_nw2_bm32_loop_fast": mma(w=32, grow=4, num_warps=2, bm=32, unroll=False,
                                                 **fast),
            "mma_w32_g4_nw4_bm8_loop_fast": mma(w=32, grow=4, num_warps=4, bm=8, unroll=False,
                                                **fast),
            "mma_w32_g4_nw1_bm8_loop_fast": mma(w=32, grow=4, num_warps=1, bm=8, unroll=False,
                                                **fast),
            "mma_w32_g4_nw1_bm32_loop_fast": mma(w=32, grow=4, num_warps=1, bm=32, unroll=False,
                                                 **fast),
            "mma_w32_g2_nw1_pack": mma(w=32, grow=2, num_warps=1, pack_int8=True),
            "mma_w32_g2_nw1_bm8_loop_fast_merge": mma(w=32, grow=2, num_warps=1, bm=8, unroll=False,
                                                      merge_absmax=True, **fast),
            "mma_w32_g2_nw1_bm32_loop_fast_merge": mma(w=32, grow=2, num_warps=1, bm=32,
                                                       unroll=False, merge_absmax=True, **fast),
            # latency / occupancy (NOTES.md, session 7), names as at K = 1152; pN = 132 SMs x the
            # resident programs per SM of the static compile (2 x 4 or 8 warps, 8 x 1 warp)
            "lat_w32_g4_nw4_bm8_loop_fast_pf": mma(w=32, grow=4, num_warps=4, bm=8, unroll=False,
                                                   prefetch=True, **fast),
            "lat_w32_g4_nw4_loop_fast_pf_p264": mma(w=32, grow=4, num_warps=4, bm=1, unroll=False,
                                                    prefetch=True, programs=264, **fast),
            "lat_w32_g4_nw8_bm8_loop_fast_pf": mma(w=32, grow=4, num_warps=8, bm=8, unroll=False,
                                                   prefetch=True, **fast),
            "lat_w32_g4_nw8_loop_fast_pf_p264": mma(w=32, grow=4, num_warps=8, bm=1, unroll=False,
                                                    prefetch=True, programs=264, **fast),
            "lat_w32_g2_nw4_bm8_loop_fast_merge_pf": mma(w=32, grow=2, num_warps=4, bm=8, unroll=False,
                                                         merge_absmax=True, prefetch=True, **fast),
            "lat_w32_g2_nw4_bm8_loop_fast_merge_ns2": mma(w=32, grow=2, num_warps=4, bm=8, unroll=False,
                                                          merge_absmax=True, num_stages=2, **fast),
            "lat_w32_g2_nw2_bm8_loop_fast_merge_pf": mma(w=32, grow=2, num_warps=2, bm=8, unroll=False,
                                                         merge_absmax=True, prefetch=True, **fast),
            "lat_w32_g2_nw1_loop_fast_merge_p1056": mma(w=32, grow=2, num_warps=1, bm=1, unroll=False,
                                                        merge_absmax=True, programs=1056, **fast),
        })
    return cfgs


def rotation_case(seed: int, m: int, k: int, n: int):
    """``n`` fresh bf16 activations with per-channel magnitudes (a few outlier channels), the signs,
    smoothing multipliers and the base matrix of K."""
    ks = jax.random.split(jax.random.key(seed), n + 3)
    chan = jnp.exp(jax.random.normal(ks[0], (k,))).at[:: max(1, k // 16)].multiply(30.0)
    xs = tuple((jax.random.normal(kk, (m, k)) * 3.0 * chan).astype(jnp.bfloat16) for kk in ks[3:])
    signs = jnp.where(jax.random.bernoulli(ks[1], 0.5, (k,)), 1.0, -1.0)
    smooth = jax.random.uniform(ks[2], (k,), minval=0.3, maxval=3.0)
    return xs, signs, smooth, base_hadamard(hadamard_factors(k)[0])


def compare(out, ref) -> dict:
    (q, s), (qr, sr) = out, ref
    d = np.abs(np.asarray(q, np.int32) - np.asarray(qr, np.int32))
    rel = np.abs(np.asarray(s, np.float64) / np.asarray(sr, np.float64) - 1)
    return {"max_dq": int(d.max()), "flips": int((d > 0).sum()), "values": int(d.size),
            "scale_rel_err": float(rel.max())}


def hbm_floor_ms(m: int, k: int) -> float | None:
    gpu = environment()["gpu"]
    bw = next((v for name, v in HBM_BYTES_PER_S.items() if name in gpu), None)
    if bw is None:
        return None
    return (m * k * 2 + m * k + m * 4) / bw * 1e3  # read bf16 x, write int8 q + float32 scales


def bench_shape(m: int, k: int, batch: int, do_sweep: bool, tiny: bool, iters: int,
                only: tuple[str, ...] = (), producer: bool = False) -> list[dict]:
    env = environment()
    base = {**env, "M": m, "K": k, "tiny": tiny, "batch": batch}
    floor = hbm_floor_ms(m, k)
    rows: list[dict] = []
    sets = [rotation_case(seed, m, k, batch) for seed in (0, 1)]
    signs, smooth, hb = sets[0][1], sets[0][2], sets[0][3]
    arg_sets = [(s[0],) for s in sets]
    x0 = sets[0][0][0]
    ref = jax.jit(pk.rotate_quantize_ref)(x0, hb, signs)
    ref_smooth = jax.jit(pk.rotate_quantize_ref)(x0, hb, signs, smooth)

    def many(f):
        return jax.jit(lambda xs: [f(x) for x in xs])

    def timed(name: str, f, check=None, note: str = "", extra: dict | None = None) -> None:
        row = {**base, "variant": name, "note": note, **(extra or {})}
        try:
            fn = many(f)
            outs = fn(arg_sets[0][0])
            if check is not None:
                row.update(compare(outs[0], check))
            row["ms"] = median_time(fn, arg_sets, iters=iters)["median_ms"] / batch
        except Exception as e:  # noqa: BLE001 - a variant that fails is a result too
            row["error"] = f"{type(e).__name__}: {e}"[:400]
            traceback.print_exc()
        rows.append(row)
        print(json.dumps({kk: row.get(kk) for kk in ("M", "K", "variant", "ms", "max_dq", "flips",
                                                     "scale_rel_err", "error")}), flush=True)

    timed("copy_floor", lambda x: (x * 0.5).astype(jnp.int8), note="XLA read bf16 / write int8")
    timed("quantize_triton", lambda x: pk.quantize_per_token(x, backend="triton"),
          note="(a) unrotated Triton quantizer")
    interpret = not on_gpu()
    if producer:  # the fused producers (issue 12) against the passes they replace, two adaLN groups
        producer_rows(timed, x0, hb, signs, smooth, interpret,
                      {n: c for n, c in sweep(k).items() if any(o in n for o in only)} if only and not tiny else {})
        return finish(rows, floor)
    timed("quantize_xla", lambda x: pk.quantize_per_token(x, backend="xla"))
    timed("xla_rotation+quantize",
          lambda x: pk.quantize_per_token(hadamard_transform(x.astype(jnp.float32), signs),
                                          backend="triton"),
          check=ref, note="(b) today: hadamard_transform (XLA, float32) + Triton quantizer")
    timed("xla_fused_ref", lambda x: pk.rotate_quantize_ref(x, hb, signs), check=ref,
          note="jitted reference")
    cfgs = sweep(k) if do_sweep and not tiny else {"stored": rotate_tiling(k)}
    if only:  # the stored tiling always, then the names holding one of the substrings
        cfgs = {n: c for n, c in cfgs.items() if n == "stored" or any(o in n for o in only)}
    for name, cfg in cfgs.items():
        extra = {"tiling": dataclasses.asdict(cfg)}
        timed(f"kernel:{name}",
              lambda x, cfg=cfg: triton_rotate_quantize(x, hb, signs, cfg=cfg, interpret=interpret),
              check=ref, note="(c) rotate_quantize", extra=extra)
        if name == "stored":
            scfg = rotate_tiling(k, smooth=True)
            timed("kernel:stored+smooth",
                  lambda x, cfg=scfg: triton_rotate_quantize(x, hb, signs, smooth, cfg=cfg,
                                                             interpret=interpret),
                  check=ref_smooth, note="(c) with in-kernel smoothing",
                  extra={"tiling": dataclasses.asdict(scfg)})
    return finish(rows, floor)


def finish(rows: list[dict], floor: float | None) -> list[dict]:
    """Each row's ratios to the unrotated Triton quantizer and to the HBM floor."""
    qt = next((r.get("ms") for r in rows if r["variant"] == "quantize_triton"), None)
    for r in rows:
        if r.get("ms") is not None:
            r["vs_quantizer"] = r["ms"] / qt if qt else None
            r["floor_ms"] = floor
            r["vs_floor"] = r["ms"] / floor if floor else None
    return rows


def producer_rows(timed, x0, hb, signs, smooth, interpret: bool, tilings: dict | None = None) -> None:
    """``--producer``: what a rotated layer's input costs, separate passes vs fused into the rotating quantizer —
    the adaLN producer (LayerNorm + ``(1 + scale) · smooth``, ``shift · smooth``, 2 row groups: qkv / fc1
    inputs) and the bf16 smoothing (attention outputs, fc1's output, the residual stream). Two row groups (one for an
    odd toy M)."""
    from pallas_kernels.ops.rotate_quantize import input_ref

    m, k = x0.shape  # the first timed input: the rows' checks
    ks, g = jax.random.split(jax.random.key(k), 2), 2 if m % 2 == 0 else 1
    pn = ((1.0 + 0.3 * jax.random.normal(ks[0], (g, k))) * smooth, 0.2 * jax.random.normal(ks[1], (g, k)) * smooth,
          1e-6)
    ref_pn = jax.jit(lambda x: pk.rotate_quantize_ref(x, hb, signs, prenorm=pn, bf16_input=True))
    ref_sm = jax.jit(lambda x: pk.rotate_quantize_ref(x, hb, signs, smooth, bf16_input=True))
    produce = lambda x: input_ref(x, prenorm=pn, bf16_input=True).astype(jnp.bfloat16)  # noqa: E731
    scale = lambda x: input_ref(x, smooth, bf16_input=True).astype(jnp.bfloat16)  # noqa: E731
    cfg = rotate_tiling(k, prenorm=True, m=m)  # what the dispatch picks for these rows (M-bucket rows included)
    cfg_sm = rotate_tiling(k, m=m)
    timed("adaln_xla+quantize", lambda x: pk.quantize_per_token(produce(x), backend="triton"),
          note="unrotated layer: XLA LayerNorm+modulate+smooth, Triton quantizer")
    timed("adaln_xla+rotate", lambda x: triton_rotate_quantize(produce(x), hb, signs, cfg=cfg_sm,
                                                                 interpret=interpret),
          check=ref_pn(x0), note="session 8: XLA producer pass + rotating quantizer")
    for name, c in (("", cfg), ("_hoist" if not cfg.hoist_pn else "_nohoist",
                                dataclasses.replace(cfg, hoist_pn=not cfg.hoist_pn)),
                    ("_2pass", dataclasses.replace(cfg, pn_two_pass=True))):
        timed(f"adaln_fused_rotate{name}",
              lambda x, c=c: triton_rotate_quantize(x, hb, signs, cfg=c, interpret=interpret, prenorm=pn,
                                                    bf16_input=True),
              check=ref_pn(x0), note="one pass: LayerNorm + adaLN + smooth + rotation + quantize",
              extra={"tiling": dataclasses.asdict(c)})
    timed("smooth_xla+quantize", lambda x: pk.quantize_per_token(scale(x), backend="triton"),
          note="unrotated layer: XLA smoothing pass, Triton quantizer")
    timed("smooth_xla+rotate", lambda x: triton_rotate_quantize(scale(x), hb, signs, cfg=cfg_sm,
                                                                  interpret=interpret),
          check=ref_sm(x0), note="session 8: XLA smoothing pass + rotating quantizer")
    timed("smooth_fused_rotate",
          lambda x: triton_rotate_quantize(x, hb, signs, smooth, cfg=cfg_sm, interpret=interpret, bf16_input=True),
          check=ref_sm(x0), note="one pass: bf16 smoothing with the signs", extra={"tiling": dataclasses.asdict(cfg_sm)})
    for name, c in (tilings or {}).items():  # --only: the sweep's tilings with the producers (prenorm with the
        # affine hoisted where the tiling allows it)
        c_pn = dataclasses.replace(c, hoist_pn=c.variant == "mma" and not c.programs and k <= 1152)
        timed(f"adaln_fused:{name}", lambda x, c=c_pn: triton_rotate_quantize(
            x, hb, signs, cfg=c, interpret=interpret, prenorm=pn, bf16_input=True),
            check=ref_pn(x0), note="prenorm, sweep tiling", extra={"tiling": dataclasses.asdict(c_pn)})
        timed(f"smooth_fused:{name}", lambda x, c=c: triton_rotate_quantize(
            x, hb, signs, smooth, cfg=c, interpret=interpret, bf16_input=True),
            check=ref_sm(x0), note="bf16 smoothing, sweep tiling", extra={"tiling": dataclasses.asdict(c)})


def to_markdown(rows: list[dict]) -> str:
    env = rows[0] if rows else environment()
    heading = f"Online rotation + per-token int8 ({env.get('gpu')}, JAX {env.get('jax_version')}, {env.get('date')})"
    lines = ["# " + title(heading, any(r.get("tiny") for r in rows)), "",
             "`python -m benchmarks.bench_rotate`: GPU time per call (batches of calls inside one "
             "jit). `vs_quantizer` = ratio to the unrotated Triton quantizer (target <= 1.2); "
             "`vs_floor` = ratio to (bytes read + written) / HBM bandwidth. Checks against the "
             "float32 reference: max |dq|, number of ±1 flips, max scale error.", "",
             "| M | K | variant | ms | vs quantizer | vs floor | max dq | flips / values | "
             "scale err | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda key, fmt: (fmt.format(r[key]) if r.get(key) is not None else "")  # noqa: E731
        note = r.get("note", "") + (" (tiny)" if r.get("tiny") else "")
        if r.get("error"):
            note = f"ERROR {r['error'][:160]}"
        flips = f"{r['flips']} / {r['values']}" if "flips" in r else ""
        lines.append(f"| {r['M']} | {r['K']} | {r['variant']} | {f('ms', '{:.4f}')} | "
                     f"{f('vs_quantizer', '{:.2f}')} | {f('vs_floor', '{:.2f}')} | "
                     f"{f('max_dq', '{}')} | {flips} | {f('scale_rel_err', '{:.1e}')} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke test), rows marked tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-sweep", action="store_true", help="only the stored tiling")
    ap.add_argument("--only", default="", help="comma-separated substrings: sweep only the tilings "
                    "whose name holds one (and the stored one), e.g. 'fast,pack'")
    ap.add_argument("--k", default="", help="comma-separated K values to run (default: all)")
    ap.add_argument("--producer", action="store_true", help="only the fused producers against the separate "
                    "passes they replace (adaLN LayerNorm, smoothing); with --only, also on the sweep's tilings "
                    "whose names hold one of its substrings")
    args = ap.parse_args(argv)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    batch = 2 if args.tiny else args.batch
    iters = 1 if args.tiny else args.iters
    only = tuple(o for o in args.only.split(",") if o)
    ks = {int(v) for v in args.k.split(",") if v}
    rows: list[dict] = []
    for m, k in shapes:
        if not ks or k in ks:
            rows += bench_shape(m, k, batch, not args.no_sweep, args.tiny, iters, only, args.producer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = ("producer" if args.producer else "rotate") + ("_tiny" if args.tiny else "")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (out / f"{name}.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
