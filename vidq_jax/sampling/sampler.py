"""The :class:`Sampler` descriptor every sampler module declares (registered in :mod:`vidq_jax.sampling`)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Sampler"]

_SCHEDULE_ARGS = ("steps", "noise_shape")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One sampler: its ``sample`` function and the model timesteps that function feeds the model.

    ``name``: registry key (the ``sampler`` of :mod:`vidq_jax.pipeline` settings and ``model.json``);
    ``title``: its name in messages. ``sample(apply_fn, params, noise, cond, uncond=None, *, steps,
    guidance_scale, ...)`` follows the sampler convention of :mod:`vidq_jax.sampling`.
    ``model_timesteps(steps, noise_shape, **kw)`` is the schedule ``sample`` itself uses: the model
    timestep of every step in sampling order. Its keywords are keywords of ``sample`` and take no
    defaults of their own: :meth:`timesteps` fills in ``sample``'s, so the two cannot disagree.
    """

    name: str
    title: str
    sample: Callable[..., Any]
    model_timesteps: Callable[..., np.ndarray]

    def __post_init__(self) -> None:
        sample_params = inspect.signature(self.sample).parameters
        for k, p in inspect.signature(self.model_timesteps).parameters.items():
            if k in _SCHEDULE_ARGS:
                continue
            if k not in sample_params or sample_params[k].default is inspect.Parameter.empty:
                raise TypeError(f"sampler {self.name!r}: timestep keyword {k!r} is not a keyword of its sample "
                                "function with a default")
            if p.default is not inspect.Parameter.empty:
                raise TypeError(f"sampler {self.name!r}: timestep keyword {k!r} must take its default from sample")

    @property
    def keywords(self) -> frozenset[str]:
        """Keyword arguments ``sample`` accepts (after ``apply_fn, params, noise, cond, uncond``)."""
        params = list(inspect.signature(self.sample).parameters.values())
        return frozenset(p.name for p in params[5:] if p.kind is not inspect.Parameter.VAR_KEYWORD)

    @property
    def needs_key(self) -> bool:
        """True when ``sample`` requires a PRNG ``key`` (IDDPM's ancestral noise)."""
        p = inspect.signature(self.sample).parameters.get("key")
        return p is not None and p.default is inspect.Parameter.empty

    @property
    def accepts_key(self) -> bool:
        """True when ``sample`` takes a PRNG ``key`` at all (required, or optional as DDIM's ``eta > 0``)."""
        return "key" in inspect.signature(self.sample).parameters

    def key_kwargs(self, key: Any | None) -> dict[str, Any]:
        """``{"key": key}`` for a sampler that takes one (``{}`` for the others or without a key);
        ``ValueError`` when the sampler needs a key and ``key`` is ``None``."""
        if key is None:
            if self.needs_key:
                raise ValueError(f"the {self.title} sampler needs a PRNG key")
            return {}
        return {"key": key} if self.accepts_key else {}

    def timesteps(self, steps: int, noise_shape: Sequence[int], **kw: Any) -> np.ndarray:
        """Model timestep of every step (sampling order) of ``sample(..., steps=steps, **kw)`` on a
        latent of shape ``noise_shape`` (``(B, ...)``). ``kw``: any keywords of ``sample`` (those
        that do not change the schedule are ignored)."""
        sample_params = inspect.signature(self.sample).parameters
        unknown = sorted(set(kw) - self.keywords)
        if unknown:
            raise TypeError(f"the {self.name} sampler takes no keyword(s) {unknown}")
        args = {k: kw[k] if k in kw else sample_params[k].default
                for k in inspect.signature(self.model_timesteps).parameters if k not in _SCHEDULE_ARGS}
        return np.asarray(self.model_timesteps(steps, tuple(noise_shape), **args))
