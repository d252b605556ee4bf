"""models/vae.py and models/opensora_vae.py: tiled and micro-batched decoding (against diffusers' own tiled
decode), Open-Sora 1.2's micro-frame chunk plan, the bounded-memory video decode vs the module method.

(Parity of both autoencoders with the original code: tests/conversion/test_parity.py on the fixtures.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.families import OPENSORA12_CHUNK
from models.opensora_vae import OpenSoraVAE, OpenSoraVAEConfig, VAETemporalConfig, chunk_plan, depth_to_time
from models.opensora_vae import decode as decode_video
from models.vae import AutoencoderKLConfig, decode, map_batches, tiled

TINY_2D = AutoencoderKLConfig(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2, sample_size=8)


def random_params(model, seed: int = 0) -> dict:
    """Random weights for ``model`` without running its initialisers (norm scales 1 + N(0, 0.1))."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        n = rng.standard_normal(s.shape).astype(np.float32)
        if name == "kernel":
            return jnp.asarray(n / np.sqrt(np.prod(s.shape[:-1])))
        return jnp.asarray(1.0 + 0.1 * n if name in ("weight", "scale") else 0.1 * n)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_tiles_blend_back_to_the_whole_for_a_local_decoder(overlap):
    """A pointwise 'decoder' (every latent pixel -> a 2x2 pixel block) must come back exactly: the tile grid,
    the crops and the blend weights (which sum to one) leave no seam."""
    z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 11, 9, 3)), jnp.float32)

    def fn(t):
        return jnp.repeat(jnp.repeat(jnp.tanh(t) * 2.0 + 1.0, 2, axis=1), 2, axis=2)

    out = jax.jit(lambda z: tiled(fn, z, 4, 2, overlap))(z)
    np.testing.assert_allclose(out, fn(z), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="tile 2 with overlap"):  # diffusers would return a wrong size here
        tiled(fn, z, 2, 2, 0.25)


def test_map_batches_pads_the_last_batch_and_drops_the_padding():
    x = jnp.arange(5 * 3, dtype=jnp.float32).reshape(5, 3)
    np.testing.assert_array_equal(map_batches(lambda b: b * 2 + b.sum(-1, keepdims=True), x, 2),
                                  x * 2 + x.sum(-1, keepdims=True))
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(lambda b: b, x, 0)


