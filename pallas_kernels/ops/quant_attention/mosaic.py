"""Mosaic GPU (Hopper, wgmma) quantized flash attention, warp-specialized as FlashAttention-3.

Semantics: ``reference.py`` with bf16 ``P·V`` (the presets' default), ``kv_block`` = ``block_kv`` and
``q_mean_block`` = ``2 * block_q`` (one CTA). FP8 ``P·V`` is not implemented here (the dispatch runs
Pallas-Triton for it).

One CTA owns ``2 * block_q`` query rows of one ``(b, h)`` and has three warpgroups: two compute
warpgroups of ``block_q`` rows each and one memory warpgroup that streams, per key block of
``block_kv``, the int8 ``K`` tile, its per-token scales ``s_k`` and the row of the logit bias, and the
bf16 ``Vᵀ`` tile into a ring of ``stages`` shared-memory slots with TMA (one barrier per operand and
slot; the compute warpgroups release a slot through two "consumed" barriers). Per key block a compute
warpgroup issues ``wgmma.s32.s8.s8`` (``Q`` and ``K`` both K-major, as int8 wgmma needs), scales the
int32 logits by ``s_q · s_k`` (``s_q`` already times ``log2(e)/√D``) and adds the bias row, runs the
online softmax in base 2 and issues the bf16 ``P·V`` wgmma with ``P`` from registers and ``Vᵀ``
(K-major: any head width that is a multiple of 8 is a valid wgmma N, so D = 72 needs no padding on
this side). A schedule barrier shared by the two compute warpgroups alternates them, so that one
warpgroup's softmax overlaps the other's MMAs (FlashAttention-3's ping-pong).

The preceding XLA pass (:func:`mosaic_operands`) is the reference's own quantization
(``quantized_operands``) laid out for TMA: ``qq (B, H, Nq', Dk)`` / ``kq (B, H, Nk', Dk)`` int8 with
the head zero-padded to ``Dk`` = a multiple of ``qk_pad`` lanes (D = 72: 96 with ``qk_pad=32``, a
32-byte swizzle; 128 with ``qk_pad=128``, a 128-byte swizzle), ``sq (B, H, Nq')``, ``sk (B, H, Nk')``,
``bias (B, H, Nq'/(2·block_q), Nk')`` = ``q̄ · k_j · log2(e)/√D`` with ``-inf`` on masked and padded keys
(so the key mask costs nothing extra in the kernel) and ``vt (B, H, Dv, Nk')`` bf16 (``Dv`` = D rounded
up to 8). The kernel writes ``(B, Nq', H, Dv)`` in bf16.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import interpret_params, pl, plgpu, races_found
from pallas_kernels.ops.quant_attention.layout import _heads_first, round_up
from pallas_kernels.ops.quant_attention.reference import check_settings, quantized_operands

LOG2E = math.log2(math.e)
QK_PADS = (32, 64, 128)  # int8 lanes per swizzle atom row: 32-, 64- or 128-byte swizzle


@dataclasses.dataclass(frozen=True)
class MosaicAttentionConfig:
    """``block_q`` query rows per compute warpgroup (a multiple of 64; the CTA has two, and its
    ``2 * block_q`` rows are the Q-smoothing block), ``block_kv`` keys per step (64, 128 or 256: also the
    reference's ``kv_block``), ``stages`` shared-memory slots of the K/V ring, ``qk_pad``: the int8 head
    width is padded to a multiple of it (:data:`QK_PADS`)."""

    block_q: int = 64
    block_kv: int = 128
    stages: int = 2
    qk_pad: int = 32

    def check(self) -> None:
        if self.block_q % 64 or self.block_q < 64:
            raise ValueError(f"block_q={self.block_q} must be a positive multiple of 64")
        if self.block_kv not in (64, 128, 256):
            raise ValueError(f"block_kv={self.block_kv} must be one of (64, 128, 256)")
        if self.stages < 2:
            raise ValueError(f"stages={self.stages} must be >= 2")
        if self.qk_pad not in QK_PADS:
            raise ValueError(f"qk_pad={self.qk_pad} unknown; choose one of {QK_PADS}")

    @property
    def q_mean_block(self) -> int:
        return 2 * self.block_q


def qk_width(d: int, cfg: MosaicAttentionConfig) -> int:
    return round_up(d, cfg.qk_pad)


def mosaic_operands(q, k, v, key_mask=None, *, q_block: int = 1, k_block: int = 1, smooth_k: bool = True,
                    smooth_q: bool = True, cfg: MosaicAttentionConfig = MosaicAttentionConfig()) -> dict:
    """The kernel's operands (module docstring) from ``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``."""
    b, nq, h, d = q.shape
    nk = k.shape[1]
    dk, dv = qk_width(d, cfg), round_up(d, 8)
    nq_p, nk_p = round_up(nq, cfg.q_mean_block), round_up(nk, cfg.block_kv)
    ops = quantized_operands(q, k, v, key_mask, pv="bf16", q_block=q_block, k_block=k_block, smooth_k=smooth_k,
                             smooth_q=smooth_q, q_mean_block=cfg.q_mean_block)
    lanes = lambda x, w: jnp.pad(x, ((0, 0),) * 3 + ((0, w - d),)) if w != d else x  # noqa: E731
    logit = LOG2E / math.sqrt(d)
    bias = jnp.transpose(ops["bias"] * logit, (0, 3, 1, 2))  # (B, H, nb, Nk)
    bias = jnp.where(ops["valid"][:, None, None, :], bias, -jnp.inf)
    if nk_p != nk:
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, nk_p - nk)), constant_values=-jnp.inf)
    vt = jnp.swapaxes(_heads_first(lanes(ops["vq"], dv), nk_p), 2, 3)  # (B, H, Dv, Nk')
    return {
        "qq": _heads_first(lanes(ops["qq"], dk), nq_p),
        "sq": _heads_first(ops["sq"] * logit, nq_p, fill=1.0),
        "kq": _heads_first(lanes(ops["kq"], dk), nk_p),
        "sk": _heads_first(ops["sk"], nk_p, fill=1.0),
        "bias": bias,
        "vt": vt.astype(jnp.bfloat16),
    }


