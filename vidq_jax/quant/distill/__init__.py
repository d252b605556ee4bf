"""Q-VDiT's learned quantization (viditq_method.md §10): temporal maintenance distillation of LoRA, weight
step sizes and the token-aware estimator's rank-1 branch against the float model.

* :func:`distill` (:mod:`.loop`) — the training loop: calibrated ``qvdit`` records → learnable twins →
  model-level distillation (one jitted step, block remat, AdamW + cosine, orbax checkpoints, progress bar)
  → LoRA folded in, quantized once into :class:`~vidq_jax.quant.tqe.TQEWeight` records;
* :class:`LearnableTQE` (:mod:`.learnable`) — the training-time record (straight-through fake quantization);
* :func:`tmd_loss` (:mod:`.loss`) — output MSE + γ · KL of the frame-relation distributions.

The command line is ``vidq distill MODEL_DIR --preset qvdit-w4a6 --out OUT_DIR``.
"""

from vidq_jax.quant.distill.learnable import LearnableTQE, learnable_from, straight_through
from vidq_jax.quant.distill.loop import DistillResult, distill, distill_config, latent_frames, saliency_frame_scales
from vidq_jax.quant.distill.loss import GAMMA, temporal_kl, tmd_loss

__all__ = ["GAMMA", "DistillResult", "LearnableTQE", "distill", "distill_config", "latent_frames", "learnable_from",
           "saliency_frame_scales", "straight_through", "temporal_kl", "tmd_loss"]
