"""CLIPBackbone.encode_image against open_clip's own blocks and a hand-written value-value path."""

from __future__ import annotations

import pytest
import torch

from anomalib_faprompt.components import build_backbone
from tests.helpers.models import TINY_CLIP


@pytest.fixture(scope="module")
def backbone_and_images() -> tuple:
    torch.manual_seed(0)
    backbone = build_backbone("tiny", None, TINY_CLIP, image_size=64, vv_layers=2)
    return backbone, torch.randn(2, 3, 64, 64)


def value_value_attention(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(v v^T / sqrt(d)) v per head, with explicit matrices, then the output projection."""
    attn = block.attn
    width = x.shape[-1]
    heads, dim = attn.num_heads, width // attn.num_heads
    h = block.ln_1(x)
    v = h @ attn.in_proj_weight[2 * width :].T + attn.in_proj_bias[2 * width :]
    v = v.reshape(*v.shape[:2], heads, dim).transpose(1, 2)
    weights = torch.softmax(v @ v.transpose(-1, -2) / dim**0.5, dim=-1)
    merged = (weights @ v).transpose(1, 2).reshape(x.shape)
    return attn.out_proj(merged)


def test_every_value_value_block_and_the_global_embedding_match_open_clip_blocks(backbone_and_images: tuple) -> None:
    """encode_image_layers against open_clip's own blocks for the ordinary stream (test_clip has the spec's math).

    The V-V stream is taken after each asked block (numbered from 1); encode_image gives the last block's.
    """
    backbone, images = backbone_and_images
    visual = backbone.clip.visual
    layers = tuple(range(backbone.vv_start + 1, backbone.depth + 1))
    with torch.no_grad():
        global_embedding, taken = backbone.encode_image_layers(images, layers)
        last_global, last_patches = backbone.encode_image(images)
        x = visual._embeds(images)
        x_vv, expected = None, []
        for index, block in enumerate(visual.transformer.resblocks):
            if index == backbone.vv_start:
                x_vv = x
            if x_vv is not None:
                x_vv = x_vv + block.ls_1(value_value_attention(block, x))
                expected.append(visual.ln_post(x_vv[:, 1:]) @ visual.proj)
            x = block(x)
    assert len(taken) == len(layers) == len(expected) == 2
    assert taken[-1].shape == (2, backbone.grid**2, backbone.embed_dim)
    for actual, reference in zip(taken, expected, strict=True):
        torch.testing.assert_close(actual, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(global_embedding, x[:, 0] @ visual.proj, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_global, global_embedding, rtol=0, atol=0)
    torch.testing.assert_close(last_patches, taken[-1], rtol=0, atol=0)
    assert not torch.allclose(taken[0], taken[1])


@pytest.mark.parametrize("layers", [(), (1,), (4,)])
def test_patch_layers_outside_the_value_value_blocks_are_refused(backbone_and_images: tuple, layers: tuple) -> None:
    backbone, _ = backbone_and_images
    with pytest.raises(ValueError, match=r"feature_layers=.* between 2 and 3"):
        backbone.check_patch_layers(layers)
