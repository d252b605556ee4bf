"""ViDiT-Q quantization core: quantizers, randomized Hadamard, channel balancing, the quantized
weight record (Dense seam) with simulate / xla / pallas backends, configuration presets, weight
quantization methods and calibration statistics by name, and timestep-segment mixed precision.

Modules: :mod:`.quantizers`, :mod:`.hadamard`, :mod:`.balance`, :mod:`.config`, :mod:`.record`,
:mod:`.methods` (weight methods by name), :mod:`.stats` (calibration statistics of Dense inputs, by
name), :mod:`.tree` (params-tree helpers), :mod:`.api` (``quantize_params``), :mod:`.plan` +
:mod:`.segmented` + :mod:`.groups` + :mod:`.sensitivity` (mixed precision), :mod:`.io` (quantized
folders). :mod:`.stats` and :mod:`.api` import ``models.layers`` lazily, at call time.
"""

from vidq_jax.quant.api import (
    quantization_summary,
    quantize_params,
    quantized_params_template,
    set_backend,
)
from vidq_jax.quant.balance import (
    balance_for_layer,
    channel_absmax,
    incoherence,
    layer_key,
    smooth_scale,
    viditq_multiplier,
    weight_channel_absmax,
)
from vidq_jax.quant.config import (
    DEFAULT_KEEP_FLOAT,
    PRESETS,
    LayerQuant,
    LayerRule,
    QuantConfig,
    check_rules,
)
from vidq_jax.quant.hadamard import (
    UnsupportedHadamardSize,
    hadamard_factors,
    hadamard_matrix,
    hadamard_transform,
    random_signs,
)
from vidq_jax.quant.quantizers import (
    QTensor,
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quant,
    fake_quant_per_group,
    fake_quant_per_token,
    fake_quant_with_params,
    quantize,
    quantize_with_params,
)
from vidq_jax.quant.methods import WEIGHT_METHODS, WeightMethod
from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
from vidq_jax.quant.record import (
    QuantizedWeight,
    balanced_weight,
    integer_accumulators,
    integer_linear,
    quantize_weight,
    static_act_params,
)
from vidq_jax.quant.segmented import SegmentedWeight
from vidq_jax.quant.stats import STATISTICS, LayerStats, collect_stats
from vidq_jax.quant.tree import dense_kernels, dense_paths, get_kernel, set_kernel, unwrap_params

__all__ = [
    "BitsRule",
    "DEFAULT_KEEP_FLOAT",
    "LayerQuant",
    "LayerRule",
    "LayerStats",
    "MixedPrecisionPlan",
    "PRESETS",
    "QTensor",
    "QuantConfig",
    "QuantSpec",
    "QuantizedWeight",
    "STATISTICS",
    "SegmentedWeight",
    "UnsupportedHadamardSize",
    "WEIGHT_METHODS",
    "WeightMethod",
    "balance_for_layer",
    "balanced_weight",
    "channel_absmax",
    "check_rules",
    "collect_stats",
    "compute_qparams",
    "dense_kernels",
    "dense_paths",
    "dequantize",
    "fake_quant",
    "fake_quant_per_group",
    "fake_quant_per_token",
    "fake_quant_with_params",
    "get_kernel",
    "hadamard_factors",
    "hadamard_matrix",
    "hadamard_transform",
    "incoherence",
    "integer_accumulators",
    "integer_linear",
    "layer_key",
    "quantization_summary",
    "quantize",
    "quantize_params",
    "quantize_weight",
    "quantize_with_params",
    "quantized_params_template",
    "random_signs",
    "set_backend",
    "set_kernel",
    "smooth_scale",
    "static_act_params",
    "unwrap_params",
    "viditq_multiplier",
    "weight_channel_absmax",
]
