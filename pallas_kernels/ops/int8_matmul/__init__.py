"""int8 x int8 -> int32 GEMM (Mosaic GPU wgmma / Pallas-Triton / XLA cuBLASLt) + fused epilogue."""

from pallas_kernels.ops.int8_matmul.api import int8_gemm, int8_matmul
from pallas_kernels.ops.int8_matmul.reference import int8_matmul_ref, scaled_epilogue_ref

__all__ = ["int8_gemm", "int8_matmul", "int8_matmul_ref", "scaled_epilogue_ref"]
