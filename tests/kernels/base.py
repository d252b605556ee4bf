"""The shared base of the kernel tests: every op, its backends, fresh random inputs, the reference check.

:data:`OPS` registers each public op of ``pallas_kernels`` once: the backends its dispatch accepts
(``GPU_ONLY`` ones — no CPU interpret twin — carry ``@pytest.mark.gpu`` and skip cleanly off GPU;
``triton`` runs in interpret mode on the CPU), how to draw fresh random inputs (never zeros), and how
an output is compared with the op's reference (integer outputs exactly). ``test_backends.py`` runs
every (op, backend) pair; op-specific test files parametrize their backends with
:func:`backend_params`. A new op (e.g. ``rotate_quantize``) adds one :class:`OpCase` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels._compat import pltriton
from pallas_kernels.testing import assert_bf16_close, rand_int, rand_scale, rand_x

GPU_ONLY = ("mosaic",)  # Mosaic GPU has no CPU twin (see pallas_kernels/NOTES.md)


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One op: ``inputs(seed) -> (args, kwargs)``; ``run(backend, *args, **kwargs)``;
    ``reference(*args, **kwargs)``; ``check(out, ref, args)`` asserts the match."""

    backends: tuple[str, ...]
    inputs: Callable[[int], tuple[tuple, dict]]
    run: Callable[..., Any]
    reference: Callable[..., Any]
    check: Callable[[Any, Any, tuple], None]


def backend_params(op: str, backends: tuple[str, ...] | None = None) -> list:
    """``pytest.param`` per backend of ``op`` (default: all it has), GPU-only ones marked ``gpu``;
    ``triton`` skips where this JAX has no Pallas-Triton (no interpret twin either)."""
    params = []
    for be in backends or OPS[op].backends:
        marks = []
        if be in GPU_ONLY:
            marks.append(pytest.mark.gpu)
        if be == "triton" and pltriton is None:
            marks.append(pytest.mark.skip(reason="Pallas-Triton not importable in this JAX"))
        params.append(pytest.param(be, marks=marks, id=be))
    return params


def all_cases() -> list:
    """Every ``(op, backend)`` pair of :data:`OPS` as ``pytest.param``."""
    return [pytest.param(op, p.values[0], marks=p.marks, id=f"{op}-{p.id}")
            for op in OPS for p in backend_params(op)]


def check_backend_against_reference(op: str, backend: str, seed: int) -> None:
    """Run ``op`` on ``backend`` and its reference on the same fresh random inputs; assert the match."""
    case = OPS[op]
    args, kwargs = case.inputs(seed)
    out = case.run(backend, *args, **kwargs)
    case.check(out, case.reference(*args, **kwargs), args)


# ---------------------------------------------------------------------------------- comparisons


def assert_exact(out, ref, args=None) -> None:
    """Integer outputs: same dtype, same shape, same values."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, (out.dtype, ref.dtype, out.shape, ref.shape)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def assert_bf16_close_args(out, ref, args=None) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_bf16_close(out, ref)


def assert_quantized_exact(out, ref, args=None) -> None:
    """``(int8 values, float32 scales)`` pairs: values and scales exactly equal."""
    for o, r in zip(out, ref):
        assert_exact(o, r)


def assert_quantized_within_one(out, ref, args=None) -> None:
    """Producer outputs: int8 values within one step (float32 LayerNorm sums in another order),
    scales to 1e-5 (the existing producer tests' bounds)."""
    (q, s), (qr, sr) = out, ref
    assert q.shape == qr.shape and s.shape == sr.shape and q.dtype == jnp.int8
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32) - qr.astype(jnp.int32)))) <= 1
    np.testing.assert_allclose(np.asarray(s), np.asarray(sr), rtol=1e-5)


def assert_rotated_close(out, ref, args=None, scale_rtol: float = 1e-6) -> dict:
    """``rotate_quantize`` outputs: int8 values equal but for rare ±1 flips (the kernels sum in
    another order than the float32 reference: at most 2 + 1e-4 of the values), scales to 1e-6
    relative (``scale_rtol``: a fused LayerNorm, whose float32 statistics are summed in another order,
    may move a bf16 input by one unit in the last place: ``test_rotate_quantize.PN_RTOL``). Returns the counts."""
    (q, s), (qr, sr) = out, ref
    assert q.shape == qr.shape and q.dtype == jnp.int8 and s.shape == sr.shape == (*q.shape[:-1], 1)
    d = np.abs(np.asarray(q, np.int32) - np.asarray(qr, np.int32))
    flips = int((d > 0).sum())
    assert d.max() <= 1, f"max |dq| = {d.max()}"
    assert flips <= 2 + 1e-4 * d.size, f"{flips} flips of {d.size}"
    rel = float(np.max(np.abs(np.asarray(s, np.float64) / np.asarray(sr, np.float64) - 1)))
    assert rel < scale_rtol, rel
    return {"flips": flips, "size": d.size, "scale_rel": rel}


