"""Frozen open_clip backbone with the value-value image path and a deep-prompt text encoder.

One module serves every model of this package: it loads an open_clip ViT (by name and
pretrained tag, from a local weights file, or from a config dict), freezes it, resizes its
positional embedding to the working image size, and exposes two encoders:

* :meth:`CLIPBackbone.encode_image` runs the ordinary CLIP blocks and, in the last
  ``vv_layers`` blocks, a second value-value ("V-V", DPAM) token stream. It returns the global
  embedding of the ordinary stream and the patch embeddings of the V-V stream.
* :meth:`CLIPBackbone.encode_text` runs the text transformer on prompt embeddings truncated to
  the longest prompt, overwriting positions ``1..t`` in blocks ``2..depth`` with deep prompts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from open_clip.model import CLIP
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from .weights_file import is_torchscript, torch_reason, torchscript_state_dict, unsafe_objects

__all__ = ["CLIPBackbone", "load_open_clip", "plain_config", "resize_positional_embedding"]


def _weights_error(model_name: str, pretrained: str, cause: Exception) -> RuntimeError:
    """Build the error raised when the CLIP weights of a pretrained tag can be neither downloaded nor read."""
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    source = cfg.get("url") or (f"https://huggingface.co/{cfg['hf_hub']}" if cfg.get("hf_hub") else "")
    where = f" from {source}" if source else ""
    msg = (
        f"Could not load open_clip weights for model '{model_name}' with pretrained tag '{pretrained}' "
        f"({type(cause).__name__}: {cause}). Without network access, download the weights file{where} "
        f"on a machine that has it, copy it here and pass its path instead of the tag, e.g. "
        f"`--model.pretrained /path/to/weights.pt` (Python: pretrained='/path/to/weights.pt'). "
        f"open_clip also reads its cache at ~/.cache/clip and the Hugging Face cache."
    )
    return RuntimeError(msg)


def _file_error(model_name: str, path: str, cause: Exception) -> ValueError:
    """Build the error raised when a local weights file cannot be read as weights of ``model_name``."""
    unsafe = unsafe_objects(cause)
    if unsafe:
        msg = (
            f"CLIP weights file '{path}' (argument `pretrained`) {unsafe}. Pass a file of weights only, e.g. OpenAI's "
            "ViT-L-14-336px.pt for ViT-L-14-336 or a state dict saved with torch.save."
        )
        return ValueError(msg)
    msg = (
        f"CLIP weights file '{path}' (argument `pretrained`) could not be read as weights of '{model_name}' "
        f"({type(cause).__name__}: {torch_reason(cause)}). Pass the weights file of that architecture (e.g. OpenAI's "
        "ViT-L-14-336px.pt for ViT-L-14-336), or the backbone it belongs to."
    )
    return ValueError(msg)


def _load_weights_file(model: CLIP, model_name: str, path: str) -> None:
    """Load a local weights file into ``model``: a TorchScript archive as OpenAI ships it, else as open_clip does.

    Raises:
        ValueError: The file holds no weights of this architecture, or Python objects other than weights.
    """
    try:
        if is_torchscript(path):
            model.load_state_dict(torchscript_state_dict(path))  # OpenAI's layout is open_clip's CLIP layout
        else:
            open_clip.load_checkpoint(model, path)
    except Exception as error:  # open_clip raises KeyError, AssertionError, ... on a bad file
        raise _file_error(model_name, path, error) from error


def _is_cached(cfg: dict[str, Any]) -> bool:
    """Whether the weights of a pretrained config are in open_clip's or the Hugging Face cache already."""
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415  (only for a Hugging Face config)

        repo, _, folder = cfg["hf_hub"].partition("/")
        repo_id = f"{repo}/{folder.strip('/').split('/')[0]}" if folder else repo
        names = [cfg.get("file")] if cfg.get("file") else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / Path(urlparse(url).path).name).is_file()


def _check_reachable(model_name: str, pretrained: str) -> None:
    """Fail at once, with the package's message, when uncached weights cannot be downloaded.

    Without this, a machine without network access spends about a minute in the download's retries
    before it fails. One connection attempt to the weights' host (a few seconds at most) decides.
    """
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg or _is_cached(cfg):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise _weights_error(model_name, pretrained, OSError("HF_HUB_OFFLINE is set"))
    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    if not host:
        return
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as error:
        raise _weights_error(model_name, pretrained, error) from error


