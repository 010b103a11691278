"""CLIPBackbone against direct computations of the formulas of docs/faprompt.md, sections 1 and 2."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.components import build_backbone, load_open_clip, resize_positional_embedding
from anomalib_faprompt.components.clip import CLIPBackbone

ATOL = 1e-5


def _backbone(config: dict, image_size: int = 32, vv_layers: int = 2) -> CLIPBackbone:
    """A tiny random backbone (config image size 32, patch 8, 3 vision and 3 text blocks)."""
    torch.manual_seed(0)
    return build_backbone("ViT-B-32", None, copy.deepcopy(config), image_size, vv_layers)


def _reference_encode_image(backbone: CLIPBackbone, images: torch.Tensor, vv_layers: int):
    """docs/faprompt.md sections 1 and 2 written out: per-head attention, two streams, MLP on the ordinary one."""
    visual = backbone.clip.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    blocks = visual.transformer.resblocks
    start = len(blocks) - vv_layers
    for block in blocks[:start]:
        x = block(x)
    x_ori, x_vv = x, x.clone()
    for block in blocks[start:]:
        attn = block.attn
        heads, width = attn.num_heads, x_ori.shape[-1]
        head_dim = width // heads
        scale = head_dim**-0.5
        h = block.ln_1(x_ori)
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        a_ori_heads, a_vv_heads = [], []
        for head in range(heads):
            rows = slice(head * head_dim, (head + 1) * head_dim)
            q = h @ w_q[rows].T + b_q[rows]
            k = h @ w_k[rows].T + b_k[rows]
            v = h @ w_v[rows].T + b_v[rows]
            a_ori_heads.append(torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1) @ v)
            a_vv_heads.append(torch.softmax(v @ v.transpose(1, 2) * scale, dim=-1) @ v)
        a_ori = attn.out_proj(torch.cat(a_ori_heads, dim=-1))
        a_vv = attn.out_proj(torch.cat(a_vv_heads, dim=-1))
        x_ori = x_ori + a_ori
        x_ori = x_ori + block.mlp(block.ln_2(x_ori))
        x_vv = x_vv + a_vv
    global_embedding = x_ori[:, 0] @ visual.proj
    patches = visual.ln_post(x_vv[:, 1:]) @ visual.proj
    return global_embedding, patches


@pytest.mark.parametrize("vv_layers", [3, 2, 1])
def test_vv_dual_path_matches_spec(tiny_clip_config, vv_layers):
    backbone = _backbone(tiny_clip_config, image_size=32, vv_layers=vv_layers)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        global_embedding, patches = backbone.encode_image(images)
        expected_global, expected_patches = _reference_encode_image(backbone, images, vv_layers)
    assert global_embedding.shape == (2, 32)
    assert patches.shape == (2, 16, 32)
    torch.testing.assert_close(global_embedding, expected_global, atol=ATOL, rtol=0)
    torch.testing.assert_close(patches, expected_patches, atol=ATOL, rtol=0)


def test_global_embedding_is_ordinary_clip_without_ln_post(tiny_clip_config):
    backbone = _backbone(tiny_clip_config, image_size=32, vv_layers=3)
    visual = backbone.clip.visual
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        global_embedding, _ = backbone.encode_image(images)
        ordinary = visual.transformer(visual._embeds(images))
        with_ln_post = visual(images)
    torch.testing.assert_close(global_embedding, ordinary[:, 0] @ visual.proj, atol=ATOL, rtol=0)
    # open_clip's own output applies ln_post; the released code's default (docs/faprompt.md, section 1) does not.
    assert not torch.allclose(global_embedding, with_ln_post, atol=1e-3)


def test_patches_depend_on_vv_path(tiny_clip_config):
    """The patches are the V-V stream, not a renamed CLIP output: one V-V block written with torch's attention,
    ``x + out_proj(softmax(v v^T / sqrt(d)) v)`` (no MLP) from the last block's input, then CLIP's ln_post and proj."""
    backbone = _backbone(tiny_clip_config, image_size=32, vv_layers=1)
    visual = backbone.clip.visual
    *first, last = visual.transformer.resblocks
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, patches = backbone.encode_image(images)
        x = visual._embeds(images)
        for block in first:
            x = block(x)
        _, w_v = last.attn.in_proj_weight.split([2 * x.shape[-1], x.shape[-1]])
        _, b_v = last.attn.in_proj_bias.split([2 * x.shape[-1], x.shape[-1]])
        v = F.linear(last.ln_1(x), w_v, b_v).unflatten(-1, (last.attn.num_heads, -1)).transpose(1, 2)
        attended = F.scaled_dot_product_attention(v, v, v).transpose(1, 2).flatten(2)
        expected = visual.ln_post(x + last.attn.out_proj(attended))[:, 1:] @ visual.proj
        ordinary = visual.ln_post(last(x)[:, 1:]) @ visual.proj
    torch.testing.assert_close(patches, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(patches, ordinary, atol=1e-3)


def test_resize_positional_embedding_hand_case():
    # A 2x2 grid [[0, 1], [2, 3]] upsampled to 4x4, bilinear, align_corners=False (half-pixel centres):
    # along one axis the sample positions map to source coordinates -0.25, 0.25, 0.75, 1.25, clamped to
    # [0, 1] -> weights 0, 0.25, 0.75, 1 -> values a, 0.75a + 0.25b, 0.25a + 0.75b, b.
    pos = torch.tensor([[-7.0], [0.0], [1.0], [2.0], [3.0]])
    resized = resize_positional_embedding(pos, 4)
    axis = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected_grid = 2.0 * axis[:, None] + axis[None, :]
    assert resized.shape == (17, 1)
    assert resized[0, 0] == -7.0
    torch.testing.assert_close(resized[1:, 0].reshape(4, 4), expected_grid)


def test_resize_positional_embedding_matches_interpolate():
    torch.manual_seed(1)
    pos = torch.randn(1 + 5 * 5, 6)
    resized = resize_positional_embedding(pos, 7)
    grid = pos[1:].reshape(5, 5, 6).permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(7, 7), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    torch.testing.assert_close(resized[0], pos[0])
    torch.testing.assert_close(resized[1:], expected.reshape(49, 6))
    # Not open_clip's own resize (bicubic with antialias).
    bicubic = F.interpolate(grid, size=(7, 7), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(resized[1:], bicubic[0].permute(1, 2, 0).reshape(49, 6), atol=1e-3)
    # Same grid: unchanged.
    torch.testing.assert_close(resize_positional_embedding(pos, 5), pos)


def test_resize_positional_embedding_rejects_non_square():
    with pytest.raises(ValueError, match="not a square grid"):
        resize_positional_embedding(torch.zeros(1 + 6, 4), 3)


def test_backbone_at_other_image_size_uses_resized_positions(tiny_clip_config):
    torch.manual_seed(0)
    original = open_clip.model.CLIP(**tiny_clip_config).visual.positional_embedding.detach().clone()
    backbone = _backbone(tiny_clip_config, image_size=64, vv_layers=2)  # config size 32 (grid 4) -> grid 8
    assert backbone.grid == 8
    pos = backbone.clip.visual.positional_embedding
    torch.testing.assert_close(pos, resize_positional_embedding(original, 8))
    with torch.no_grad():
        _, patches = backbone.encode_image(torch.randn(1, 3, 64, 64))
    assert patches.shape == (1, 64, 32)


def _texts(backbone: CLIPBackbone) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = backbone.tokenize(["a photo of a damaged object.", "object.", "a b c d e f g h i j k."])
    return tokens, tokens.argmax(dim=-1)


def test_encode_text_without_deep_prompts_is_open_clip_encode_text(tiny_clip_config):
    backbone = _backbone(tiny_clip_config)
    tokens, eos = _texts(backbone)
    with torch.no_grad():
        ours = backbone.encode_text(backbone.embed_tokens(tokens), eos)
        reference = backbone.clip.encode_text(tokens)
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("with_deep", [False, True])
def test_truncated_text_context_matches_full_length(tiny_clip_config, with_deep):
    backbone = _backbone(tiny_clip_config)
    tokens, eos = _texts(backbone)
    deep = torch.randn(2, 4, backbone.text_width) if with_deep else None
    embeddings = backbone.embed_tokens(tokens)
    length = int(eos.max()) + 1
    assert length < tokens.shape[1]
    with torch.no_grad():
        full = backbone.encode_text(embeddings, eos, deep)
        truncated = backbone.encode_text(embeddings[:, :length], eos, deep)
    assert embeddings.shape[1] == 77
    torch.testing.assert_close(truncated, full, atol=ATOL, rtol=0)


def _manual_deep_text(backbone: CLIPBackbone, embeddings, eos, deep) -> torch.Tensor:
    clip = backbone.clip
    length = embeddings.shape[1]
    x = embeddings + clip.positional_embedding[:length]
    mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
    t = deep.shape[1]
    for index, block in enumerate(clip.transformer.resblocks):
        if 1 <= index <= deep.shape[0]:
            x = x.clone()
            x[:, 1 : 1 + t] = deep[index - 1]
        x = block(x, attn_mask=mask)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), eos] @ clip.text_projection


def test_deep_prompts_overwrite_positions_in_later_blocks(tiny_clip_config):
    backbone = _backbone(tiny_clip_config)
    tokens, eos = _texts(backbone)
    embeddings = backbone.embed_tokens(tokens)[:, :16]
    torch.manual_seed(3)
    deep = torch.randn(2, 4, backbone.text_width)  # text depth 3 -> blocks 2 and 3 (indices 1, 2)
    with torch.no_grad():
        ours = backbone.encode_text(embeddings, eos, deep)
        torch.testing.assert_close(ours, _manual_deep_text(backbone, embeddings, eos, deep), atol=ATOL, rtol=0)
        # Zero deep prompts still overwrite (the result is not the prompt-free one).
        zeros = torch.zeros_like(deep)
        zero_out = backbone.encode_text(embeddings, eos, zeros)
        torch.testing.assert_close(zero_out, _manual_deep_text(backbone, embeddings, eos, zeros), atol=ATOL, rtol=0)
        assert not torch.allclose(zero_out, backbone.encode_text(embeddings, eos), atol=1e-4)
        # Each block's prompt matters (a random change: a uniform shift would vanish in ln_1).
        for index in range(2):
            changed = deep.clone()
            changed[index] = torch.randn_like(changed[index])
            assert not torch.allclose(backbone.encode_text(embeddings, eos, changed), ours, atol=1e-4)
        # Fewer deep prompts than blocks: only the first blocks are overwritten.
        one = deep[:1]
        torch.testing.assert_close(
            backbone.encode_text(embeddings, eos, one),
            _manual_deep_text(backbone, embeddings, eos, one),
            atol=ATOL,
            rtol=0,
        )


def test_clip_frozen_and_kept_in_eval(tiny_model_args):
    model = FAPrompt(**tiny_model_args)
    clip = model.model.backbone.clip
    assert all(not parameter.requires_grad for parameter in clip.parameters())
    model.train()
    assert model.model.training
    assert not clip.training
    assert all(not module.training for module in clip.modules())
    assert all(not parameter.requires_grad for parameter in clip.parameters())


def test_vv_layers_out_of_range(tiny_clip_config):
    for vv_layers in (0, 4):
        with pytest.raises(ValueError, match=r"vv_layers=.*between 1 and the image tower depth \(3\)"):
            _backbone(tiny_clip_config, vv_layers=vv_layers)


def test_image_size_not_multiple_of_patch(tiny_clip_config):
    with pytest.raises(ValueError, match=r"image_size=60 must be a positive multiple of the backbone patch size 8"):
        _backbone(tiny_clip_config, image_size=60)


def test_missing_local_weights_file():
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/w.pt"):
        load_open_clip("ViT-B-32", "/nonexistent/w.pt")


def test_offline_pretrained_tag_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(RuntimeError) as info:
        load_open_clip("ViT-B-32", "openai")
    message = str(info.value)
    assert "ViT-B-32" in message
    assert "'openai'" in message
    assert "pretrained" in message
    assert "/path/to/weights.pt" in message
    assert isinstance(info.value.__cause__, OSError)


def test_offline_tag_fails_at_once_before_the_download(monkeypatch, tmp_path):
    """Uncached weights and no connection: the package's message at once, not a minute of download retries."""
    from anomalib_faprompt.components import clip

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(clip, "_is_cached", lambda _cfg: False)
    hosts = []

    def unreachable(address, timeout):
        hosts.append((address, timeout))
        raise OSError("Name or service not known")

    def no_download(*_args, **_kwargs):
        raise AssertionError("the download was attempted")

    monkeypatch.setattr(clip.socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "create_model", no_download)
    with pytest.raises(RuntimeError, match=r"model 'ViT-L-14-336' with pretrained tag 'openai' .*Name or service"):
        load_open_clip("ViT-L-14-336", "openai")
    assert hosts == [(("huggingface.co", 443), 5)]


def test_unreadable_or_foreign_weights_files_are_named(tiny_clip_config, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"'.*notes\.pt' \(argument `pretrained`\) could not be read as weights") as c:
        load_open_clip("tiny", str(text), tiny_clip_config)
    assert "(UnpicklingError: Unsupported operand" in str(c.value)  # what torch met, without its advice
    assert "weights_only" not in str(c.value)
    other = copy.deepcopy(tiny_clip_config)
    other["text_cfg"]["width"] = 48
    foreign = tmp_path / "foreign.pt"
    torch.save(load_open_clip("tiny", None, other).state_dict(), foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt' \(argument `pretrained`\) could not be read as weights"):
        load_open_clip("tiny", str(foreign), tiny_clip_config)
    with pytest.raises(FileNotFoundError, match=r"'.*' \(argument `pretrained`\) is a directory"):
        load_open_clip("tiny", str(tmp_path) + "/", tiny_clip_config)