def _transforms(minor_bytes: int, itemsize: int) -> tuple:
    swizzle = plgpu.find_swizzle(minor_bytes * 8)
    return plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle)


def _vector(ref, layout, interpret: bool):
    """A 1-D operand in the layout of a logit tile's rows or columns (the GPU interpreter has no
    ``plgpu.load``; layouts mean nothing there)."""
    return ref[...] if interpret else plgpu.load(ref, (), layout=layout, optimized=False)


def _layout(x, layout, interpret: bool):
    return x if interpret else plgpu.layout_cast(x, layout)


def _dot_t(a, b, out_dtype):
    """``a · bᵀ`` (the interpreter's stand-in for a wgmma with a K-major B operand)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=out_dtype)


def _kernel(qq_ref, sq_ref, kq_ref, sk_ref, bias_ref, vt_ref, o_ref, smem, bars, used, sched, *,
            cfg: MosaicAttentionConfig, steps: int, stages: int, dv: int, masked: bool, interpret: bool):
    bq, bkv = cfg.block_q, cfg.block_kv
    b, h, qi = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_seq")
    wg = lax.axis_index("wg")
    q_smem2, o_smem2, k_smem, v_smem, sk_smem, bias_smem = smem
    q_bar, k_bar, sk_bar, bias_bar, v_bar = bars
    k_used, v_used = used
    row_l, col_l = plgpu.Layout.WGMMA.reduce(1), plgpu.Layout.WGMMA.reduce(0)

    def schedule():
        plgpu.barrier_arrive(sched)
        plgpu.barrier_wait(sched)

    @pl.when(wg < 2)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        q_smem, o_smem = q_smem2.at[wg], o_smem2.at[wg]
        row0 = qi * (2 * bq) + wg * bq
        plgpu.copy_gmem_to_smem(qq_ref.at[b, h, pl.ds(row0, bq)], q_smem, q_bar.at[wg])
        qscale = _vector(sq_ref.at[b, h, pl.ds(row0, bq)], row_l, interpret)
        plgpu.barrier_wait(q_bar.at[wg])
        m0 = _layout(jnp.full((bq,), -jnp.inf, jnp.float32), row_l, interpret)
        l0 = _layout(jnp.full((bq,), 0.0, jnp.float32), row_l, interpret)
        acc0 = _layout(jnp.full((bq, dv), 0.0, jnp.float32), plgpu.Layout.WGMMA, interpret)
        plgpu.barrier_wait(k_bar.at[0])
        pl.when(wg == 1)(schedule)

        def step(j, carry):
            acc, m_prev, l_prev = carry
            slot = lax.rem(j, jnp.array(stages, j.dtype))

            def qk(acc_ref):
                plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                schedule()
                return acc_ref[...]

            if interpret:  # the interpreter's wgmma takes no transposed operand: the same product in jnp
                logits = _dot_t(q_smem[...], k_smem[slot], jnp.int32)
                schedule()
            else:
                logits = pl.run_scoped(qk, plgpu.ACC((bq, bkv), jnp.int32))
            plgpu.barrier_wait(sk_bar.at[slot])
            sk = _vector(sk_smem.at[slot], col_l, interpret)
            plgpu.barrier_wait(bias_bar.at[slot])
            bias = _vector(bias_smem.at[slot], col_l, interpret)
            plgpu.barrier_arrive(k_used.at[slot])
            s = logits.astype(jnp.float32) * lax.broadcast_in_dim(qscale, (bq, bkv), [0])
            s = s * lax.broadcast_in_dim(sk, (bq, bkv), [1]) + lax.broadcast_in_dim(bias, (bq, bkv), [1])
            m_new = jnp.maximum(m_prev, s.max(axis=1))
            m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
            alpha = jnp.exp2(m_prev - m_use)
            p = jnp.exp2(s - lax.broadcast_in_dim(m_use, (bq, bkv), [0]))
            acc = acc * lax.broadcast_in_dim(alpha, (bq, dv), [0])
            l_new = l_prev * alpha + p.sum(axis=1)
            p16 = p.astype(jnp.bfloat16)
            acc, l_new, m_new, p16 = lax.optimization_barrier((acc, l_new, m_new, p16))
            plgpu.barrier_arrive(sched)  # softmax done
            plgpu.barrier_wait(v_bar.at[slot])
            plgpu.barrier_wait(sched)  # the other warpgroup's MMAs are issued: tensor cores free

            def wait_next():
                nxt = j + 1

                @pl.when(nxt < steps)
                def _():
                    plgpu.barrier_wait(k_bar.at[lax.rem(nxt, jnp.array(stages, j.dtype))])

            def pv(acc_ref):
                plgpu.wgmma(acc_ref, p16, plgpu.transpose_ref(v_smem.at[slot], (1, 0)))
                wait_next()

            if interpret:  # (no run_state nor transposed wgmma operands there)
                acc = acc + _dot_t(p16, v_smem[slot], jnp.float32)
                wait_next()
            else:
                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
            plgpu.barrier_arrive(v_used.at[slot])
            return acc, m_new, l_new

        acc, _, l_fin = lax.fori_loop(0, steps, step, (acc0, m0, l0))
        pl.when(wg == 0)(schedule)
        if masked:  # a row without any valid key gives 0
            inv = jnp.where(l_fin > 0.0, 1.0 / jnp.where(l_fin > 0.0, l_fin, 1.0), 0.0)
        else:
            inv = 1.0 / l_fin
        o_smem[...] = (acc * lax.broadcast_in_dim(inv, (bq, dv), [0])).astype(jnp.bfloat16)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_ref.at[b, pl.ds(row0, bq), h])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")

        def load_k(step_, slot):
            keys = pl.ds(step_ * bkv, bkv)
            plgpu.copy_gmem_to_smem(kq_ref.at[b, h, keys], k_smem.at[slot], k_bar.at[slot])
            plgpu.copy_gmem_to_smem(sk_ref.at[b, h, keys], sk_smem.at[slot], sk_bar.at[slot])
            plgpu.copy_gmem_to_smem(bias_ref.at[b, h, qi, keys], bias_smem.at[slot], bias_bar.at[slot])

        def load_v(step_, slot):
            plgpu.copy_gmem_to_smem(vt_ref.at[b, h, :, pl.ds(step_ * bkv, bkv)], v_smem.at[slot], v_bar.at[slot])

        for i in range(stages):
            load_k(i, i)
            load_v(i, i)

        @pl.loop(0, steps - stages)
        def _ring(j):
            slot = lax.rem(j, jnp.array(stages, j.dtype))
            plgpu.barrier_wait(k_used.at[slot])
            load_k(j + stages, slot)
            plgpu.barrier_wait(v_used.at[slot])
            load_v(j + stages, slot)

        @pl.loop(steps - stages, steps)
        def _drain(j):  # observe the last releases too (every phase of a barrier is waited for once)
            slot = lax.rem(j, jnp.array(stages, j.dtype))
            plgpu.barrier_wait(k_used.at[slot])
            plgpu.barrier_wait(v_used.at[slot])


def _compiler_params():
    return plgpu.CompilerParams(approx_math=True)


@functools.partial(jax.jit, static_argnames=("q_block", "k_block", "smooth_k", "smooth_q", "cfg", "interpret"))
def mosaic_quant_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                           q_block: int = 1, k_block: int = 1, smooth_k: bool = True, smooth_q: bool = True,
                           cfg: MosaicAttentionConfig = MosaicAttentionConfig(),
                           interpret: bool = False) -> jax.Array:
    """``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``, ``key_mask (B, Nk)`` → ``(B, Nq, H, D)`` in ``q.dtype``
    (bf16 ``P·V``). Compiled: Hopper only. ``interpret``: Mosaic GPU's CPU interpreter (:func:`interpret_params`;
    slow: tiny shapes only), which reads the 1-D operands without their register layouts."""
    check_settings("bf16", q_block, k_block, cfg.block_kv, cfg.q_mean_block)
    cfg.check()
    b, nq, h, d = q.shape
    nk = k.shape[1]
    ops = mosaic_operands(q, k, v, key_mask, q_block=q_block, k_block=k_block, smooth_k=smooth_k,
                          smooth_q=smooth_q, cfg=cfg)
    nq_p, dk = ops["qq"].shape[2:]
    dv, nk_p = ops["vt"].shape[2:]
    steps = nk_p // cfg.block_kv
    stages = min(cfg.stages, steps)
    masked = key_mask is not None or nk_p != nk
    bq, bkv = cfg.block_q, cfg.block_kv
    qk_tf = _transforms(dk, 1)
    v_tf = _transforms(bkv * 2, 2)
    smem = (
        plgpu.SMEM((2, bq, dk), jnp.int8, transforms=qk_tf),
        plgpu.SMEM((2, bq, dv), jnp.bfloat16),
        plgpu.SMEM((stages, bkv, dk), jnp.int8, transforms=qk_tf),
        plgpu.SMEM((stages, dv, bkv), jnp.bfloat16, transforms=v_tf),
        plgpu.SMEM((stages, bkv), jnp.float32),
        plgpu.SMEM((stages, bkv), jnp.float32),
    )
    bars = (plgpu.Barrier(num_barriers=2),) + (plgpu.Barrier(num_barriers=stages),) * 4
    used = (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2
    sched = plgpu.Barrier(num_arrivals=2)
    body = functools.partial(_kernel, cfg=cfg, steps=steps, stages=stages, dv=dv, masked=masked, interpret=interpret)

    def entry(qq_ref, sq_ref, kq_ref, sk_ref, bias_ref, vt_ref, o_ref):
        pl.run_scoped(lambda *scoped: body(qq_ref, sq_ref, kq_ref, sk_ref, bias_ref, vt_ref, o_ref, *scoped),
                      smem, bars, used, sched, collective_axes="wg")

    out = plgpu.kernel(
        entry,
        out_type=jax.ShapeDtypeStruct((b, nq_p, h, dv), jnp.bfloat16),
        grid=(h, nq_p // (2 * bq), b),
        grid_names=("heads", "q_seq", "batch"),
        num_threads=3,
        thread_name="wg",
        compiler_params=_compiler_params(),
        **({"interpret": interpret_params()} if interpret else {}),
    )(ops["qq"], ops["sq"], ops["kq"], ops["sk"], ops["bias"], ops["vt"])
    if (nq_p, dv) != (nq, d):
        out = out[:, :nq, :, :d]
    return out.astype(q.dtype)


__all__ = ["QK_PADS", "MosaicAttentionConfig", "interpret_params", "mosaic_operands", "mosaic_quant_attention",
           "qk_width", "races_found"]