def plain_config(value: object) -> object:
    """Nested mappings and sequences (e.g. OmegaConf containers from a config file) as plain dicts and lists.

    open_clip reads a sub-config (``vision_cfg``) as a dict only when it is a ``dict``.
    """
    if isinstance(value, Mapping):
        return {key: plain_config(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain_config(item) for item in value]
    return value


def load_open_clip(
    model_name: str,
    pretrained: str | None,
    model_config: dict[str, Any] | None = None,
) -> CLIP:
    """Create an open_clip CLIP model.

    Args:
        model_name: open_clip model name, e.g. ``"ViT-L-14-336"``. Ignored when ``model_config`` is given.
        pretrained: A pretrained tag (``"openai"``), a path to a local weights file, or ``None`` for
            random weights.
        model_config: Keyword arguments of :class:`open_clip.model.CLIP` (``embed_dim``, ``vision_cfg``,
            ``text_cfg``, ``quick_gelu``), a dict or an OmegaConf config: builds that model, e.g. a tiny test
            backbone, randomly initialised or from a state-dict file given as ``pretrained``.

    A pretrained tag sets the activation (QuickGELU or GELU) as open_clip's table says. A local file is
    read with the activation of the architecture's ``openai`` weights (QuickGELU for OpenAI's ViTs),
    since the OpenAI weights are this package's default; other weights are best given by their tag.

    Returns:
        The CLIP model in eval mode.

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path and the file does not exist.
        ValueError: ``pretrained`` is a file that holds no weights of this architecture.
        RuntimeError: The weights of a tag cannot be downloaded (checked with one connection attempt before
            the download, so that an offline machine fails at once) or read; the message says how to supply them.
    """
    is_file = pretrained is not None and (os.sep in pretrained or Path(pretrained).suffix != "")
    if is_file and not Path(pretrained).is_file():
        what = "is a directory" if Path(pretrained).is_dir() else "does not exist"
        msg = f"CLIP weights file '{pretrained}' (argument `pretrained`) {what}. Pass a weights file or a tag."
        raise FileNotFoundError(msg)
    if model_config is not None:
        if pretrained is not None and not is_file:
            msg = f"pretrained='{pretrained}' is a tag; with `backbone_config` pass a weights file path or None."
            raise ValueError(msg)
        model = CLIP(**plain_config(model_config))
        if is_file:
            _load_weights_file(model, "the given backbone_config", pretrained)
        return model.eval()
    quick_gelu = is_file and bool(open_clip.get_pretrained_cfg(model_name, "openai").get("quick_gelu", False))
    if is_file:
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        _load_weights_file(model, model_name, pretrained)
        return model.eval()
    if pretrained is not None:
        _check_reachable(model_name, pretrained)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained)
    except Exception as error:  # a failed download or read raises several kinds of error
        if pretrained is None or not isinstance(error, OSError | RuntimeError):
            raise
        raise _weights_error(model_name, pretrained, error) from error
    return model.eval()


