"""Quantization configuration: per-layer settings, regex layer rules and named presets.

* :class:`LayerQuant` — everything needed to quantize ONE Dense layer (weight and input-activation
  quantizer, channel balancing, backend). Frozen, hashable, validated at construction; it is also
  the static metadata carried by :class:`~vidq_jax.quant.record.QuantizedWeight`.
* :class:`LayerRule` — ``(regex, settings)``; ``settings=None`` keeps matching layers in float.
* :class:`QuantConfig` — a default :class:`LayerQuant` + ordered rules + "keep float" patterns;
  :meth:`QuantConfig.resolve` maps a layer path (``"blocks_3/attn/qkv"``, the Flax param path of
  the Dense module without ``/kernel``) to its effective :class:`LayerQuant` or ``None`` (float).

Rule semantics (documented contract):

1. a pattern is either ``group:<name>`` — a layer group declared by the model's family
   (:mod:`models.families`: ``self_attn``, ``cross_attn``, ``cross_kv``, ``temporal_attn``, ``ffn``, ``adaln``,
   ``embedders``, ``final``, and the derived ``blocks`` / ``edge_blocks`` / ``attn_out``) — or a regex matched with
   :func:`re.search` (substring; anchor with ``^``/``$`` or ``(^|/)``). Groups are resolved by
   :meth:`QuantConfig.for_model` (``quantize_params`` does it); an unbound config resolves a group as the
   union of the registered families' patterns (``edge_blocks`` needs the model);
2. start from ``default`` (``None`` = float); apply EVERY matching rule in order — a rule with
   settings replaces those fields (starting from ``LayerQuant()`` if the layer was float so far), a
   rule with ``settings=None`` makes it float — so for every field **the last matching rule wins**
   (like ViDiT-Q's regex lists, where later matches override; note qwix uses first-match-wins);
3. finally ``keep_float`` patterns (and the cross-attention K/V pattern when
   ``quantize_cross_kv=False``) force float regardless of the rules — like ViDiT-Q's
   ``remain_fp_regex``. The default keeps ``group:embedders``, ``group:adaln`` and ``group:final`` float.
4. a rule that matches no layer of the model is an error naming the rule and the model
   (:func:`check_rules`); ``keep_float`` patterns are not checked (a family may lack a group).

The backend (``LayerQuant.backend``) is a run-time choice, not part of the recipe: :meth:`QuantConfig.to_dict`
(what a quantized folder's ``model.json`` stores) leaves it out, so a folder loaded elsewhere runs with that
machine's best backend (``auto``). The vocabulary and its resolution live in :mod:`vidq_jax.quant.backends`.

Smoothing convention: ``smooth_alpha`` is SmoothQuant's migration strength ``α``
(``s_c = A_c^α / max|W_:,c|^(1-α)``, ``x/s``, ``W·s``). ViDiT-Q's new code writes the same thing as
``m_c = max|W_:,c|^a / A_c^(1-a)`` applied as ``x·m``, ``W/m``: ``m = 1/s`` with ``a = 1 - α``
(see :mod:`vidq_jax.quant.balance`). Presets quote the ViDiT-Q ``a`` in comments.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from models.families import DERIVED_GROUPS, FAMILIES, GROUPS, Family, family_of
from vidq_jax.quant.attention import ATTENTION_KEYS, check_attention_setting
from vidq_jax.quant.backends import check as check_backend
from vidq_jax.quant.quantizers import QuantSpec, check_bits

WEIGHT_GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")
ACT_GRANULARITIES: tuple[str, ...] = ("token", "tensor", "group")


GROUP_PREFIX = "group:"


def _check_method(value: Any) -> None:
    # the registry (vidq_jax.quant.methods) imports the records, which import this module: it checks
    # the name itself when a layer is quantized; here only the type
    if not isinstance(value, str) or not value:
        raise ValueError(f"w_method={value!r} must name a weight quantization method (e.g. 'rtn')")


def _check_group(value: Any, field: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be a positive integer")


@dataclasses.dataclass(frozen=True)
class LayerQuant:
    """Quantization settings of one Dense layer ``y = x W + b`` (``W (K, N)``, contraction ``K``).

    Weights: ``w_bits`` (2..8), ``w_granularity`` ``"channel"`` (per output channel, default),
    ``"tensor"`` or ``"group"`` (``w_group_size`` input channels per scale, Q-DiT), ``w_symmetric``
    (ViDiT-Q uses asymmetric min-max weights).

    Activations (the Dense input, after smoothing/rotation): ``a_bits`` (2..8, ``None`` = weight
    only), ``a_granularity`` ``"token"`` (dynamic per token, default), ``"tensor"`` (static
    calibrated scale if ``a_static`` else dynamic per tensor) or ``"group"`` (dynamic per token and
    ``a_group_size`` channels), ``a_symmetric``.

    Balancing: ``smooth_alpha`` (SmoothQuant ``α`` in [0, 1], ``None`` = no smoothing; needs
    calibrated channel absmax), ``rotate`` (randomized Hadamard over ``K``).

    ``backend``: ``"auto"`` (default: ``"pallas"`` on a Hopper GPU, ``"xla"`` elsewhere, decided when
    the layer runs), ``"simulate"`` (fake quant in float32), ``"xla"`` (int8 ``dot_general``, int32
    accumulation) or ``"pallas"`` (fused kernels, falls back to ``"xla"``). ``pack_int4``: store
    ``w_bits <= 4`` weights two per byte.

    ``w_method``: the weight quantization method, a name in :data:`vidq_jax.quant.methods.WEIGHT_METHODS`
    (``"rtn"``: round-to-nearest min-max, ViDiT-Q's), checked when layers are quantized.

    ``fit_group_size``: a group size that does not divide a layer's ``C_in`` becomes the largest divisor
    of ``C_in`` below it (:meth:`fitted`; e.g. 128 -> 96 for ``C_in = 192``) instead of an error — what the
    Q-DiT presets use so that one recipe fits every family.

    ``tqe_frames``: Q-VDiT's token-aware estimator (``w_method="qvdit"``) scales its rank-1 branch per
    frame with a learnable ``M`` of this many latent frames (frame-major video tokens); ``None`` = no
    per-frame scale. :func:`vidq_jax.quant.distill.distill` sets it on the temporal-attention layers.

    ``fp8``: FP8 W8A8 (Hopper's e4m3 tensor cores) instead of integers — e4m3 weights with one scale per
    output channel (``max|W_n| / 448``) and dynamic per-token e4m3 activations; needs ``w_bits = a_bits
    = 8``, symmetric per-channel weights, dynamic symmetric per-token activations (the balancing options
    apply unchanged). The e4m3 quantizer is the kernel package's (``pallas_kernels.quantize_fp8_weight_ref``).

    ``fold_heads``: on a layer that reads an attention output (group ``attn_out``: the ``proj`` of each
    attention its family declares), the layer's balancing — smoothing (``smooth_alpha``) and, with
    ``rotate``, a PER-HEAD rotation instead of the online one over ``K`` — is absorbed offline into V's
    producer and this layer's weight (QuaRot-style, :mod:`vidq_jax.quant.fold`): the record then runs the
    plain quantizer (no online transform). Elsewhere it is an error naming the layer.
    """

    w_bits: int = 8
    w_granularity: str = "channel"
    w_group_size: int | None = None
    w_symmetric: bool = False
    a_bits: int | None = 8
    a_granularity: str = "token"
    a_group_size: int | None = None
    a_symmetric: bool = True
    a_static: bool = False
    smooth_alpha: float | None = None
    rotate: bool = False
    backend: str = "auto"
    pack_int4: bool = True
    w_method: str = "rtn"
    fit_group_size: bool = False
    tqe_frames: int | None = None
    fp8: bool = False
    fold_heads: bool = False

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        _check_group(self.tqe_frames, "tqe_frames")
        if self.a_bits is not None:
            check_bits(self.a_bits, "a_bits")
        if self.w_granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(f"w_granularity={self.w_granularity!r} unknown; choose one of {WEIGHT_GRANULARITIES}")
        if self.a_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"a_granularity={self.a_granularity!r} unknown; choose one of {ACT_GRANULARITIES}")
        _check_group(self.w_group_size, "w_group_size")
        _check_group(self.a_group_size, "a_group_size")
        if (self.w_granularity == "group") != (self.w_group_size is not None):
            raise ValueError("w_group_size must be set exactly when w_granularity='group'")
        if (self.a_granularity == "group") != (self.a_group_size is not None):
            raise ValueError("a_group_size must be set exactly when a_granularity='group'")
        if self.w_group_size is not None and self.a_group_size is not None and self.w_group_size != self.a_group_size:
            raise ValueError(
                f"weight and activation group sizes must match (Q-DiT), got {self.w_group_size} vs {self.a_group_size}"
            )
        if self.a_static and self.a_granularity != "tensor":
            raise ValueError("a_static=True (calibrated activation scale) requires a_granularity='tensor'")
        if self.smooth_alpha is not None and not (0.0 <= float(self.smooth_alpha) <= 1.0):
            raise ValueError(f"smooth_alpha={self.smooth_alpha!r} must lie in [0, 1]")
        check_backend(self.backend)
        _check_method(self.w_method)
        if self.fp8 and not (self.w_bits == 8 and self.a_bits == 8 and self.w_granularity == "channel"
                             and self.w_symmetric and self.a_granularity == "token" and self.a_symmetric
                             and not self.a_static):
            raise ValueError("fp8=True (e4m3 W8A8) needs w_bits=a_bits=8, w_granularity='channel', "
                             "w_symmetric=True, a_granularity='token', a_symmetric=True, a_static=False; got "
                             f"w_bits={self.w_bits} a_bits={self.a_bits} w_granularity={self.w_granularity!r} "
                             f"w_symmetric={self.w_symmetric} a_granularity={self.a_granularity!r}")

    # -- derived specs ----------------------------------------------------------------------
    def weight_spec(self) -> QuantSpec:
        """Quantizer of the weight in ``(N, K)`` orientation (one scale per row for "channel")."""
        return QuantSpec(self.w_bits, self.w_symmetric, self.w_granularity, self.w_group_size)

    def act_spec(self) -> QuantSpec | None:
        """Quantizer of the ``(M, K)`` activation (``None`` = weight-only quantization)."""
        if self.a_bits is None:
            return None
        return QuantSpec(self.a_bits, self.a_symmetric, self.a_granularity, self.a_group_size)

    @property
    def group_size(self) -> int | None:
        """Group size shared by the grouped side(s) of the GEMM, if any."""
        return self.w_group_size or self.a_group_size

    @property
    def packed(self) -> bool:
        """True when weights are stored as packed int4 (two per byte)."""
        return self.pack_int4 and self.w_bits <= 4

    @property
    def needs_calibration(self) -> bool:
        """True when the layer needs activation statistics (smoothing or a static scale)."""
        return self.smooth_alpha is not None or self.a_static

    def check_in_features(self, k: int, where: str = "") -> None:
        """Validate against the layer's ``C_in``: group sizes divide it, Hadamard size supported,
        even ``K`` for packing. Raises ``ValueError`` naming ``where``."""
        from vidq_jax.quant.hadamard import UnsupportedHadamardSize, hadamard_factors

        loc = f" (layer {where})" if where else ""
        for g, name in ((self.w_group_size, "w_group_size"), (self.a_group_size, "a_group_size")):
            if g is not None and k % g:
                raise ValueError(f"{name}={g} does not divide C_in={k}{loc}")
        if self.rotate:
            try:
                hadamard_factors(k)
            except UnsupportedHadamardSize as e:
                raise ValueError(f"rotation impossible for C_in={k}{loc}: {e}") from e
        if self.packed and k % 2:
            raise ValueError(f"int4 packing needs an even C_in, got {k}{loc}; set pack_int4=False")

    def fitted(self, k: int) -> "LayerQuant":
        """These settings for a layer of ``C_in = k``: with :attr:`fit_group_size`, a group size that
        does not divide ``k`` becomes its largest divisor below it (weights and activations alike)."""
        g = self.group_size
        if not self.fit_group_size or g is None or k % g == 0:
            return self
        fit = max(d for d in range(1, min(g, k) + 1) if k % d == 0)
        return self.replace(**{f: fit for f in ("w_group_size", "a_group_size") if getattr(self, f) is not None})

    def replace(self, **changes: Any) -> "LayerQuant":
        """Copy with fields replaced (validated)."""
        return dataclasses.replace(self, **changes)


_LAYER_FIELDS = frozenset(f.name for f in dataclasses.fields(LayerQuant))


def _check_field(key: str, value: Any, pattern: str) -> None:
    """Validate one rule setting on its own (combinations are validated when a layer resolves)."""
    where = f"rule {pattern!r}: "
    try:
        if key == "w_bits" or (key == "a_bits" and value is not None):
            check_bits(value, key)
        elif key in ("w_group_size", "a_group_size", "tqe_frames"):
            _check_group(value, key)
        elif key == "w_granularity" and value not in WEIGHT_GRANULARITIES:
            raise ValueError(f"w_granularity={value!r} unknown; choose one of {WEIGHT_GRANULARITIES}")
        elif key == "a_granularity" and value not in ACT_GRANULARITIES:
            raise ValueError(f"a_granularity={value!r} unknown; choose one of {ACT_GRANULARITIES}")
        elif key == "w_method":
            _check_method(value)
        elif key in ATTENTION_KEYS:  # quantized attention (vidq_jax.quant.attention)
            check_attention_setting(key, value)
        elif key == "backend":
            check_backend(value)
        elif key == "smooth_alpha" and value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"smooth_alpha={value!r} must lie in [0, 1]")
    except ValueError as e:
        raise ValueError(where + str(e)) from None


@dataclasses.dataclass(frozen=True, init=False)
class LayerRule:
    """``LayerRule(pattern, settings)``: layers whose path matches ``pattern`` (``re.search``) get
    ``settings`` (a mapping of :class:`LayerQuant` field → value); ``settings=None`` keeps them float.

    ``LayerRule(r"(^|/)mlp/", w_bits=8)`` is accepted as shorthand for a settings mapping.
    """

    pattern: str
    settings: tuple[tuple[str, Any], ...] | None

    def __init__(self, pattern: str, settings: Mapping[str, Any] | None = None, **kw: Any) -> None:
        if settings is not None and kw:
            raise TypeError("give settings either as a mapping or as keywords, not both")
        if kw:
            settings = kw
        check_pattern(pattern)
        if settings is not None:
            unknown = set(settings) - _LAYER_FIELDS - set(ATTENTION_KEYS)
            if unknown:
                raise ValueError(f"rule {pattern!r}: unknown LayerQuant fields {sorted(unknown)}")
            for key, value in settings.items():
                _check_field(key, value, pattern)
            settings = tuple(sorted(dict(settings).items()))
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "settings", settings)

    @property
    def layer_settings(self) -> dict[str, Any]:
        """The :class:`LayerQuant` fields this rule sets (without the attention keys)."""
        return {k: v for k, v in self.settings or () if k not in ATTENTION_KEYS}

    @property
    def keeps_float(self) -> bool:
        return self.settings is None

    def matches(self, path: str, groups: Mapping[str, str] | None = None) -> bool:
        return matches(self.pattern, path, groups)


def check_pattern(pattern: str) -> None:
    """A valid layer pattern: ``group:<known group>`` or a compilable regex (ValueError otherwise)."""
    if pattern.startswith(GROUP_PREFIX):
        name = pattern[len(GROUP_PREFIX):]
        if name not in GROUPS + DERIVED_GROUPS:
            raise ValueError(f"unknown layer group {pattern!r}; known: "
                             f"{', '.join(GROUP_PREFIX + g for g in GROUPS + DERIVED_GROUPS)}")
        return
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid layer regex {pattern!r}: {e}") from e


def _union_group(name: str) -> str:
    """A group's regex when no family is bound: the union of every registered family's pattern."""
    if name == "edge_blocks":
        raise ValueError("group:edge_blocks names the first/last block of a particular model: bind the config "
                         "with QuantConfig.for_model(model, paths) first")
    return "|".join(f"(?:{f.group_pattern(name)})" for f in FAMILIES.values())


def pattern_regex(pattern: str, groups: Mapping[str, str] | None = None) -> str:
    """The regex a layer pattern stands for (``group:<name>`` via ``groups`` or the union of the families)."""
    if not pattern.startswith(GROUP_PREFIX):
        return pattern
    name = pattern[len(GROUP_PREFIX):]
    if groups is not None and name in groups:
        return groups[name]
    return _union_group(name)


def matches(pattern: str, path: str, groups: Mapping[str, str] | None = None) -> bool:
    """Whether the Dense ``path`` matches a layer ``pattern`` (``re.search`` of its regex)."""
    return re.search(pattern_regex(pattern, groups), path) is not None


# timestep/caption/size embedders, the adaLN-single MLP (t_block) and the final layer stay float (ViDiT-Q)
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("group:embedders", "group:adaln", "group:final")
CROSS_KV_PATTERN = "group:cross_kv"
BLOCK_LAYERS = "group:blocks"  # every Dense inside a transformer block
SHARED_CAPTION_KV = "group:cross_kv"  # every block's cross-attn K/V reads the same caption y


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Whole-model quantization recipe (see the module docstring for rule semantics).

    ``seed`` derives each layer's Hadamard sign vector (``fold_in(key(seed), crc32(path))``).

    ``share_balance``: regexes; the balanced layers matched by one pattern share ONE smoothing vector
    and Hadamard rotation ``(m, H)`` — meant for layers consuming the same tensor, so that the online
    transform can be computed once (fused upstream). q/k/v already share it (one fused ``qkv`` Dense);
    the other co-consumers in these models are the cross-attention ``kv_linear`` of every block, which
    all read the caption embedding ``y`` (:data:`SHARED_CAPTION_KV`). The shared smoothing uses the
    max over the group's weight columns and calibrated input absmax; a warning is raised when the
    members' inputs differ (not one tensor).
    """

    name: str = "custom"
    default: LayerQuant | None = dataclasses.field(default_factory=LayerQuant)
    rules: tuple[LayerRule, ...] = ()
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT
    quantize_cross_kv: bool = True
    cross_kv_pattern: str = CROSS_KV_PATTERN
    seed: int = 0
    share_balance: tuple[str, ...] = ()
    # bound by for_model(): the model family's {group: regex} table and its name (not part of the recipe)
    groups: Mapping[str, str] | None = dataclasses.field(default=None, compare=False, repr=False)
    bound_to: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.default is not None and not isinstance(self.default, LayerQuant):
            raise TypeError(f"default must be a LayerQuant or None, got {type(self.default).__name__}")
        rules = tuple(self.rules)
        for r in rules:
            if not isinstance(r, LayerRule):
                raise TypeError(f"rules must be LayerRule instances, got {r!r}")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        object.__setattr__(self, "share_balance", tuple(self.share_balance))
        for p in (*self.keep_float, self.cross_kv_pattern, *self.share_balance):
            check_pattern(p)

    def __hash__(self) -> int:  # the bound group table (a dict) is not part of the identity
        return hash((self.name, self.default, self.rules, self.keep_float, self.quantize_cross_kv,
                     self.cross_kv_pattern, self.seed, self.share_balance))

    def for_model(self, model: Any, paths: Iterable[str] | None = None) -> "QuantConfig":
        """This config with ``group:`` patterns bound to ``model``'s family (a model instance or a
        :class:`models.families.Family`); ``paths`` (the model's Dense paths) also binds ``edge_blocks``."""
        fam = model if isinstance(model, Family) else family_of(model)
        return dataclasses.replace(self, groups=fam.group_table(paths), bound_to=fam.name)

    def matches(self, pattern: str, path: str) -> bool:
        """Whether ``path`` matches ``pattern`` with this config's group binding."""
        return matches(pattern, path, self.groups)

    def resolve(self, path: str) -> LayerQuant | None:
        """Effective settings of the Dense layer at ``path`` (``None`` = stays float)."""
        eff = self.default
        for rule in self.rules:
            if not rule.matches(path, self.groups):
                continue
            if rule.settings is None:
                eff = None
                continue
            try:
                layer = rule.layer_settings
                if not layer and len(rule.settings):  # attention keys only: the linear stays as it is
                    continue
                eff = (eff if eff is not None else LayerQuant()).replace(**layer)
            except ValueError as e:
                raise ValueError(f"layer {path!r}, rule {rule.pattern!r}: {e}") from None
        if any(self.matches(p, path) for p in self.keep_float):
            return None
        if not self.quantize_cross_kv and self.matches(self.cross_kv_pattern, path):
            return None
        return eff

    def share_pattern(self, path: str) -> str | None:
        """The first :attr:`share_balance` pattern matching ``path`` (``None``: own (m, H))."""
        return next((p for p in self.share_balance if self.matches(p, path)), None)

    def resolve_all(self, paths: Iterable[str]) -> dict[str, LayerQuant | None]:
        """:meth:`resolve` for every path."""
        return {p: self.resolve(p) for p in paths}

    def replace(self, **changes: Any) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def with_rules(self, *rules: LayerRule) -> "QuantConfig":
        """Append rules (they win over the existing ones)."""
        return self.replace(rules=self.rules + tuple(rules))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (:meth:`from_dict` inverts it); stored in quantized model folders."""
        return {
            "name": self.name,
            "default": None if self.default is None else _recipe(dataclasses.asdict(self.default)),
            "rules": [[r.pattern, None if r.settings is None else _recipe(dict(r.settings))] for r in self.rules],
            "keep_float": list(self.keep_float),
            "quantize_cross_kv": self.quantize_cross_kv,
            "cross_kv_pattern": self.cross_kv_pattern,
            "seed": self.seed,
            "share_balance": list(self.share_balance),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        """Inverse of :meth:`to_dict`; a ``backend`` stored by older versions is ignored (run-time choice)."""
        d = dict(d)
        d.pop("groups", None)
        d.pop("bound_to", None)
        default = d.pop("default", None)
        rules = tuple(LayerRule(p, None if s is None else _recipe(s)) for p, s in d.pop("rules", ()))
        return cls(default=None if default is None else LayerQuant(**_recipe(default)), rules=rules, **d)

    @classmethod
    def preset(cls, name: str, *, backend: str | None = None, model: Any = None,
               paths: Iterable[str] | None = None, **changes: Any) -> "QuantConfig":
        """A named recipe (see :data:`PRESETS`); ``backend`` sets the default layer's backend and
        ``changes`` replace :class:`QuantConfig` fields. ``model`` (and its Dense ``paths``) binds the
        recipe's layer groups to that model (:meth:`for_model`; ``quantize_params`` binds anyway)."""
        if name not in PRESETS:
            raise ValueError(f"unknown quantization preset {name!r}; available: {sorted(PRESETS)}")
        cfg = PRESETS[name]()
        if backend is not None:
            if cfg.default is None:
                raise ValueError(f"preset {name!r} quantizes nothing; a backend makes no sense")
            cfg = cfg.replace(default=cfg.default.replace(backend=backend))
        cfg = cfg.replace(**changes) if changes else cfg
        return cfg.for_model(model, paths) if model is not None else cfg


def _recipe(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Layer settings as a saved recipe stores them: without the run-time ``backend``."""
    return {k: v for k, v in settings.items() if k != "backend"}


def check_rules(config: QuantConfig, paths: Iterable[str], *, model: str | None = None,
                warn: bool = True) -> list[str]:
    """Rule patterns of ``config.rules`` that match none of ``paths`` (typos, wrong model).

    With ``model`` (the model's name, e.g. ``"STDiT3 (stdit3)"``) an unmatched rule is an error: one
    ``ValueError`` naming the rules and the model. Without it the list is returned (and, with ``warn``,
    one ``UserWarning`` lists them). ``keep_float`` patterns are not checked (a family may lack a group).
    """
    paths = list(paths)
    unknown = [r.pattern for r in config.rules if not any(r.matches(p, config.groups) for p in paths)]
    if unknown and model is not None:
        raise ValueError(
            f"quantization config {config.name!r}: rule(s) {unknown} match no Dense layer of {model} "
            f"(its layers look like {paths[:3]})"
        )
    if unknown and warn:
        warnings.warn(
            f"quantization config {config.name!r}: rules match no Dense layer of this model: {unknown} "
            f"(layers look like {paths[:3]})",
            stacklevel=2,
        )
    return unknown


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------

# ViDiT-Q weight/activation quantizers: per-output-channel asymmetric min-max weights,
# dynamic per-token symmetric activations (new code; matches the CUDA kernels).
_W8A8 = LayerQuant(w_bits=8, a_bits=8)


def _balanced(alpha: float) -> tuple[LayerRule, ...]:
    return (LayerRule(BLOCK_LAYERS, smooth_alpha=alpha, rotate=True),)


def _fp() -> QuantConfig:
    return QuantConfig("fp", default=None)


def _naive_w8a8() -> QuantConfig:
    # Per-channel weights + STATIC per-tensor activations (calibrated absmax): the naive PTQ baseline.
    return QuantConfig("naive-w8a8", default=_W8A8.replace(a_granularity="tensor", a_static=True))


def _dynamic_w8a8() -> QuantConfig:
    return QuantConfig("dynamic-w8a8", default=_W8A8)


def _smoothquant(w_bits: int) -> QuantConfig:
    return QuantConfig(f"smoothquant-w{w_bits}a8", default=_W8A8.replace(w_bits=w_bits, smooth_alpha=0.5))


def _quarot(w_bits: int) -> QuantConfig:
    return QuantConfig(f"quarot-w{w_bits}a8", default=_W8A8.replace(w_bits=w_bits, rotate=True))


def _viditq_w8a8() -> QuantConfig:
    # ViDiT-Q a = 0.75 (OpenSora1.2 W8A8) -> α = 0.25; PixArt-Σ W8A8 keeps cross-attn K/V in float.
    return QuantConfig(
        "viditq-w8a8", default=_W8A8, rules=_balanced(0.25), quantize_cross_kv=False
    )


def _viditq_w6a6() -> QuantConfig:
    base = _W8A8.replace(w_bits=6, a_bits=6)
    return QuantConfig("viditq-w6a6", default=base, rules=_balanced(0.25))


def _viditq_w4a8() -> QuantConfig:
    # ViDiT-Q PixArt-Σ W4A8 a = 0.99 -> α = 0.01 (nearly pure weight-column equalisation).
    base = _W8A8.replace(w_bits=4)
    return QuantConfig("viditq-w4a8", default=base, rules=_balanced(0.01))


def _viditq_w4a8_mp() -> QuantConfig:
    # PixArt-Σ W4A8-MP table of the new code: W4 default, W8 for every MLP and the first/last block
    # (the model's own, through group:edge_blocks). Timestep-wise bit tables (OpenSora v1.0) are
    # mixed-precision plans (vidq_jax.quant.plan), not rules.
    base = _W8A8.replace(w_bits=4)
    rules = _balanced(0.01) + (
        LayerRule("group:ffn", w_bits=8),
        LayerRule("group:edge_blocks", w_bits=8),
    )
    return QuantConfig("viditq-w4a8-mp", default=base, rules=rules)


# Q-DiT (viditq_method.md §9): ONE group size per layer along C_in for the weight and its input activation
# (128; where 128 does not divide C_in, its largest divisor below 128), asymmetric min-max weights, sample-wise
# dynamic asymmetric per-token-per-group A8, round-to-nearest weights (w_method="gptq" adds GPTQ; per-layer group
# sizes come from `vidq search-groups` as a plan). Embedders, adaLN and the final layer stay float.
def _qdit(w_bits: int) -> QuantConfig:
    layer = LayerQuant(w_bits=w_bits, w_granularity="group", w_group_size=128, a_bits=8, a_granularity="group",
                       a_group_size=128, a_symmetric=False, fit_group_size=True)
    return QuantConfig(f"qdit-w{w_bits}a8", default=layer)


def _qvdit(w_bits: int, smooth_alpha: float | None) -> QuantConfig:
    """Q-VDiT (viditq_method.md §10) with the released code's real per-layer bits behind its labels
    (``weight_{3,4}_mp.yaml`` + ``act_6_mp.yaml``): "W4A6"/"W3A6" = every attention linear (self, temporal,
    cross q/kv/proj) W4/W3 with 6-bit inputs, the MLP fc1/fc2 W8 with 8-bit inputs. Weights per-channel
    asymmetric (clip-searched scale, learned by ``vidq distill``), activations dynamic per-token (symmetric
    here; the code's are asymmetric), ``w_method="qvdit"``: rank-1 TQE branch (zero until distilled), per-frame
    scale on temporal attention after distillation. W3 smooths with SmoothQuant α = 0.11 (the code's W3
    config); W4A6 does not. Embedders, adaLN and the final layer stay float."""
    base = LayerQuant(w_bits=w_bits, a_bits=6, smooth_alpha=smooth_alpha, w_method="qvdit")
    return QuantConfig(f"qvdit-w{w_bits}a6", default=base, rules=(LayerRule("group:ffn", w_bits=8, a_bits=8),))


# int8 weight-only (per-output-channel asymmetric min-max, activations stay float; no calibration): the XXL
# T5 encoder (vidq_jax.text_encoder) in a quarter of its float32 memory beside the transformer. On a DiT it
# keeps the default float layers (embedders, adaLN, final).
def _w8_only() -> QuantConfig:
    return QuantConfig("w8-only", default=LayerQuant(w_bits=8, a_bits=None))


def _qattn(name: str, base: QuantConfig, pv: str = "bf16") -> QuantConfig:
    """``base`` plus quantized spatial self-attention (issue 14, :mod:`vidq_jax.quant.attention`): INT8 Q·Kᵀ
    after Q and K smoothing, ``pv`` (bf16, or FP8 e4m3: faster on paper, 3x the attention error) P·V."""
    return base.replace(name=name, rules=base.rules + (LayerRule("group:self_attn", attn_bits=8, attn_pv=pv),))


def _fold(base: QuantConfig) -> QuantConfig:
    """``base`` with the balancing of every attention output projection (``group:attn_out``) folded offline
    into V and the projection (per-head rotation, :mod:`vidq_jax.quant.fold`; issue 12): those layers run
    the plain per-token quantizer, no online rotation."""
    return base.replace(name=base.name + "-fold", rules=base.rules + (LayerRule("group:attn_out", fold_heads=True),))


_FP8 = _W8A8.replace(w_symmetric=True, fp8=True)

PRESETS = {
    "w8-only": _w8_only,
    "fp": _fp,
    "naive-w8a8": _naive_w8a8,
    "dynamic-w8a8": _dynamic_w8a8,
    "smoothquant-w8a8": lambda: _smoothquant(8),
    "smoothquant-w4a8": lambda: _smoothquant(4),
    "quarot-w8a8": lambda: _quarot(8),
    "quarot-w4a8": lambda: _quarot(4),
    "viditq-w8a8": _viditq_w8a8,
    "viditq-w6a6": _viditq_w6a6,
    "viditq-w4a8": _viditq_w4a8,
    "viditq-w4a8-mp": _viditq_w4a8_mp,
    # attention-output balancing folded offline into V / proj, opt-in (benchmarks/results/fold_quality.md, CPU,
    # bundled models: W8A8 PSNR vs FP +1.1 dB t2i / -0.6 dB c2i vs the online rotation; W4A8 -0.3 / -2.3 dB)
    "viditq-w8a8-fold": lambda: _fold(_viditq_w8a8()),
    "viditq-w4a8-fold": lambda: _fold(_viditq_w4a8()),
    "quarot-w8a8-fold": lambda: _fold(_quarot(8)),
    # + quantized self-attention: viditq-w8a8's linears; symmetric per-channel W8 + per-token A8 linears
    # (bench_e2e's "w8a8" row)
    "viditq-w8a8-qattn": lambda: _qattn("viditq-w8a8-qattn", _viditq_w8a8()),
    "viditq-w8a8-qattn-fp8pv": lambda: _qattn("viditq-w8a8-qattn-fp8pv", _viditq_w8a8(), "fp8"),  # FP8 P·V
    "w8a8-qattn": lambda: _qattn("w8a8-qattn", QuantConfig("w8a8", default=_W8A8.replace(w_symmetric=True))),
    "qdit-w4a8": lambda: _qdit(4),
    "qdit-w6a8": lambda: _qdit(6),
    "qvdit-w4a6": lambda: _qvdit(4, None),  # attention W4A6, MLP W8A8 (see _qvdit)
    "qvdit-w3a6": lambda: _qvdit(3, 0.11),  # attention W3A6, MLP W8A8, SmoothQuant α 0.11
    # FP8 W8A8 (e4m3 per-channel weights, dynamic per-token e4m3 activations; Hopper FP8 tensor cores):
    # plain, and with ViDiT-Q's smoothing + online rotation (viditq-w8a8's balance and cross-K/V choice)
    "dynamic-fp8": lambda: QuantConfig("dynamic-fp8", default=_FP8),
    "viditq-fp8": lambda: QuantConfig("viditq-fp8", default=_FP8, rules=_balanced(0.25), quantize_cross_kv=False),
}

__all__ = [
    "ACT_GRANULARITIES",
    "BLOCK_LAYERS",
    "CROSS_KV_PATTERN",
    "DEFAULT_KEEP_FLOAT",
    "GROUP_PREFIX",
    "LayerQuant",
    "LayerRule",
    "PRESETS",
    "QuantConfig",
    "SHARED_CAPTION_KV",
    "WEIGHT_GRANULARITIES",
    "check_pattern",
    "check_rules",
    "matches",
    "pattern_regex",
]