def assert_attention_close(out, ref, args) -> None:
    """As close to the float32 attention as the bf16 reference itself (``test_frame_attention``)."""
    q, k, v = args
    assert out.shape == ref.shape and out.dtype == ref.dtype
    exact = pk.frame_attention_ref(*(a.astype(jnp.float32) for a in (q, k, v)))
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - exact)))
    ref_err = float(jnp.max(jnp.abs(ref.astype(jnp.float32) - exact)))
    assert err <= 1.5 * ref_err + 1e-3, (err, ref_err)


# ---------------------------------------------------------------------------------- inputs


def _linear_inputs(seed: int, m: int = 37, k: int = 256, n: int = 128, lo: int = -127, hi: int = 127):
    x = rand_x(seed, m, k)
    wq = rand_int(seed + 1, (n, k), lo, hi)
    ws = rand_scale(seed + 2, (n,))
    bias = jax.random.normal(jax.random.key(seed + 3), (n,))
    return x, wq, ws, bias


def _int8_matmul_inputs(seed: int):
    m, k, n = 37, 256, 128
    return (rand_int(seed, (m, k), -127, 127), rand_int(seed + 1, (n, k), -127, 127)), {}


def _int8_gemm_inputs(seed: int):
    (xq, wq), _ = _int8_matmul_inputs(seed)
    xs = rand_scale(seed + 2, (xq.shape[0], 1))
    ws = rand_scale(seed + 3, (wq.shape[0],))
    bias = jax.random.normal(jax.random.key(seed + 4), (wq.shape[0],))
    return (xq, wq, xs, ws, bias), {"out_dtype": jnp.float32}


def _int8_gemm_ref(xq, wq, xs, ws, bias, *, out_dtype):
    return pk.scaled_epilogue_ref(pk.int8_matmul_ref(xq, wq), xs, ws, bias, out_dtype)


def _assert_epilogue_close(out, ref, args=None) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def _w4a8_inputs(seed: int):
    x, w4, ws, bias = _linear_inputs(seed, lo=-8, hi=7)
    return (x, pk.pack_int4(w4), ws, bias), {}


