"""Smoothing + randomized Hadamard + per-token int8 (pallas_kernels.ops.rotate_quantize).

The reference is checked bit for bit against the project's own rotation
(``vidq_jax.quant.hadamard.hadamard_transform`` + ``quantize_per_token_ref``); the Pallas-Triton
variants run in interpret mode on the CPU against the reference on fresh random inputs with
per-channel outliers. The kernels sum in another order than the float32 reference (tensor-core
dots, split operands), so an int8 value may differ by one step where ``y / scale`` lies within a
few ulps of a rounding boundary: ``tests.kernels.base.assert_rotated_close`` bounds those flips
(at most 2 + 1e-4 of the values; measured 0-2 per 10^4-10^5) and the scales (1e-6 relative).
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels.ops.rotate_quantize import RotateTiling, rotate_tiling, triton_rotate_quantize
from pallas_kernels.ops.rotate_quantize.triton import (
    base_plan,
    effective_base,
    pow2_scale,
    row_groups,
    supported,
)
from pallas_kernels.testing import requires_gpu
from tests.kernels.base import assert_rotated_close
from vidq_jax.quant.hadamard import base_hadamard, hadamard_factors, hadamard_transform


def rotation_inputs(seed: int, m: int, k: int, dtype=jnp.bfloat16):
    """Fresh inputs: x with per-channel magnitudes over ~3 decades and a few outlier channels
    (never zeros), random ±1 signs, smoothing multipliers in [0.3, 3]; the base of K."""
    ks = jax.random.split(jax.random.key(seed), 5)
    chan = jnp.exp(jax.random.normal(ks[1], (k,)))
    outliers = jax.random.choice(ks[2], k, (max(1, k // 64),), replace=False)
    chan = chan.at[outliers].multiply(40.0)
    x = (jax.random.normal(ks[0], (m, k)) * 3.0 * chan).astype(dtype)
    signs = jnp.where(jax.random.bernoulli(ks[3], 0.5, (k,)), 1.0, -1.0)
    smooth = jax.random.uniform(ks[4], (k,), minval=0.3, maxval=3.0)
    return x, signs, smooth, base_hadamard(hadamard_factors(k)[0])


# ------------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("k", [144, 1152, 4608])
@pytest.mark.parametrize("with_smooth", [False, True])
def test_reference_is_hadamard_transform_then_quantize(k, with_smooth):
    x, signs, smooth, hb = rotation_inputs(k, 21, k)
    smooth = smooth if with_smooth else None
    q, s = pk.rotate_quantize_ref(x, hb, signs, smooth)
    xs = x.astype(jnp.float32) if smooth is None else x * smooth  # float32, as record.balance
    qr, sr = pk.quantize_per_token_ref(hadamard_transform(xs, signs))
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(sr))


def test_reference_without_signs_and_zero_row():
    x, _, _, hb = rotation_inputs(3, 5, 144)
    x = x.at[2].set(0)
    q, s = pk.rotate_quantize_ref(x, hb)
    qr, sr = pk.quantize_per_token_ref(hadamard_transform(x.astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    assert float(s[2, 0]) == 1.0 and not np.any(np.asarray(q[2]))


# ------------------------------------------------------------------------------------ kernels

KERNEL_CASES = [
    # (K, M, tiling): M is never a multiple of the program's row block
    (144, 13, None),  # p = 4 < 16: 4 rows side by side in a tile (3-D transposes)
    (1152, 7, None),  # stored tiling: base 36 ⊗ H_2 = 72 (64 + 16 rows, 8 masked), 4 rows/program
    # fori_loop over rows; blocks over the zero-padded base (48 rows for 36)
    (1152, 6, RotateTiling(w=32, bm=4, split="bf16x3", unroll=False, pad_block=True)),
    (4608, 3, None),  # stored tiling: base 36 ⊗ H_4 = 144 (128 + 16), one row per program
]


@pytest.mark.parametrize("k,m,tiling", KERNEL_CASES,
                         ids=[f"K{k}-M{m}-{t.variant if t else 'stored'}" for k, m, t in KERNEL_CASES])
@pytest.mark.parametrize("with_smooth", [False, True], ids=["signs", "smooth"])
def test_triton_kernel_interpret_matches_reference(k, m, tiling, with_smooth):
    x, signs, smooth, hb = rotation_inputs(k + m, m, k)
    smooth = smooth if with_smooth else None
    x = x.at[m // 2].set(0)  # the zero-row guard: scale 1, q 0
    cfg = tiling or rotate_tiling(k, smooth is not None)
    assert supported(k, hb, cfg) is None
    *out, rs = triton_rotate_quantize(x, hb, signs, smooth, cfg=cfg, interpret=True, row_sum=True)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, smooth))
    assert float(out[1][m // 2, 0]) == 1.0 and not np.any(np.asarray(out[0][m // 2]))
    # the code sums (zero-point epilogues) are those of the kernel's own codes, exactly
    assert rs.dtype == jnp.int32 and rs.shape == (m, 1)
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(out[0], np.int32).sum(-1, keepdims=True))


def test_fma_variant_interpret_matches_reference():
    """The sweep-only ``fma`` variant (chunks: H_b by signed sums), one program of 16 rows (CI time)."""
    x, signs, _, hb = rotation_inputs(1171, 16, 1152)
    out = triton_rotate_quantize(x, hb, signs, None, cfg=RotateTiling(variant="fma", bm=16, num_warps=4),
                                 interpret=True)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, None))


PACKED_CASES = [  # (K, M, tiling): codes packed in PTX, the multiplier loaded once per program,
    # the fp16-range power of two applied to x in bf16 (prescale); grow 2 at K = 4608: two column
    # tiles per row (butterflies), maxed elementwise before the row reductions (merge_absmax)
    (1152, 7, RotateTiling(w=16, grow=2, num_warps=1, bm=4, pack_int8=True, hoist_ms=True,
                           prescale=True)),
    (4608, 3, RotateTiling(w=32, grow=2, num_warps=1, bm=2, unroll=False, pack_int8=True,
                           hoist_ms=True, prescale=True, merge_absmax=True)),
]


@pytest.mark.parametrize("k,m,tiling", PACKED_CASES, ids=[f"K{k}-M{m}" for k, m, _ in PACKED_CASES])
@pytest.mark.parametrize("with_smooth", [False, True], ids=["signs", "smooth"])
def test_packed_prescaled_hoisted(k, m, tiling, with_smooth):
    x, signs, smooth, hb = rotation_inputs(2 * k + m, m, k)
    smooth = smooth if with_smooth else None
    x = x.at[m - 1].set(0)
    out = triton_rotate_quantize(x, hb, signs, smooth, cfg=tiling, interpret=True)
    assert out[0].dtype == jnp.int8
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, smooth))
    assert float(out[1][m - 1, 0]) == 1.0 and not np.any(np.asarray(out[0][m - 1]))
    # with the code sums the codes stay int32 in the kernel (packing is skipped): same codes
    q2, _, rs = triton_rotate_quantize(x, hb, signs, smooth, cfg=tiling, interpret=True, row_sum=True)
    np.testing.assert_array_equal(np.asarray(q2), np.asarray(out[0]))
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(q2, np.int32).sum(-1, keepdims=True))


@pytest.mark.parametrize("split", ["bf16x3", "f16x2"])
def test_float32_input_is_split(split):
    """float32 activations are not bf16-exact: the first dot splits them too."""
    x, signs, _, hb = rotation_inputs(5, 3, 1152, jnp.float32)
    out = triton_rotate_quantize(x, hb, signs, cfg=RotateTiling(w=32, split=split), interpret=True)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs))


# ------------------------------------------------------------------------------------ dispatch


def test_dispatch_backends_and_leading_dims():
    x, signs, smooth, hb = rotation_inputs(11, 6, 144)
    x = x.reshape(2, 3, 144)
    ref = pk.rotate_quantize_ref(x, hb, signs, smooth)
    for backend in ("xla", "reference", "auto"):  # auto is the reference off GPU
        q, s = pk.rotate_quantize(x, hb, signs, smooth, backend=backend)
        np.testing.assert_array_equal(np.asarray(q), np.asarray(ref[0]))
        np.testing.assert_array_equal(np.asarray(s), np.asarray(ref[1]))
    *out, rs = pk.rotate_quantize(x, hb, signs, smooth, backend="triton", row_sum=True)
    assert out[0].shape == (2, 3, 144) and out[1].shape == (2, 3, 1) and rs.shape == (2, 3, 1)
    assert_rotated_close(out, ref)
    np.testing.assert_array_equal(np.asarray(pk.rotate_quantize_ref(x, hb, signs, smooth, row_sum=True)[2]),
                                  np.asarray(ref[0], np.int32).sum(-1, keepdims=True))
    with pytest.raises(ValueError):
        pk.rotate_quantize(x, hb, backend="cuda")


def test_dispatch_falls_back_to_xla():
    x, signs, _, hb = rotation_inputs(12, 5, 144)
    ref = pk.rotate_quantize_ref(x, hb, signs)
    # a tiling that cannot run K = 144 (fma needs p >= 16)
    with pytest.warns(RuntimeWarning, match="fma needs p"):
        q, _ = pk.rotate_quantize(x, hb, signs, backend="triton",
                                  tiling=RotateTiling(variant="fma", bm=16))
    np.testing.assert_array_equal(np.asarray(q), np.asarray(ref[0]))
    # a traced base (not a compile-time constant)
    with pytest.warns(RuntimeWarning, match="traced"):
        q, _ = jax.jit(lambda x, h: pk.rotate_quantize(x, h, signs, backend="triton"))(
            x, jnp.asarray(hb, jnp.float32))
    np.testing.assert_array_equal(np.asarray(q), np.asarray(ref[0]))


# ------------------------------------------------------------------------------------ helpers


def test_row_groups_cover_the_base():
    assert row_groups(36) == ((0, 32, 32), (32, 16, 4))
    assert row_groups(144) == ((0, 128, 128), (128, 16, 16))
    assert row_groups(12) == ((0, 16, 12),)
    for b in (1, 12, 20, 36, 72, 108, 144):
        gs = row_groups(b)
        assert sum(v for _, _, v in gs) == b and all(s >= 16 and not s & (s - 1) for _, s, _ in gs)


def test_effective_base_is_the_same_rotation():
    hb = base_hadamard(36)
    big, p = effective_base(hb, 32, grow=4)
    assert big.shape == (144, 144) and p == 8
    x = np.random.default_rng(0).standard_normal((3, 1152)).astype(np.float32)
    a = np.asarray(pk.rotate_quantize_ref(x, hb)[0])
    b = np.asarray(pk.rotate_quantize_ref(x, big)[0])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_pow2_scale_lands_in_fp16_range():
    amax = jnp.array([1e-30, 3e-5, 0.75, 1.0, 5.0, 6e4, 3e30], jnp.float32)
    s = pow2_scale(amax)
    y = np.asarray(amax * s)
    assert np.all((y >= 2.0**14) & (y < 2.0**15))
    m, _ = np.frexp(np.asarray(s))
    assert np.all(m == 0.5)  # exact powers of two
    assert np.isfinite(float(pow2_scale(jnp.float32(0.0))))


def test_base_plan_evaluates_the_matrix():
    hb = base_hadamard(36).astype(np.float32)
    z = np.random.default_rng(1).standard_normal((36, 5))
    for group in (1, 2, 4):
        y = np.zeros((36, 5))
        for cols, classes, combos in base_plan(hb, group):
            sums = [sum(sg * z[i] for sg, i in cl) for cl in classes]
            for c, col in enumerate(cols):
                y[col] = sum(sg * s for sg, s in zip(combos[c], sums))
        np.testing.assert_allclose(y, hb.T @ z, atol=1e-9)


_FAST = {"pack_int8": True, "hoist_ms": True, "prescale": True}
PIPELINED_CASES = [  # (K, M, tiling): latency switches, same codes as without them
    # the next row's loads before this row's math, unrolled rows (M = 3: a padded last program)
    (1152, 3, RotateTiling(w=16, grow=2, num_warps=1, bm=2, prefetch=True, **_FAST)),
    # persistent grid of 3 programs over 10 row tiles (4 steps: the last one clamps and redoes
    # tile 9), row loop with the x tiles carried
    (1152, 10, RotateTiling(w=16, grow=2, num_warps=1, bm=1, unroll=False, prefetch=True,
                            programs=3, **_FAST)),
    # the K = 4608 base staged once per program, 2 programs over 3 rows
    (4608, 3, RotateTiling(w=32, grow=4, num_warps=4, bm=1, unroll=False, prefetch=True,
                           programs=2, **_FAST)),
]


@pytest.mark.parametrize("k,m,tiling", PIPELINED_CASES, ids=[f"K{k}-M{m}" for k, m, _ in PIPELINED_CASES])
def test_prefetch_and_persistent_grid_keep_the_codes(k, m, tiling):
    x, signs, _, hb = rotation_inputs(3 * k + m, m, k)
    x = x.at[m - 2].set(0)
    out = triton_rotate_quantize(x, hb, signs, cfg=tiling, interpret=True, row_sum=True)
    assert_rotated_close(out[:2], pk.rotate_quantize_ref(x, hb, signs))
    plain = dataclasses.replace(tiling, prefetch=False, programs=0)
    for got, want in zip(out, triton_rotate_quantize(x, hb, signs, cfg=plain, interpret=True, row_sum=True)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert supported(k, hb, dataclasses.replace(tiling, programs=-1)).startswith("programs=-1")


# ------------------------------------------------------------------------- fused producer (issue 12)


def producer_inputs(seed: int, m: int, k: int, groups: int):
    """A pre-LayerNorm stream (a DiT residual: nonzero mean, outlier channels) and an adaLN affine
    ``a = (1 + scale) · smooth``, ``c = shift · smooth`` of ``groups`` row groups."""
    x, signs, smooth, hb = rotation_inputs(seed, m, k)
    ks = jax.random.split(jax.random.key(seed + 1), 2)
    x = (x.astype(jnp.float32) + 0.7).astype(jnp.bfloat16)
    a = (1.0 + 0.5 * jax.random.normal(ks[0], (groups, k))) * smooth
    c = 0.3 * jax.random.normal(ks[1], (groups, k)) * smooth
    return x, signs, smooth, hb, (a, c, 1e-6)


def test_input_ref_is_the_producer_pass():
    """``input_ref``: LayerNorm + per-group affine (or the bf16 smoothing), rounded to bf16 — what an
    XLA producer pass writes and the unfused path quantizes."""
    from pallas_kernels.ops.producer.reference import layernorm_noaffine
    from pallas_kernels.ops.rotate_quantize import input_ref

    x, signs, smooth, hb, (a, c, eps) = producer_inputs(5, 12, 144, 3)
    want = (layernorm_noaffine(x).reshape(3, 4, 144) * a[:, None] + c[:, None]).astype(jnp.bfloat16)
    got = input_ref(x, prenorm=(a, c, eps), bf16_input=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.reshape(12, 144), np.float32))
    got = input_ref(x, smooth, bf16_input=True)
    want = (x.astype(jnp.float32) * smooth.astype(jnp.bfloat16).astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))
    q, s = pk.rotate_quantize_ref(x, hb, signs, prenorm=(a, c, eps), bf16_input=True)
    qr, sr = pk.rotate_quantize_ref(input_ref(x, prenorm=(a, c, eps), bf16_input=True), hb, signs)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    with pytest.raises(ValueError, match="fold smooth_mult"):
        input_ref(x, smooth, prenorm=(a, c, eps))
    with pytest.raises(ValueError, match="G=3 row groups"):
        input_ref(x[:10], prenorm=(a, c, eps))


# the kernel's LayerNorm statistics (another summation order; by default Σx² - mean² from one pass) can move an
# outlier channel's bf16 input by one unit in the last place (2^-8 of it), and with it the row max: 1.4e-5 in
# interpret mode, 5.1e-5 over 4160 rows on an H100 (the code flips stay within the usual bound)
PN_RTOL = 2e-4

PRODUCER_CASES = [  # (K, M, groups): stored tilings (8 rows per program)
    (1152, 16, 2),  # groups of 8 rows: a and c loaded once per program (hoist_pn); through the dispatch
    (4608, 4, 2),  # groups of 2 rows (loaded per row), M < the program's rows (padded); two column
    #   tiles per row (grow 2), row loop; the two-pass variance
]


@pytest.mark.parametrize("k,m,groups", PRODUCER_CASES, ids=[f"K{k}-M{m}-G{g}" for k, m, g in PRODUCER_CASES])
def test_prenorm_prologue_interpret_matches_reference(k, m, groups):
    x, signs, _, hb, pn = producer_inputs(k + m, m, k, groups)
    if k == 1152:  # the dispatch (leading dims kept)
        out = pk.rotate_quantize(x.reshape(2, m // 2, k), hb, signs, backend="triton", row_sum=True, prenorm=pn,
                                 bf16_input=True, tiling=dataclasses.replace(rotate_tiling(k), hoist_pn=True))
        assert out[0].shape == (2, m // 2, k) and out[1].shape == out[2].shape == (2, m // 2, 1)
        *out, rs = (a.reshape(m, -1) for a in out)
    else:
        *out, rs = triton_rotate_quantize(x, hb, signs, cfg=dataclasses.replace(rotate_tiling(k), pn_two_pass=True),
                                          interpret=True, row_sum=True, prenorm=pn, bf16_input=True)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, prenorm=pn, bf16_input=True), scale_rtol=PN_RTOL)
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(out[0], np.int32).sum(-1, keepdims=True))


@pytest.mark.parametrize("k,m", [(1152, 9), (4608, 3)])
def test_bf16_smoothing_keeps_the_exact_operand(k, m):
    """``bf16_input``: the smoothing multiplier (not ±1) rides with the signs on the bf16 operand; the
    prescaled tilings bound the fp16 range from the product."""
    x, signs, smooth, hb = rotation_inputs(7 * k + m, m, k)
    smooth = smooth * 8.0  # multipliers up to 24: the raw-x bound of prescale would overflow fp16
    x = x.at[1].set(0)
    cfg = rotate_tiling(k)
    assert cfg.prescale
    out = triton_rotate_quantize(x, hb, signs, smooth, cfg=cfg, interpret=True, bf16_input=True)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, smooth, bf16_input=True))


def _stored_gpu_rows():
    import json

    from pallas_kernels.ops.rotate_quantize import CONFIG_FILE

    table = json.loads(CONFIG_FILE.read_text())
    return [(gpu, int(key.split(",")[1]), RotateTiling.from_dict(d))
            for gpu, kernels in table.items() if gpu not in ("default", "_comment")
            for key, d in kernels.get("triton_rotate_quantize", {}).items() if key != "default"]


@pytest.mark.parametrize("gpu,k,tiling", _stored_gpu_rows(), ids=[f"{g.split()[1]}-K{k}" for g, k, _ in _stored_gpu_rows()])
def test_stored_gpu_rows_run_the_producers(gpu, k, tiling):
    """The GPU rows of configs.json (chosen by the device sweeps; on the CPU only the default rows run otherwise),
    in interpret mode: the LayerNorm prologue where the tiling hoists the affine, and the bf16 smoothing."""
    m = 2 * max(tiling.bm, 1)
    x, signs, smooth, hb, pn = producer_inputs(k + 3, m, k, 2)
    *out, rs = triton_rotate_quantize(x, hb, signs, smooth, cfg=tiling, interpret=True, bf16_input=True,
                                      row_sum=True)  # the zero-point path (asymmetric weights) sums the codes
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, smooth, bf16_input=True))
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(out[0], np.int32).sum(-1, keepdims=True))
    if tiling.hoist_pn:
        out = triton_rotate_quantize(x, hb, signs, cfg=tiling, interpret=True, prenorm=pn, bf16_input=True)
        assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, prenorm=pn, bf16_input=True),
                             scale_rtol=PN_RTOL)


def test_rotate_tiling_reads_m_bucket_rows(monkeypatch):
    """An ``"<M-bucket>,<K>,0"`` row overrides the K row for those M (the H100's persistent grid at M > 16384); the
    LayerNorm prologue reads its own table first, so the plain table's M rows do not reach it."""
    from pallas_kernels import _config

    monkeypatch.setattr(_config, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    k_row = rotate_tiling(1152)
    assert rotate_tiling(1152, m=8192) == k_row and rotate_tiling(1152, m=16384) == k_row
    big = rotate_tiling(1152, m=32768)
    assert big.programs > 0 and big != k_row and rotate_tiling(1152, m=10 ** 6) == big
    assert rotate_tiling(1152, prenorm=True, m=32768) == k_row and k_row.hoist_pn
    assert rotate_tiling(4608, m=32768) == rotate_tiling(4608)
    assert rotate_tiling(1152, smooth=True, m=32768) == rotate_tiling(1152, smooth=True)


def test_producer_dispatch_and_refusals():
    from pallas_kernels.ops.rotate_quantize import supported_input

    x, signs, _, hb, pn = producer_inputs(3, 8, 1152, 2)
    cfg = rotate_tiling(1152)
    assert supported_input(x, None, pn, True, hb, cfg) is None
    assert "bf16 x" in supported_input(x.astype(jnp.float32), None, pn, True, hb, cfg)
    assert "bf16_input=True" in supported_input(x, None, pn, False, hb, cfg)
    assert "one row per tile" in supported_input(x, None, pn, True, hb, RotateTiling(w=16, rows_per_tile=2))
    # an input the kernel does not take runs the XLA path
    f32 = pk.rotate_quantize(x.astype(jnp.float32), hb, signs, backend="triton", prenorm=pn, bf16_input=True)
    np.testing.assert_array_equal(np.asarray(f32[0]), np.asarray(
        pk.rotate_quantize_ref(x.astype(jnp.float32), hb, signs, prenorm=pn, bf16_input=True)[0]))


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k", [1152, 4608])
@pytest.mark.parametrize("with_smooth", [False, True])
def test_triton_rotate_quantize_gpu(k, with_smooth):
    x, signs, smooth, hb = rotation_inputs(k, 2048 + 5, k)
    smooth = smooth if with_smooth else None
    out = pk.rotate_quantize(x, hb, signs, smooth, backend="triton")
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, smooth))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k,m,tiling", PACKED_CASES, ids=[f"K{k}" for k, _, _ in PACKED_CASES])
def test_packed_codes_gpu(k, m, tiling):
    """The PTX packing (byte order of cvt.pack.sat.s8) on the device."""
    x, signs, _, hb = rotation_inputs(k + 1, 2048 + 3, k)
    out = triton_rotate_quantize(x, hb, signs, cfg=tiling)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k,m,tiling", PIPELINED_CASES, ids=[f"K{k}" for k, _, _ in PIPELINED_CASES])
