"""Model and training configurations of the demo models (GPU defaults and a ``tiny`` smoke mode)."""

from __future__ import annotations

import dataclasses

from models.dit import DiTConfig
from models.pixart import PixArtConfig
from models.stdit3 import STDiT3Config
from vidq_jax.data.text import CAPTION_CHANNELS, MAX_LENGTH

__all__ = ["TrainConfig", "c2i_model_config", "t2i_model_config", "t2v_model_config", "default_train_config",
           "T2I_DEMO_PROMPTS", "T2V_MODEL_SIZES", "TASKS", "VIDEO_FPS"]

TASKS: tuple[str, ...] = ("t2i", "t2v", "c2i")

VIDEO_FPS = 8.0

# a handful of prompts that are emoji names of the training set (the demo ships their embeddings)
T2I_DEMO_PROMPTS: tuple[str, ...] = (
    "grinning face",
    "red apple",
    "cat face",
    "rocket",
    "snowflake",
    "ghost",
    "rainbow",
    "fire",
)


def t2i_model_config(tiny: bool = False) -> PixArtConfig:
    """PixArt-α architecture in pixel space: 32×32 RGB, patch 2 (256 tokens), MiniLM captions.

    Full: hidden 256, depth 5, 4 heads (6.0 M params, 12 MB in bf16)."""
    return PixArtConfig(
        input_size=32,
        patch_size=2,
        in_channels=3,
        hidden_size=32 if tiny else 256,
        depth=1 if tiny else 5,
        num_heads=2 if tiny else 4,
        mlp_ratio=4.0,
        caption_channels=CAPTION_CHANNELS,
        model_max_length=MAX_LENGTH,
        pred_sigma=False,
        pe_interpolation=1.0,
        micro_condition=False,
        family="pixart-alpha",
    )


# named sizes of the text-to-video STDiT3: (hidden, depth, heads). "s" is the first shipped model (4.1 M params,
# 7.8 MiB bf16; its FP samples were smears: subject 0.75 / motion 0.5 on 4 videos); "m" its successor (9.3 M
# params, 17.7 MiB bf16), the default.
T2V_MODEL_SIZES: dict[str, tuple[int, int, int]] = {"s": (192, 3, 3), "m": (256, 4, 4)}


def t2v_model_config(tiny: bool = False, size: str = "") -> STDiT3Config:
    """STDiT3 architecture in pixel space: 8×32×32 RGB, patch (1, 2, 2), MiniLM captions.

    ``size``: a key of :data:`T2V_MODEL_SIZES` ("" = "m": hidden 256, depth 4 — 4 spatial + 4 temporal
    blocks —, 4 heads).
    ``input_sq_size = 32``: the positional-table scale is 1 at the trained 32×32 (height/width inputs
    are pixel sizes, 32)."""
    size = size or "m"
    if size not in T2V_MODEL_SIZES:
        raise ValueError(f"unknown t2v model size {size!r} ({' | '.join(T2V_MODEL_SIZES)})")
    hidden, depth, heads = T2V_MODEL_SIZES[size]
    return STDiT3Config(
        input_sq_size=32,
        in_channels=3,
        patch_size=(1, 2, 2),
        hidden_size=32 if tiny else hidden,
        depth=1 if tiny else depth,
        num_heads=2 if tiny else heads,
        mlp_ratio=4.0,
        caption_channels=CAPTION_CHANNELS,
        model_max_length=MAX_LENGTH,
        pred_sigma=False,
        qk_norm=True,
    )