def _w4a8_group_inputs(seed: int):
    (x, packed, _, bias), _ = _w4a8_inputs(seed)
    return (x, packed, rand_scale(seed + 5, (packed.shape[0], 2 * packed.shape[1] // 64)), bias), {}


def _fp8_linear_inputs(seed: int):
    x, _, _, bias = _linear_inputs(seed)
    w = jax.random.normal(jax.random.key(seed + 7), (128, 256)) * 0.05
    wq, ws = pk.quantize_fp8_weight_ref(w)
    return (x, wq, ws, bias), {}


def _quantize_inputs(seed: int):
    return (rand_x(seed, 37, 1152),), {}


def _producer_inputs(seed: int):
    ks = jax.random.split(jax.random.key(seed), 4)
    b, l, k = 2, 13, 128
    x = jax.random.normal(ks[0], (b, l, k), jnp.bfloat16) * 3 + 1
    shift = jax.random.normal(ks[1], (b, 1, k)) * 0.1
    scale = jax.random.normal(ks[2], (b, 1, k)) * 0.1
    smooth = jax.random.uniform(ks[3], (k,), minval=0.5, maxval=2.0)
    return (x, shift, scale, smooth), {}


def _frame_attention_inputs(seed: int):
    shape = (2, 15, 4, 2, 72)  # odd T (padded, masked) and D = 72 (two overlapping lane chunks)
    return tuple(jax.random.normal(kk, shape, jnp.float32).astype(jnp.bfloat16) * 2
                 for kk in jax.random.split(jax.random.key(seed), 3)), {}


def _rotate_inputs(seed: int):
    """K = 1152 = 36 · 32 with a random ±1 base (the kernels need no Hadamard property), signs and
    smoothing multipliers."""
    ks = jax.random.split(jax.random.key(seed), 3)
    base = np.where(np.random.default_rng(seed).random((36, 36)) < 0.5, -1.0, 1.0)
    signs = jnp.where(jax.random.bernoulli(ks[0], 0.5, (1152,)), 1.0, -1.0)
    smooth = jax.random.uniform(ks[1], (1152,), minval=0.3, maxval=3.0)
    return (rand_x(seed, 9, 1152), base, signs, smooth), {}


# quantized attention: the first case of test_quant_attention.py (same shapes and tiling: one interpret compile)
_QATTN_CFG = pk.ops.quant_attention.QuantAttentionConfig(block_m=16, block_n=16)
_qattn_ref = jax.jit(pk.quant_attention_ref, static_argnames=("pv", "q_block", "k_block", "kv_block", "q_mean_block"))


def _quant_attention_inputs(seed: int):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(s).astype(np.float32), jnp.bfloat16)
               for s in ((1, 40, 2, 72), (1, 37, 2, 72), (1, 37, 2, 72)))
    mask = rng.random((1, 37)) < 0.6
    mask[:, 0] = True
    return (q, k, v, jnp.asarray(mask)), {"pv": "fp8", "k_block": 16, "config": _QATTN_CFG}


def _quant_attention_ref(q, k, v, mask, *, pv, k_block, config):
    return _qattn_ref(q, k, v, mask, pv=pv, k_block=k_block, kv_block=config.block_n, q_mean_block=config.block_m)


def _assert_quant_attention_close(out, ref, args=None) -> None:
    """Same integers as the reference; float32 sums in another order (bf16 output)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    o, r = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert np.linalg.norm(o - r) <= 2e-3 * np.linalg.norm(r)


def _dispatch(fn: Callable) -> Callable:
    return lambda backend, *args, **kwargs: fn(*args, backend=backend, **kwargs)


OPS: dict[str, OpCase] = {
    "int8_matmul": OpCase(("xla", "triton", "mosaic", "auto"), _int8_matmul_inputs,
                          _dispatch(pk.int8_matmul), pk.int8_matmul_ref, assert_exact),
    "int8_gemm_epilogue": OpCase(("xla", "triton", "mosaic", "auto"), _int8_gemm_inputs,
                                 _dispatch(pk.int8_gemm), _int8_gemm_ref, _assert_epilogue_close),
    "w8a8_linear": OpCase(("xla", "triton", "mosaic", "auto"),
                          lambda seed: (_linear_inputs(seed), {}),
                          _dispatch(pk.w8a8_linear), pk.w8a8_linear_ref, assert_bf16_close_args),
    "fp8_linear": OpCase(("xla", "triton", "mosaic", "auto"), _fp8_linear_inputs,
                         _dispatch(pk.fp8_linear), pk.fp8_linear_ref, assert_bf16_close_args),
    "w4a8_linear": OpCase(("xla", "triton", "mosaic", "auto"), _w4a8_inputs,
                          _dispatch(pk.w4a8_linear), pk.w4a8_linear_ref, assert_bf16_close_args),
    "w4a8_linear_group": OpCase(("xla", "triton", "mosaic", "auto"), _w4a8_group_inputs,
                                _dispatch(pk.w4a8_linear), pk.w4a8_linear_ref, assert_bf16_close_args),
    "quantize_per_token": OpCase(("xla", "triton", "auto"), _quantize_inputs,
                                 _dispatch(pk.quantize_per_token), pk.quantize_per_token_ref,
                                 assert_quantized_exact),
    "fused_quantize_producer": OpCase(("xla", "triton", "auto"), _producer_inputs,
                                      _dispatch(pk.fused_quantize_producer), pk.fused_quantize_producer_ref,
                                      assert_quantized_within_one),
    "rotate_quantize": OpCase(("xla", "triton", "auto"), _rotate_inputs,
                              _dispatch(pk.rotate_quantize), pk.rotate_quantize_ref,
                              assert_rotated_close),
    "frame_attention": OpCase(("reference", "triton", "auto"), _frame_attention_inputs,
                              _dispatch(pk.frame_attention), pk.frame_attention_ref, assert_attention_close),
    "quant_attention": OpCase(("reference", "triton", "auto"), _quant_attention_inputs,
                              _dispatch(pk.quant_attention), _quant_attention_ref, _assert_quant_attention_close),
}