def test_prefetch_and_persistent_grid_gpu(k, m, tiling):
    """Software-pipelined row loops and the persistent grid (tail tiles redone) on the device, with the code sums of
    the zero-point path."""
    x, signs, _, hb = rotation_inputs(k + 2, 2048 + 5, k)
    if tiling.programs:  # ~21 row tiles per program and a clamped tail at M = 2053
        tiling = dataclasses.replace(tiling, programs=96)
    out = triton_rotate_quantize(x, hb, signs, cfg=tiling)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs))
    q, _, rs = triton_rotate_quantize(x, hb, signs, cfg=tiling, row_sum=True)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(out[0]))
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(q, np.int32).sum(-1, keepdims=True))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k", [1152, 4608])
@pytest.mark.parametrize("mode", ["prenorm", "bf16_smooth"])
def test_fused_producer_gpu(k, mode):
    """The LayerNorm + adaLN prologue and the bf16 smoothing in the stored tilings, on the device."""
    m = 4096 + 64
    x, signs, smooth, hb, pn = producer_inputs(k + 3, m, k, 2)
    kw = dict(prenorm=pn) if mode == "prenorm" else dict(smooth_mult=smooth)
    out = pk.rotate_quantize(x, hb, signs, backend="triton", bf16_input=True, **kw)
    assert_rotated_close(out, pk.rotate_quantize_ref(x, hb, signs, bf16_input=True, **kw),
                         scale_rtol=PN_RTOL if mode == "prenorm" else 1e-6)
