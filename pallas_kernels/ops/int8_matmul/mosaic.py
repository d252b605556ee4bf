"""Mosaic GPU (Hopper, wgmma) int8 GEMM with an optional fused dequantizing epilogue.

Both operands are K-major in SMEM (``xq (M, K)``, ``wq (N, K)``), as s8 wgmma requires; each
pipeline step issues ``wgmma.mma_async.s32.s8.s8`` into an int32 register accumulator. The
epilogue either stores the int32 accumulator, or computes ``acc * x_scale[m] * w_scale[n]
(+ bias[n])`` in float32 registers and stores ``out_dtype`` (registers -> swizzled SMEM -> TMA).

Two variants, chosen by :class:`MosaicGemmConfig`:

* ``ws=True`` (the tuned default): persistent grid of one CTA per SM looping over output tiles;
  each CTA has a TMA warpgroup and two compute warpgroups (``emit_pipeline_warp_specialized``),
  each computing a ``(tm, tn)`` half of a ``(2*tm, tn)`` tile; with ``chain=True`` the per-tile
  pipelines are chained (START/STEADY/STOP) so the next tile's loads overlap the epilogue.
* ``ws=False``: one warpgroup per CTA, grid over tiles, ``plgpu.emit_pipeline`` keeping one
  wgmma in flight (simple; ~60 % of the ``ws`` variant's throughput on an H200).

Shape requirements (checked by :func:`supports`): K % tk == 0, N % tn == 0. M is padded by the
wrapper to a multiple of the CTA tile (the pad fuses into the producer of ``xq``).

``out_splits = S > 1`` (a fused qkv): the one kernel over the whole ``N = S·C`` weight writes ``S``
arrays ``(M, C)`` (needs ``C % tn == 0``): the tile at column tile ``j`` is stored into output
``j // (C/tn)`` at column tile ``j % (C/tn)`` (:func:`split_tile`; one ``pl.when`` branch per output).
The epilogue operands (scales, bias, zero points, ``beta``) stay indexed by the global column.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import interpret_params, pl, plgpu
from pallas_kernels.ops.int8_matmul.reference import (
    apply_activation,
    check_activation,
    check_rank1,
    check_zero_point,
    gate_rows,
    gemm_ref,
)


@dataclasses.dataclass(frozen=True)
class MosaicGemmConfig:
    tm: int = 128
    tn: int = 128
    tk: int = 128
    stages: int = 4
    # Grid order: "nm" puts N tiles on the fastest-varying grid axis (CTAs that run together
    # share the activation tile; the weights are small enough to live in L2).
    order: str = "nm"
    # Warp-specialized persistent variant: one TMA warpgroup + 2 compute warpgroups, each
    # computing a (tm, tn) half of a (2*tm, tn) CTA tile; grid = number of SMs.
    ws: bool = False
    delay_release: int = 1
    # Chain the per-tile pipelines (START/STEADY/STOP) so the TMA warpgroup prefetches the next
    # tile while the compute warpgroups run the epilogue. Needs delay_release == 0 and
    # (K // tk) % stages == 0; silently disabled otherwise.
    chain: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "MosaicGemmConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def cta_tile_m(cfg: MosaicGemmConfig) -> int:
    return 2 * cfg.tm if cfg.ws else cfg.tm


def fit_config(cfg: MosaicGemmConfig, k: int, n: int) -> MosaicGemmConfig:
    """Shrink tn / tk until they divide N / K (the result may still be unsupported)."""
    tn = next((t for t in (cfg.tn, 128, 64, 32, 16, 8) if t <= cfg.tn and n % t == 0), cfg.tn)
    tk = next((t for t in (cfg.tk, 64, 32) if t <= cfg.tk and k % t == 0), cfg.tk)
    if (tn, tk) == (cfg.tn, cfg.tk):
        return cfg
    # Smaller tiles: keep the simple, always-valid pipeline settings.
    return dataclasses.replace(cfg, tn=tn, tk=tk, chain=False)


# Shared memory per CTA on Hopper (H100 / H200: 227 KiB opt-in); a few hundred bytes of barriers
# come on top of the tiles counted by smem_bytes.
SMEM_LIMIT = 232448
_SMEM_SLACK = 1024


def smem_bytes(cfg: MosaicGemmConfig, out_itemsize: int) -> int:
    """Tile buffers of one CTA: ``stages`` int8 A/B tiles plus the output staging tile(s)."""
    a = cfg.stages * cta_tile_m(cfg) * cfg.tk
    b = cfg.stages * cfg.tn * cfg.tk
    out = (2 if cfg.ws else 1) * cfg.tm * cfg.tn * out_itemsize
    return a + b + out


def fit_smem(cfg: MosaicGemmConfig, n: int, out_itemsize: int) -> MosaicGemmConfig | None:
    """Fewer stages, then narrower N tiles, until the CTA fits in shared memory (a float32 output
    staging tile is twice a bf16 one: the stored bf16 configs overflow with float32 outputs);
    ``None`` if nothing fits."""
    while smem_bytes(cfg, out_itemsize) + _SMEM_SLACK > SMEM_LIMIT:
        if cfg.stages > 2:
            cfg = dataclasses.replace(cfg, stages=cfg.stages - 1)
        elif cfg.tn > 64 and n % (cfg.tn // 2) == 0:
            cfg = dataclasses.replace(cfg, tn=cfg.tn // 2)
        else:
            return None
    return cfg


def supports(k: int, n: int, cfg: MosaicGemmConfig, out_splits: int = 1) -> bool:
    """Whether the kernel takes ``K``, ``N`` with ``cfg`` (``out_splits`` outputs: ``tn`` divides each
    output's ``N / out_splits`` columns)."""
    return (
        plgpu is not None
        and k % cfg.tk == 0
        and n % (cfg.tn * out_splits) == 0
        and cfg.tm % 64 == 0
        and cfg.tk in (32, 64, 128)
        and cfg.tn % 8 == 0
        and cfg.tn <= 256
    )


def _smem_transforms(minor_elems_bytes: int, itemsize: int) -> tuple:
    swizzle = plgpu.find_swizzle(minor_elems_bytes * 8)
    return (
        plgpu.TilingTransform((8, swizzle // itemsize)),
        plgpu.SwizzleTransform(swizzle),
    )


# Optional epilogue operands in argument order after (x, w, xs, ws) (see ``reference.scaled_epilogue_ref``).
EPILOGUE_OPERANDS = ("bias", "w_zero", "x_row_sum", "residual", "gate", "rank1_u", "rank1_beta")


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """Static description of the fused epilogue: which optional operands it reads (``present``, in
    :data:`EPILOGUE_OPERANDS` order), the activation, the tanh form, rows per gate row."""

    present: tuple[str, ...] = ()
    activation: str | None = None
    approx: bool = False
    rows_per_gate: int = 0


def _split_refs(refs: tuple, scaled: bool, present: tuple[str, ...], n_out: int) -> tuple:
    """``(x, w[, xs, ws, *optional], *outs, *scratch)`` -> ``(x, w, xs, ws, {name: ref}, outs, scratch)``
    (``outs``: a tuple of ``n_out`` output refs)."""
    x_g, w_g, *rest = refs
    xs_g = ws_g = None
    ops = {}
    if scaled:
        xs_g, ws_g, *rest = rest
        ops = dict(zip(present, rest[: len(present)]))
        rest = rest[len(present):]
    return x_g, w_g, xs_g, ws_g, ops, tuple(rest[:n_out]), rest[n_out:]


def split_tile(n_idx, tiles_per_out: int) -> tuple:
    """Column tile ``n_idx`` of the whole ``N`` -> ``(output, column tile inside that output)`` when the
    outputs are column blocks of ``tiles_per_out`` tiles each."""
    return n_idx // tiles_per_out, n_idx % tiles_per_out


def _store_tile(smem, o_gs: tuple, rows, cols, n_idx, tn: int) -> None:
    """TMA store of the staged ``(rows, cols)`` tile (column tile ``n_idx``): into the one output, or, with
    several (column blocks of the whole N), into output ``n_idx // (C/tn)`` at its local column tile —
    one ``pl.when`` branch per output (exactly one runs: one store and one commit group per tile, as for a
    single output)."""
    if len(o_gs) == 1:
        plgpu.copy_smem_to_gmem(smem, o_gs[0].at[rows, cols])
        return
    which, local = split_tile(n_idx, o_gs[0].shape[1] // tn)
    local_cols = pl.ds(local * tn, tn)
    for s, o_g in enumerate(o_gs):
        pl.when(which == s)(functools.partial(plgpu.copy_smem_to_gmem, smem, o_g.at[rows, local_cols]))


def _kernel(*refs, cfg: MosaicGemmConfig, k: int, scaled: bool, ep: Epilogue, n_out: int = 1,
            interpret: bool = False):
    x_g, w_g, xs_g, ws_g, ops, o_gs, (o_smem,) = _split_refs(refs, scaled, ep.present, n_out)
    tm, tn, tk = cfg.tm, cfg.tn, cfg.tk
    mi = lax.axis_index("m")
    ni = lax.axis_index("n")
    m_sl = pl.ds(mi * tm, tm)
    n_sl = pl.ds(ni * tn, tn)
    in_tf = _smem_transforms(tk, 1)

    def mainloop(acc_ref):
        def step(_, a_smem, b_smem):
            _mma(acc_ref, a_smem, b_smem, 1, interpret)

        plgpu.emit_pipeline(
            step,
            grid=(k // tk,),
            in_specs=[
                plgpu.BlockSpec((tm, tk), lambda kk: (0, kk), transforms=in_tf, delay_release=1),
                plgpu.BlockSpec((tn, tk), lambda kk: (0, kk), transforms=in_tf, delay_release=1),
            ],
            max_concurrent_steps=cfg.stages,
        )(x_g.at[m_sl, :], w_g.at[n_sl, :])
        if not interpret:
            plgpu.wgmma_wait(0)
        return acc_ref[...]

    acc = _acc_scope(mainloop, (tm, tn), acc_dtype(x_g.dtype), interpret)
    y = _epilogue_values(acc, xs_g, ws_g, ops, mi * tm, n_sl, o_smem.dtype, ep, interpret)
    o_smem[...] = y
    plgpu.commit_smem()
    _store_tile(o_smem, o_gs, m_sl, n_sl, ni, tn)
    plgpu.wait_smem_to_gmem(0)


def _load(ref, layout, interpret: bool):
    """A vector / tile operand of the epilogue in the accumulator's ``layout`` (the CPU interpreter has no
    ``plgpu.load`` and no layouts: a plain read there)."""
    return ref[...] if interpret else plgpu.load(ref, (), layout=layout, optimized=False)


def _mma(acc_ref, a_smem, b_smem, wait: int, interpret: bool) -> None:
    """``acc += a · bᵀ`` of K-major SMEM tiles: one async wgmma (then keep ``wait`` in flight), or in the CPU
    interpreter (no transposed wgmma operand there) the same product in jnp (``reference.gemm_ref``)."""
    if interpret:
        acc_ref[...] += gemm_ref(a_smem[...], b_smem[...])
        return
    plgpu.wgmma(acc_ref, a_smem, b_smem.T)
    plgpu.wgmma_wait(wait)


def _acc_scope(fn, shape: tuple, dtype, interpret: bool, smem=None):
    """``fn(accumulator)``: the wgmma register accumulator (``pl.run_scoped``), or in the CPU interpreter a
    zeroed shared-memory tile: ``smem`` (warp-specialized kernel: allocated with the warpgroup axis
    collective, as the interpreter requires) or a scoped one."""
    if not interpret:
        return pl.run_scoped(fn, plgpu.ACC(shape, dtype))

    def zeroed(acc_ref):
        acc_ref[...] = jnp.zeros(shape, dtype)
        return fn(acc_ref)

    return zeroed(smem) if smem is not None else pl.run_scoped(zeroed, plgpu.SMEM(shape, dtype))


def _epilogue_values(acc, xs_g, ws_g, ops, row0, cols, out_dtype, ep: Epilogue, interpret: bool = False):
    """Accumulator (WGMMA layout, int32 or float32) of the ``(tm, tn)`` tile at rows
    ``row0 + [0, tm)`` -> the epilogue of ``reference.scaled_epilogue_ref`` in ``out_dtype`` (or the
    int32 passthrough): zero-point term in int32, scales, bias, the rank-1 term ``u[m] · beta[n]``,
    activation (``ep.approx``: its tanh form, compiled with ``approx_math``), gate, residual."""
    if xs_g is None:
        return acc
    tm, tn = acc.shape
    rows = pl.ds(row0, tm)
    row_layout = plgpu.Layout.WGMMA.reduce(1)
    col_layout = plgpu.Layout.WGMMA.reduce(0)

    def col_vec(ref):
        return lax.broadcast_in_dim(_load(ref, col_layout, interpret), (tm, tn), [1])

    if "w_zero" in ops:  # exact in int32: acc + (Σ_k q_x)[m] · z_w[n]
        rs = _load(ops["x_row_sum"].at[rows], row_layout, interpret)
        acc = acc + lax.broadcast_in_dim(rs, (tm, tn), [0]) * col_vec(ops["w_zero"].at[cols])
    xs = _load(xs_g.at[rows], row_layout, interpret)
    y = acc.astype(jnp.float32)
    y = y * lax.broadcast_in_dim(xs, (tm, tn), [0])
    y = y * col_vec(ws_g.at[cols])
    if "bias" in ops:
        y = y + col_vec(ops["bias"].at[cols])
    if "rank1_u" in ops:  # reference.rank1_ref: u per row (written by the quantizer), beta per column
        u = _load(ops["rank1_u"].at[rows], row_layout, interpret)
        y = y + lax.broadcast_in_dim(u, (tm, tn), [0]) * col_vec(ops["rank1_beta"].at[cols])
    y = apply_activation(y, ep.activation, in_kernel=True, form="tanh" if ep.approx else "exp")
    if "gate" in ops:  # the tile lies inside one gate row's span (rows_per_gate % tm == 0)
        g = ops["gate"]
        g_row = lax.min(row0 // ep.rows_per_gate, g.shape[0] - 1)  # padded rows: any valid row
        y = y * col_vec(g.at[g_row, cols])
    if "residual" in ops:
        res = _load(ops["residual"].at[rows, cols], plgpu.Layout.WGMMA, interpret)
        y = res.astype(jnp.float32) + y
    return y.astype(out_dtype)


def _approx_gelu(activation, out_dtype, approx_gelu: bool) -> bool:
    """Half-precision outputs with an activation use ``approx_math`` (``tanh.approx.f32``, rel.
    error ~2^-11, below bf16's 2^-8 rounding) unless ``approx_gelu=False``; float32 outputs keep
    the exact form."""
    return approx_gelu and activation is not None and jnp.dtype(out_dtype).itemsize == 2


def _ws_kernel(*refs, cfg: MosaicGemmConfig, k: int, mp: int, n: int, scaled: bool, ep: Epilogue,
               n_out: int = 1, interpret: bool = False):
    x_g, w_g, xs_g, ws_g, ops, o_gs, _ = _split_refs(refs, scaled, ep.present, n_out)
    tm, tn, tk = cfg.tm, cfg.tn, cfg.tk
    cta_m = 2 * tm
    m_iters, n_iters = mp // cta_m, n // tn  # n: the whole N (all outputs)
    out_dtype = o_gs[0].dtype
    in_tf = _smem_transforms(tk, 1)
    out_tf = _smem_transforms(tn * out_dtype.itemsize, out_dtype.itemsize)

    def make_pipeline(body, compute_context, state=None):
        return plgpu.emit_pipeline_warp_specialized(
            body,
            grid=(k // tk,),
            memory_registers=40,
            in_specs=[
                plgpu.BlockSpec((cta_m, tk), lambda kk: (0, kk), transforms=in_tf,
                                memory_space=plgpu.SMEM, delay_release=cfg.delay_release),
                plgpu.BlockSpec((tn, tk), lambda kk: (0, kk), transforms=in_tf,
                                memory_space=plgpu.SMEM, delay_release=cfg.delay_release),
            ],
            wg_axis="wg",
            num_compute_wgs=2,
            max_concurrent_steps=cfg.stages,
            compute_context=compute_context,
            **({"pipeline_state": state} if state is not None else {}),
        )

    ignore = lambda *_, **__: None  # noqa: E731 - allocation shapes only
    chain = cfg.chain and cfg.delay_release == 0 and (k // tk) % cfg.stages == 0
    states = getattr(plgpu, "PipelinePipeline", None)
    chain = chain and states is not None

    def scope(pipeline_allocs, out_smem, *acc_smem):  # acc_smem: the interpreter's accumulators
        wg = lax.axis_index("wg")

        @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
        def _tile_loop(info):
            (lin,) = info.index
            if cfg.order == "nm":
                m_idx, n_idx = lin // n_iters, lin % n_iters
            else:
                n_idx, m_idx = lin // m_iters, lin % m_iters
            cta_rows = pl.ds(m_idx * cta_m, cta_m)
            cols = pl.ds(n_idx * tn, tn)
            wg_row0 = m_idx * cta_m + wg * tm
            wg_rows = pl.ds(wg_row0, tm)

            def compute_context(eval_pipeline):
                def acc_scope(acc_ref):
                    eval_pipeline(acc_ref)
                    acc = acc_ref[...]
                    y = _epilogue_values(acc, xs_g, ws_g, ops, wg_row0, cols, out_dtype, ep, interpret)
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                    out_smem[wg] = y
                    plgpu.commit_smem()
                    _store_tile(out_smem.at[wg], o_gs, wg_rows, cols, n_idx, tn)

                _acc_scope(acc_scope, (tm, tn), acc_dtype(x_g.dtype), interpret,
                           acc_smem[0].at[wg] if interpret else None)

            def mma_body(_, a_smem, b_smem, acc_ref):
                _mma(acc_ref, a_smem.at[pl.ds(wg * tm, tm)], b_smem, cfg.delay_release, interpret)
                return acc_ref

            def run(state):
                make_pipeline(mma_body, compute_context, state)(
                    x_g.at[cta_rows, :], w_g.at[cols, :], allocations=pipeline_allocs
                )

            if chain:
                idx, last = info.local_index, info.num_local_steps - 1
                pl.when(idx == 0)(lambda: run(states.START))
                pl.when((idx > 0) & (idx < last))(lambda: run(states.STEADY))
                pl.when((idx > 0) & (idx == last))(lambda: run(states.STOP))
            else:
                run(None)

    pl.run_scoped(
        scope,
        make_pipeline(ignore, ignore, states.STEADY if chain else None).get_allocations(x_g, w_g),
        plgpu.SMEM((2, tm, tn), out_dtype, transforms=out_tf),
        *((plgpu.SMEM((2, tm, tn), acc_dtype(x_g.dtype)),) if interpret else ()),
        collective_axes="wg",
    )
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _num_sms() -> int:
    return int(getattr(jax.devices()[0], "core_count", 132) or 132)


def _compiler_params(approx_math: bool = False):
    kw = {"approx_math": True} if approx_math else {}
    lane = getattr(plgpu.LoweringSemantics, "Lane", None)
    if lane is not None:
        return plgpu.CompilerParams(lowering_semantics=lane, **kw)
    return plgpu.CompilerParams(**kw)


def acc_dtype(operand_dtype) -> jnp.dtype:
    """wgmma accumulator: int32 for int8 operands, float32 for FP8 (``float8_e4m3fn``) ones."""
    return jnp.dtype(jnp.int32 if jnp.issubdtype(operand_dtype, jnp.integer) else jnp.float32)


def _interpret_kw(interpret: bool) -> dict:
    return {"interpret": interpret_params()} if interpret else {}


def gate_fits(cfg: MosaicGemmConfig, rows_per_gate: int) -> bool:
    """Whether every warpgroup tile (``tm`` rows) lies inside one gate row's span."""
    return rows_per_gate % cfg.tm == 0


@functools.partial(jax.jit, static_argnames=("cfg", "out_dtype", "activation", "approx_gelu", "out_splits",
                                             "interpret"))
def mosaic_int8_gemm(
    xq: jax.Array,
    wq: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    cfg: MosaicGemmConfig,
    out_dtype: jnp.dtype = jnp.int32,
    activation: str | None = None,
    approx_gelu: bool = True,
    w_zero: jax.Array | None = None,
    x_row_sum: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
    out_splits: int = 1,
    interpret: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
    """``xq (M, K) int8`` x ``wq (N, K) int8``.

    Without scales: returns the exact int32 product. With ``x_scale (M,)/(M,1)`` and
    ``w_scale (N,)``: returns the epilogue of ``reference.scaled_epilogue_ref`` cast to
    ``out_dtype``: ``w_zero (N,)`` int32 with ``x_row_sum (M,)`` int32 (zero-point term, int32),
    ``+ bias``, ``+ u[m] · beta[n]`` (``rank1 = (u (M,), beta (N,))``), ``activation`` (``approx_gelu``:
    see :func:`_approx_gelu`), ``gate (G, N)`` (needs :func:`gate_fits`) and ``residual (M, N)``.
    M need not be a multiple of ``cfg.tm`` (padded here); K and N must satisfy :func:`supports`.
    ``out_splits = S > 1``: a tuple of ``S`` arrays ``(M, N / S)``, the column blocks of the result, written
    by the one kernel (no gate / residual; ``cfg.tn`` must divide ``N / S``).
    ``interpret=True``: Mosaic GPU's CPU interpreter (``_compat.interpret_params``: threads, barriers, TMA and
    shared memory simulated, race detector on; the wgmma and the layout-aware loads replaced by their jnp
    equivalents; ``cfg.chain`` off): the CPU twin of the kernel's tiling, pipeline, epilogue and stores.
    """
    m, k = xq.shape
    n = wq.shape[0]
    scaled = x_scale is not None
    check_activation(activation)
    check_zero_point(w_zero, x_row_sum)
    check_rank1(rank1, m, n)
    if not scaled:
        out_dtype = acc_dtype(xq.dtype)
        if activation is not None:
            raise ValueError("an epilogue activation needs the scaled (dequantizing) epilogue")
    out_dtype = jnp.dtype(out_dtype)
    approx = _approx_gelu(activation, out_dtype, approx_gelu)
    rows_per_gate = gate_rows(m, gate)
    if gate is not None and not gate_fits(cfg, rows_per_gate):
        raise ValueError(f"gate rows of {rows_per_gate} tokens do not hold whole {cfg.tm}-row tiles")
    if out_splits > 1 and (gate is not None or residual is not None):
        raise ValueError("residual/gate apply to a whole output: not with out_splits > 1")
    if interpret and cfg.ws and cfg.chain:
        raise ValueError("interpret=True needs cfg.chain=False (the CPU interpreter deadlocks on chained pipelines)")
    if out_splits != 1 and (out_splits < 1 or n % (cfg.tn * out_splits)):
        raise ValueError(f"out_splits={out_splits}: N={n} must split into that many blocks of whole {cfg.tn}-column tiles")
    mp = -(-m // cta_tile_m(cfg)) * cta_tile_m(cfg)
    pad = (lambda a: a) if mp == m else (lambda a: jnp.pad(a, ((0, mp - m),) + ((0, 0),) * (a.ndim - 1)))  # noqa: E731
    xq = pad(xq)
    args = [xq, wq]
    present: list[str] = []
    if scaled:
        args += [pad(jnp.reshape(x_scale, (-1,)).astype(jnp.float32)),
                 jnp.reshape(w_scale, (-1,)).astype(jnp.float32)]
        extra = {
            "bias": None if bias is None else jnp.reshape(bias, (-1,)).astype(jnp.float32),
            "w_zero": None if w_zero is None else jnp.reshape(w_zero, (-1,)).astype(jnp.int32),
            "x_row_sum": None if x_row_sum is None else pad(jnp.reshape(x_row_sum, (-1,)).astype(jnp.int32)),
            "residual": None if residual is None else pad(residual),
            "gate": None if gate is None else gate.astype(jnp.float32),
            "rank1_u": None if rank1 is None else pad(jnp.reshape(rank1[0], (-1,)).astype(jnp.float32)),
            "rank1_beta": None if rank1 is None else jnp.reshape(rank1[1], (-1,)).astype(jnp.float32),
        }
        for name in EPILOGUE_OPERANDS:
            if extra[name] is not None:
                present.append(name)
                args.append(extra[name])
    ep = Epilogue(tuple(present), activation, approx, rows_per_gate if gate is not None else 0)
    out_type = jax.ShapeDtypeStruct((mp, n // out_splits), out_dtype)
    if out_splits > 1:
        out_type = (out_type,) * out_splits
    unpad = (lambda o: o) if mp == m else (lambda o: jax.tree.map(lambda a: a[:m], o))  # noqa: E731
    if cfg.ws:
        call = plgpu.kernel(
            functools.partial(_ws_kernel, cfg=cfg, k=k, mp=mp, n=n, scaled=scaled, ep=ep, n_out=out_splits,
                              interpret=interpret),
            out_type=out_type,
            grid=(_num_sms(),),
            grid_names=("sm",),
            num_threads=3,
            thread_name="wg",
            compiler_params=_compiler_params(approx),
            **_interpret_kw(interpret),
        )
        return unpad(call(*args))
    out_tf = _smem_transforms(cfg.tn * out_dtype.itemsize, out_dtype.itemsize)
    if cfg.order == "nm":
        grid, names = (n // cfg.tn, mp // cfg.tm), ("n", "m")
    else:
        grid, names = (mp // cfg.tm, n // cfg.tn), ("m", "n")
    body = functools.partial(_kernel, cfg=cfg, k=k, scaled=scaled, ep=ep, n_out=out_splits, interpret=interpret)
    scratch = [plgpu.SMEM((cfg.tm, cfg.tn), out_dtype, transforms=out_tf)]
    try:
        call = plgpu.kernel(
            body,
            out_type=out_type,
            scratch_types=scratch,
            grid=grid,
            grid_names=names,
            compiler_params=_compiler_params(approx),
            **_interpret_kw(interpret),
        )
    except TypeError:  # older spelling
        call = plgpu.kernel(
            body,
            out_shape=out_type,
            scratch_shapes=scratch,
            grid=grid,
            grid_names=names,
            compiler_params=_compiler_params(approx),
        )
    return unpad(call(*args))
