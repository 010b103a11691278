"""Where the tensors of the authors' FAPrompt prompt file go in :class:`FAPromptModel` (docs/authors-files.md).

The authors' ``FAPrompt.py`` keeps the shared normal context in ``ctx_pos``, the abnormal contexts of its prompts in
``ctx_neg`` and the DAP prior network in ``patch_meta_net`` (two linear layers). The deep prompts and the checks are
generic (:mod:`anomalib_faprompt.models.authors`).
"""

from __future__ import annotations

from anomalib_faprompt.models.authors import PRIOR_PREFIX, AuthorsEntry, AuthorsLayout, AuthorsPrompt

from .torch_model import FAPromptModel

__all__ = ["authors_layout"]


def authors_layout(model: FAPromptModel) -> AuthorsLayout:
    """The authors' keys of ``model``'s contexts and prior network, with their shapes, and its two prompt sets."""
    n_ctx, width = model.normal_ctx.shape
    n_prompts, n_abnormal = model.abnormal_ctx.shape[:2]
    first, second = model.prior_net.layers[0], model.prior_net.layers[2]
    embed_dim = model.backbone.embed_dim
    learned = [
        AuthorsEntry(
            "ctx_pos", (1, 1, n_ctx, width), {2: ("n_ctx", 1)}, model.normal_ctx.data.view(1, 1, n_ctx, width)
        ),
        AuthorsEntry(
            "ctx_neg",
            (1, n_prompts, n_abnormal, width),
            {1: ("n_abnormal_prompts", 1), 2: ("n_abnormal_ctx", 1)},
            model.abnormal_ctx.data.view(1, n_prompts, n_abnormal, width),
        ),
        AuthorsEntry(
            f"{PRIOR_PREFIX}linear1.weight",
            tuple(first.weight.shape),
            {1: ("n_prior_patches", embed_dim)},
            first.weight.data,
        ),
        AuthorsEntry(f"{PRIOR_PREFIX}linear1.bias", tuple(first.bias.shape), {}, first.bias.data),
        AuthorsEntry(f"{PRIOR_PREFIX}linear2.weight", tuple(second.weight.shape), {}, second.weight.data),
        AuthorsEntry(f"{PRIOR_PREFIX}linear2.bias", tuple(second.bias.shape), {}, second.bias.data),
    ]
    prompts = [
        AuthorsPrompt("pos", model.normal_template, 1),
        AuthorsPrompt("neg", model.abnormal_template, n_prompts),
    ]
    return AuthorsLayout(learned, prompts)
