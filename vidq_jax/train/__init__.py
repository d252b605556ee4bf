"""Training of the demo models (``python -m vidq_jax.train t2i|t2v|features ...``).

See :mod:`vidq_jax.train.loop` (loop, outputs), :mod:`vidq_jax.train.tasks` (data + losses),
:mod:`vidq_jax.train.configs` (model sizes, GPU defaults, ``--tiny``).
"""

from vidq_jax.train.configs import TrainConfig, default_train_config, t2i_model_config, t2v_model_config
from vidq_jax.train.loop import train

__all__ = ["TrainConfig", "default_train_config", "t2i_model_config", "t2v_model_config", "train"]
