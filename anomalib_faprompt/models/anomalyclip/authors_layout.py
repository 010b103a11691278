"""Where the tensors of the authors' AnomalyCLIP prompt file go in :class:`AnomalyCLIPModel` (docs/authors-files.md).

The authors' ``prompt_ensemble.py`` keeps the normal prompt's context in ``ctx_pos`` and the abnormal prompt's in
``ctx_neg``. The deep prompts and the checks are generic (:mod:`anomalib_faprompt.models.authors`).
"""

from __future__ import annotations

from anomalib_faprompt.models.authors import AuthorsEntry, AuthorsLayout, AuthorsPrompt

from .torch_model import AnomalyCLIPModel

__all__ = ["authors_layout"]


def authors_layout(model: AnomalyCLIPModel) -> AuthorsLayout:
    """The authors' keys of ``model``'s two contexts, with their shapes, and its two prompt sets."""
    n_ctx, width = model.normal_ctx.shape
    shape, arguments = (1, 1, n_ctx, width), {2: ("n_ctx", 1)}
    learned = [
        AuthorsEntry("ctx_pos", shape, arguments, model.normal_ctx.data.view(shape)),
        AuthorsEntry("ctx_neg", shape, arguments, model.abnormal_ctx.data.view(shape)),
    ]
    prompts = [AuthorsPrompt("pos", model.normal_template, 1), AuthorsPrompt("neg", model.abnormal_template, 1)]
    return AuthorsLayout(learned, prompts)
