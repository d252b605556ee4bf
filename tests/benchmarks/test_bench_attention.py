"""bench_attention's cuDNN FP8 rows: where they apply, and what they say where they do not (CPU)."""

from benchmarks import bench_attention as ba


def test_cudnn_fp8_rows_masked_shape_is_one_row_with_the_reason():
    rows = ba.cudnn_fp8_rows(72, masked=True)
    assert len(rows) == 1 and rows[0][1] is None and "mask" in rows[0][3]


def test_cudnn_fp8_rows_pad_the_head_to_a_multiple_of_16():
    names = [r[0] for r in ba.cudnn_fp8_rows(72, masked=False)]
    assert names == ["cudnn_fp8:pad80", "cudnn_fp8:pad80:kernel-only"] or names == ["cudnn_fp8"]


def test_cudnn_fp8_is_a_variant_group():
    assert "cudnn_fp8" in ba.VARIANT_GROUPS
