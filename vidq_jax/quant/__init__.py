"""ViDiT-Q quantization core: quantizers, randomized Hadamard, channel balancing, the quantized
weight record (Dense seam) with simulate / xla / pallas backends, and configuration presets.

Modules: :mod:`.quantizers`, :mod:`.hadamard`, :mod:`.balance`, :mod:`.config`, :mod:`.record`,
:mod:`.calibrate` and :mod:`.api` (these two import ``models.layers`` lazily, at call time).
"""

from vidq_jax.quant.api import (
    dense_paths,
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
from vidq_jax.quant.calibrate import LayerStats, collect_stats
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
from vidq_jax.quant.record import (
    QuantizedWeight,
    balanced_weight,
    integer_accumulators,
    integer_linear,
    quantize_weight,
    static_act_params,
)

__all__ = [
    "DEFAULT_KEEP_FLOAT",
    "PRESETS",
    "LayerQuant",
    "LayerRule",
    "LayerStats",
    "QTensor",
    "QuantConfig",
    "QuantSpec",
    "QuantizedWeight",
    "UnsupportedHadamardSize",
    "balance_for_layer",
    "balanced_weight",
    "channel_absmax",
    "check_rules",
    "collect_stats",
    "dense_paths",
    "compute_qparams",
    "dequantize",
    "fake_quant",
    "fake_quant_per_group",
    "fake_quant_per_token",
    "fake_quant_with_params",
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
    "quantized_params_template",
    "quantize_weight",
    "quantize_with_params",
    "random_signs",
    "set_backend",
    "smooth_scale",
    "static_act_params",
    "viditq_multiplier",
    "weight_channel_absmax",
]