def test_tiled_and_sliced_decode_match_diffusers():
    """diffusers' AutoencoderKL with enable_tiling() on a tiny random VAE (converted by conversion/vae.py)
    vs :func:`models.vae.decode` with ``tile=True`` over video-shaped latents in micro-batches of 3 frames."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from conversion import convert_state_dict

    torch.manual_seed(0)
    ref_vae = diffusers.AutoencoderKL(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2, sample_size=8,
                                      down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2).eval()
    with torch.no_grad():
        for p in ref_vae.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model, params = convert_state_dict({k: v.numpy() for k, v in ref_vae.state_dict().items()}, "sd-vae",
                                       dict(ref_vae.config))
    assert model.config.default_tile == 4
    z = torch.randn(4, 4, 7, 3)  # (frames, C, h, w): tiles of 4 latent rows every 3 (two tile shapes)
    with torch.no_grad():
        plain_ref = ref_vae.decode(z).sample.numpy()
        ref_vae.enable_tiling()
        tiled_ref = ref_vae.decode(z).sample.numpy()
    video = jnp.asarray(z.numpy().transpose(0, 2, 3, 1).reshape(2, 2, 7, 3, 4))  # (B, T, h, w, C)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    out = jax.jit(functools.partial(decode, model, tile=True, batch_size=3))(params, video)
    assert out.shape == (2, 2, 14, 6, 3)  # 2 blocks: 2x
    assert rel(np.asarray(out).reshape(4, 14, 6, 3).transpose(0, 3, 1, 2), tiled_ref) < 1e-5
    assert rel(tiled_ref, plain_ref) > 1e-2  # tiling does change a random VAE's output: the test can tell


def test_config_round_trip_and_release_values():
    cfg = OpenSoraVAEConfig(spatial_vae=TINY_2D, temporal_vae=VAETemporalConfig(filters=2, num_groups=2), micro_frame_size=5)
    assert OpenSoraVAEConfig.from_dict(cfg.to_dict()) == cfg
    assert AutoencoderKLConfig.from_dict(TINY_2D.to_dict()) == TINY_2D
    release = OpenSoraVAEConfig()
    assert (release.micro_frame_size, release.micro_latent_frames) == OPENSORA12_CHUNK
    assert release.spatial_vae.scaling_factor == 0.13025 and release.spatial_vae.default_tile == 128
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderKLConfig(block_out_channels=(8, 12), norm_num_groups=8)


def test_chunk_plan_follows_the_release_rule():
    tiny = OpenSoraVAEConfig(micro_frame_size=5)
    assert chunk_plan(tiny, 3, 9) == [(0, 2, 5), (2, 3, 4)]  # the fixture: drop 3 of 8, then 0 of 4
    release = OpenSoraVAEConfig()
    assert chunk_plan(release, 15, 51) == [(0, 5, 17), (5, 10, 17), (10, 15, 17)]
    assert chunk_plan(release, 7, None) == [(0, 5, 17), (5, 7, 8)]
    chunk, latents = OPENSORA12_CHUNK
    for n in (1, 4, 16, 17, 18, 34, 51, 60, 102):  # the rule models.families uses for the sampler's sizes
        t = release.latent_frames(n)
        assert t == n // chunk * latents + -(-(n % chunk) // 4)
        assert release.latent_frames(release.max_frames(t)) == t
        assert sum(f for *_, f in chunk_plan(release, t, n)) == n
    with pytest.raises(ValueError, match=r"num_frames=10 does not fit a latent of 3 frames .*allowed: 6\.\.9"):
        chunk_plan(tiny, 3, 10)
    assert chunk_plan(OpenSoraVAEConfig(micro_frame_size=None), 3, 10) == [(0, 3, 10)]


def test_depth_to_time_is_the_original_rearrange():
    einops = pytest.importorskip("einops")
    x = np.random.default_rng(1).standard_normal((2, 6, 3, 4, 5)).astype(np.float32)  # (B, C·ts, T, H, W)
    ref = einops.rearrange(x, "B (C ts) T H W -> B C (T ts) H W", ts=2)
    out = depth_to_time(jnp.asarray(x.transpose(0, 2, 3, 4, 1)), 2)
    np.testing.assert_array_equal(np.asarray(out), ref.transpose(0, 2, 3, 4, 1))


def test_bounded_memory_video_decode_matches_the_module():
    """:func:`models.opensora_vae.decode` (chunks run in order, frames in micro-batches, tiles) vs the module's
    ``decode`` on a tiny random pipeline with two temporal chunks of different length."""
    cfg = OpenSoraVAEConfig(
        spatial_vae=AutoencoderKLConfig(block_out_channels=(4,), layers_per_block=1, norm_num_groups=2,
                                        mid_block_add_attention=False),
        temporal_vae=VAETemporalConfig(filters=2, num_res_blocks=1, channel_multipliers=(1, 2), temporal_downsample=(True,),
                                       num_groups=2),
        micro_frame_size=3, micro_batch_size=2)
    model = OpenSoraVAE(cfg)
    params = random_params(model)
    z = jnp.asarray(np.random.default_rng(2).standard_normal((1, 3, 3, 2, 4)), jnp.float32)
    ref, out = jax.jit(lambda p, z: (model.apply({"params": p}, z, 5, method="decode"),  # one compile for both
                                     decode_video(model, p, z, 5)))(params, z)
    assert ref.shape == out.shape == (1, 5, 3, 2, 3)
    assert rel(out, ref) < 1e-5
