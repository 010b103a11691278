"""Pieces shared by every model of this package: backbone, prompts, maps and losses."""

from .clip import CLIPBackbone, build_backbone, load_open_clip, plain_config, resize_positional_embedding
from .losses import binary_focal_loss, dice_loss, focal_loss, local_loss, local_losses, orthogonality_loss, prior_loss
from .maps import abnormal_probability, binarise_masks, upsample_patches
from .model import PromptedCLIPModel
from .prompts import DeepPrompts, PromptTemplate, encode_prompts, init_learned
from .text_cache import StaticTextCache

__all__ = [
    "CLIPBackbone",
    "DeepPrompts",
    "PromptTemplate",
    "PromptedCLIPModel",
    "StaticTextCache",
    "abnormal_probability",
    "binarise_masks",
    "binary_focal_loss",
    "build_backbone",
    "dice_loss",
    "encode_prompts",
    "focal_loss",
    "init_learned",
    "load_open_clip",
    "plain_config",
    "local_loss",
    "local_losses",
    "orthogonality_loss",
    "prior_loss",
    "resize_positional_embedding",
    "upsample_patches",
]