def resize_positional_embedding(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a ViT positional embedding (class position first) to a ``grid x grid`` patch grid.

    Bilinear, ``align_corners=False``, no antialias; the class position is kept as it is.

    Args:
        pos_embed: ``(1 + g0*g0, width)`` positional embedding.
        grid: Target grid side.

    Returns:
        ``(1 + grid*grid, width)`` positional embedding.
    """
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    old = round(patch_pos.shape[0] ** 0.5)
    if old * old != patch_pos.shape[0]:
        msg = f"Positional embedding with {patch_pos.shape[0]} patch positions is not a square grid."
        raise ValueError(msg)
    if old == grid:
        return pos_embed.clone()
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bilinear", align_corners=False, antialias=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid * grid, -1)
    return torch.cat([cls_pos, patch_pos], dim=0)


def _qkv(block: ResidualAttentionBlock, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project ``h`` (B, L, W) with the block's attention weights into per-head q, k, v (B, H, L, W/H)."""
    attn = block.attn
    batch, length, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def _attend(block: ResidualAttentionBlock, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The block's attention of per-head ``q``, ``k``, ``v`` (SDPA), through its output projection: (B, L, W)."""
    return block.attn.out_proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


def _finish_block(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """Add the attention output ``attended`` to the stream ``x`` and apply the block's MLP residual."""
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _ordinary_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` with the attention through SDPA: the same function as open_clip's ``nn.MultiheadAttention``.

    On CPU, about 20% faster per ViT-L block at batch 8 than ``nn.MultiheadAttention``'s fused path.
    """
    return _finish_block(block, x, _attend(block, *_qkv(block, block.ln_1(x))))


class CLIPBackbone(nn.Module):
    """Frozen CLIP with the value-value image path and the deep-prompt text encoder.

    Args:
        clip: An open_clip :class:`CLIP` model with a plain ViT image tower.
        image_size: Working image side ``S``; the positional embedding is resized to ``S // patch``.
        vv_layers: Number of final vision blocks that run the value-value dual path.
        tokenizer: open_clip tokenizer for the text tower.
    """

    def __init__(self, clip: CLIP, image_size: int, vv_layers: int, tokenizer: Any) -> None:  # noqa: ANN401
        super().__init__()
        visual = clip.visual
        if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            msg = f"Backbone image tower {type(visual).__name__} is not an open_clip ViT; use a ViT model."
            raise TypeError(msg)
        for block in [*visual.transformer.resblocks, *clip.transformer.resblocks]:
            if not isinstance(block, ResidualAttentionBlock):
                msg = f"Unsupported transformer block {type(block).__name__}: only ResidualAttentionBlock is."
                raise TypeError(msg)
        depth = len(visual.transformer.resblocks)
        if not 1 <= vv_layers <= depth:
            msg = f"vv_layers={vv_layers} must be between 1 and the image tower depth ({depth})."
            raise ValueError(msg)
        patch = visual.patch_size[0]
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch or image_size % patch:
            msg = f"image_size={image_size!r} must be a positive multiple of the backbone patch size {patch}."
            raise ValueError(msg)

        self.grid = image_size // patch
        self.image_size = image_size
        self.vv_start = depth - vv_layers
        self.tokenizer = tokenizer
        with torch.no_grad():
            visual.positional_embedding = nn.Parameter(
                resize_positional_embedding(visual.positional_embedding.data, self.grid),
            )
        visual.image_size = (image_size, image_size)
        visual.grid_size = (self.grid, self.grid)
        self.clip = clip.requires_grad_(False).eval()

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of the joint image-text embedding."""
        return self.clip.visual.output_dim

    @property
    def text_width(self) -> int:
        """Width ``C`` of the text transformer tokens."""
        return self.clip.token_embedding.weight.shape[1]

    @property
    def context_length(self) -> int:
        """Number of text token positions."""
        return self.clip.positional_embedding.shape[0]

    @property
    def text_depth(self) -> int:
        """Number of text transformer blocks."""
        return len(self.clip.transformer.resblocks)

    def train(self, mode: bool = True) -> CLIPBackbone:
        """Keep the frozen CLIP in eval mode whatever the mode of the model around it."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def depth(self) -> int:
        """Number of image transformer blocks."""
        return len(self.clip.visual.transformer.resblocks)

    def check_patch_layers(self, layers: Sequence[int]) -> None:
        """Raise a ``ValueError`` unless every layer (1-based block number) has the value-value path."""
        first = self.vv_start + 1
        if not layers or any(not first <= layer <= self.depth for layer in layers):
            msg = (
                f"feature_layers={list(layers)} must be block numbers with the value-value path, between {first} "
                f"and {self.depth} (the last vv_layers={self.depth - self.vv_start} of {self.depth} blocks, from 1)."
            )
            raise ValueError(msg)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode normalised images with the value-value dual path.

        Args:
            images: ``(B, 3, S, S)`` images, CLIP-normalised.

        Returns:
            Global embedding ``(B, D)`` (class token of the ordinary stream, without ``ln_post``) and
            patch embeddings ``(B, N, D)`` (``ln_post`` of the V-V stream after the last block), both
            unnormalised.
        """
        global_embedding, (patches,) = self.encode_image_layers(images, (self.depth,))
        return global_embedding, patches

    def encode_image_layers(
        self, images: torch.Tensor, layers: Sequence[int]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`encode_image` with the V-V patch embeddings taken after each of several blocks.

        Args:
            images: ``(B, 3, S, S)`` images, CLIP-normalised.
            layers: Block numbers (from 1) with the value-value path, see :meth:`check_patch_layers`.

        Returns:
            Global embedding ``(B, D)`` and one ``(B, N, D)`` patch embedding per layer (``ln_post`` and
            the projection applied to the V-V stream after that block), both unnormalised.
        """
        global_embedding, patches, _ = self.encode_image_tokens(images, layers)
        return global_embedding, patches

    def encode_image_tokens(
        self, images: torch.Tensor, layers: Sequence[int], ordinary_layers: Sequence[int] = ()
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """:meth:`encode_image_layers`, and the ordinary stream's patch tokens after each of ``ordinary_layers``.

        Args:
            images: ``(B, 3, S, S)`` images, CLIP-normalised.
            layers: Block numbers (from 1) with the value-value path, see :meth:`check_patch_layers`.
            ordinary_layers: Block numbers (from 1, any block) whose ordinary-stream patch tokens ``(B, N, W)``
                (the residual stream, class token left out, before ``ln_post``) are returned too. With the last
                block among them, that block runs for every token instead of the class token only.

        Returns:
            Global embedding ``(B, D)``, one V-V patch embedding per layer of ``layers`` and one ordinary-stream
            token tensor per layer of ``ordinary_layers``.
        """
        visual = self.clip.visual
        x = visual._embeds(images)  # noqa: SLF001
        blocks = visual.transformer.resblocks
        ordinary = {}
        for index, block in enumerate(blocks[: self.vv_start]):
            x = _ordinary_block(block, x)
            if index + 1 in ordinary_layers:
                ordinary[index + 1] = x[:, 1:]
        x_vv = x
        last = len(blocks) - 1
        taken = {}
        for index in range(self.vv_start, len(blocks)):
            block = blocks[index]
            q, k, v = _qkv(block, block.ln_1(x))
            x_vv = x_vv + block.ls_1(_attend(block, v, v, v))
            if index + 1 in layers:
                taken[index + 1] = visual.ln_post(x_vv[:, 1:]) @ visual.proj
            if index == last and last + 1 not in ordinary_layers:
                # Only the class token of the ordinary stream is used after the last block.
                q, x = q[:, :, :1], x[:, :1]
            x = _finish_block(block, x, _attend(block, q, k, v))
            if index + 1 in ordinary_layers:
                ordinary[index + 1] = x[:, 1:]
        global_embedding = x[:, 0] @ visual.proj
        return global_embedding, tuple(taken[layer] for layer in layers), tuple(ordinary[n] for n in ordinary_layers)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Tokenize prompt texts to ``(P, context_length)`` token ids."""
        return self.tokenizer(texts)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(P, L, C)`` of token ids ``(P, L)``."""
        return self.clip.token_embedding(tokens)

    def encode_text(
        self,
        embeddings: torch.Tensor,
        eos_index: torch.Tensor,
        deep_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode prompt token embeddings with deep prompts.

        Args:
            embeddings: ``(P, L, C)`` token embeddings, learned vectors already substituted. ``L`` may be
                shorter than the context length (truncated after the longest prompt's EOS): the causal
                mask makes the EOS output independent of later positions.
            eos_index: ``(P,)`` position of each prompt's EOS token.
            deep_prompts: ``(depth - 1, t, C)``: before text block ``i`` (``1 <= i < depth``, counting from
                0) positions ``1..t`` are overwritten by ``deep_prompts[i - 1]``.

        Returns:
            ``(P, D)`` unnormalised text embeddings.
        """
        clip = self.clip
        length = embeddings.shape[1]
        x = embeddings + clip.positional_embedding[:length]
        mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        n_deep = 0 if deep_prompts is None else deep_prompts.shape[0]
        for index, block in enumerate(clip.transformer.resblocks):
            if 1 <= index <= n_deep:
                prompt = deep_prompts[index - 1].unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], prompt.to(x.dtype), x[:, 1 + prompt.shape[1] :]], dim=1)
            x = block(x, attn_mask=mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eos_index]
        projection = clip.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def build_backbone(
    backbone: str,
    pretrained: str | None,
    backbone_config: dict[str, Any] | None,
    image_size: int,
    vv_layers: int,
) -> CLIPBackbone:
    """Load an open_clip model and wrap it as a :class:`CLIPBackbone`.

    Args:
        backbone: open_clip model name (ignored for the weights when ``backbone_config`` is given).
        pretrained: Pretrained tag, local weights file or ``None``.
        backbone_config: Config dict for a randomly initialised model (tests, tiny backbones).
        image_size: Working image side.
        vv_layers: Number of final blocks with the value-value path.

    Returns:
        The frozen backbone.
    """
    clip = load_open_clip(backbone, pretrained, backbone_config)
    if backbone_config is not None:
        context = backbone_config.get("text_cfg", {}).get("context_length", 77)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
    else:
        tokenizer = open_clip.get_tokenizer(backbone)
    return CLIPBackbone(clip, image_size=image_size, vv_layers=vv_layers, tokenizer=tokenizer)