def c2i_model_config(tiny: bool = False) -> DiTConfig:
    """DiT (the DiT-XL/2 module, small) in pixel space: 32×32 RGB, patch 2 (256 tokens), conditioned on the
    10 emoji categories (+ the null class of CFG), ε only (``pred_sigma=False``: sampled with DDIM).

    Full: hidden 256, depth 5, 4 heads (6.2 M params, 12 MB in bf16). The labels are the indices of
    ``EMOJI_CATEGORIES`` (those of the emoji feature network); "Other" holds no emoji and stays untrained."""
    from vidq_jax.data.emoji import EMOJI_CATEGORIES

    return DiTConfig(
        input_size=32,
        patch_size=2,
        in_channels=3,
        hidden_size=32 if tiny else 256,
        depth=1 if tiny else 5,
        num_heads=2 if tiny else 4,
        mlp_ratio=4.0,
        num_classes=len(EMOJI_CATEGORIES),
        use_cfg_embedding=True,
        pred_sigma=False,
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (AdamW, warmup + cosine decay to 10 %, grad clipping, EMA)."""

    task: str = "t2i"  # t2i | t2v | c2i
    steps: int = 20000
    batch_size: int = 128
    lr: float = 3e-4
    warmup: int = 1000
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    caption_dropout: float = 0.1  # c2i: label dropout to the null class
    seed: int = 0
    dtype: str = "auto"  # auto (bf16 on GPU, float32 on CPU) | bfloat16 | float32
    steps_per_call: int = 0  # train steps fused in one jitted scan; 0 = auto (10 on GPU, 1 on CPU)
    log_every: int = 100
    ckpt_every: int = 2000
    keep_ckpts: int = 2
    time_limit: float = 0.0  # seconds of training in this invocation (0 = none); checkpoint + export, rerun to resume
    fit_schedule: bool = False  # with time_limit: shorten the LR schedule so that it completes within the limit
    time_reserve: float = 20.0  # seconds of time_limit kept free for checkpoint/export when fitting
    tiny: bool = False
    sample_steps: int = 20  # preview sampler steps (the export records the task's own: 20 / 30 / 50 steps)
    guidance_scale: float = 4.5
    model_size: str = ""  # t2v: a key of T2V_MODEL_SIZES ("" = the default)
    # t2v: distribution of the flow time t/1000: "logit-normal" (SD3 / Open-Sora 1.2; the first shipped model),
    # "uniform", "mixed" (half each: 4x the logit-normal's share of t > 0.9, where the clip's motion
    # direction is decided) or "mixed-high" (a quarter of the draws in [0.9, 1): vidq_jax.train.tasks.flow_times)
    time_sampling: str = "logit-normal"
    init_from: str = ""  # start (params and EMA) from an exported model folder instead of the random init
    # t2v: weight of an extra loss on the frame-to-frame differences of the velocity error, ‖Δ_t(v̂ − v)‖² / 2
    # (0 = off, the shipped models). It weighs the part of the error that differs between neighbouring frames —
    # a sprite in the wrong place of one frame — against the part common to all frames (appearance).
    motion_loss: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_train_config(task: str, tiny: bool = False, **overrides) -> TrainConfig:
    """GPU defaults per task; ``tiny`` = a CPU smoke run (3 steps, batch 4)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} ({' | '.join(TASKS)})")
    base: dict = dict(task=task)
    if task == "t2i":
        base.update(steps=20000, batch_size=128, guidance_scale=4.5, sample_steps=20)
    elif task == "c2i":
        base.update(steps=20000, batch_size=128, guidance_scale=4.0, sample_steps=50)
    else:
        base.update(steps=20000, batch_size=64, warmup=500, guidance_scale=4.0, sample_steps=30, time_sampling="mixed")
    if tiny:
        base.update(steps=3, batch_size=4, warmup=1, log_every=1, ckpt_every=2, ema_decay=0.9,
                    tiny=True, sample_steps=2)
    base.update({k: v for k, v in overrides.items() if v is not None})
    motion = base.get("motion_loss", 0.0)
    if motion and task != "t2v" or motion < 0:
        raise ValueError(f"motion_loss={motion!r}: a weight >= 0, for the t2v task only (got task {task!r})")
    return TrainConfig(**base)
