"""Prompt files of the authors' released code (``{"prompt_learner": state_dict}``): recognised, checked, loaded.

The authors' ``train.py`` (AnomalyCLIP and FAPrompt alike) saves only its prompt learner's state dict. Each model's
folder maps its keys onto that model's tensors (``authors_layout.py``: an :class:`AuthorsLayout`, returned by the
Lightning model's ``authors_layout``; docs/authors-files.md gives the table); this module holds what is common: it
recognises the file, adds the deep prompts and ``token_*`` buffers both models have, and refuses, in one line, a
file that does not fit the model it is loaded into: another model, other sizes (naming the argument that sets them),
other prompt texts, or other CLIP weights. The last two are told by the file's ``token_*`` buffers, which the
authors' code computes from the prompt texts with CLIP's tokenizer and token embedding. What of them reaches the
computation must equal what this package builds with the CLIP it loaded: the start token, the fixed words and the
end-of-text position (the token ids outside the learned positions) and the ``token_prefix_*``/``token_suffix_*``
embeddings. The ids at the learned positions are the placeholder words the texts were written with (FAPrompt's
``N``/``A``, AnomalyCLIP's ``X``, this package's ``X``): they are replaced by learned vectors and never compared.
``compound_prompt_projections.*`` are created but never used by the released forward pass, and are ignored. A file
saved from a ``DataParallel``/DDP-wrapped prompt learner (every key prefixed ``module.``) is read without the prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from anomalib_faprompt.components import PromptedCLIPModel, PromptTemplate
from anomalib_faprompt.errors import InvalidInputError

__all__ = [
    "AUTHORS_KEY",
    "PRIOR_PREFIX",
    "AuthorsEntry",
    "AuthorsLayout",
    "AuthorsPrompt",
    "authors_model_name",
    "check_authors_model",
    "is_authors_file",
    "load_authors_prompts",
    "prompt_learner_state",
]

AUTHORS_KEY = "prompt_learner"
WRAPPER_PREFIX = "module."  # the keys of a DataParallel- or DDP-wrapped module's state dict
DEEP_PROMPTS = "compound_prompts_text"
IGNORED_PREFIX = "compound_prompt_projections."
PRIOR_PREFIX = "patch_meta_net."
# Token embeddings are compared with a tolerance that accepts CLIP weights stored in fp16 and read as fp32.
RTOL, ATOL = 1e-3, 1e-5


def is_authors_file(content: object) -> bool:
    """Whether a loaded file is an authors' prompt file: a ``prompt_learner`` dict and no ``state_dict``."""
    return isinstance(content, dict) and isinstance(content.get(AUTHORS_KEY), Mapping) and "state_dict" not in content


def prompt_learner_state(content: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt learner's state dict of an authors' file, without the ``module.`` prefix of a wrapped learner."""
    state = dict(content[AUTHORS_KEY])
    if state and all(key.startswith(WRAPPER_PREFIX) for key in state):
        return {key.removeprefix(WRAPPER_PREFIX): value for key, value in state.items()}
    return state


def authors_model_name(prompt_learner: Mapping[str, Any]) -> str:
    """``"FAPrompt"`` for a file with the prior network ``patch_meta_net``, else ``"AnomalyCLIP"``."""
    return "FAPrompt" if any(key.startswith(PRIOR_PREFIX) for key in prompt_learner) else "AnomalyCLIP"


@dataclass(frozen=True)
class AuthorsEntry:
    """One tensor of the authors' state dict: its key, the shape this model expects, and where it goes.

    Attributes:
        key: The authors' key.
        shape: The shape this model expects in the file.
        arguments: ``{dimension: (hyperparameter, divisor)}``: the hyperparameter that sets that dimension, and what
            the dimension is divided by to give its value (``n_prior_patches`` is a dimension over ``D``).
        target: The tensor of this model it is copied into (a view of the parameter); ``None`` for a buffer that is
            only compared.
    """

    key: str
    shape: tuple[int, ...]
    arguments: dict[int, tuple[str, int]] = field(default_factory=dict)
    target: torch.Tensor | None = None


@dataclass(frozen=True)
class AuthorsPrompt:
    """The ``token_*`` buffers of one prompt set (``pos`` or ``neg``) and the template this model builds them from."""

    suffix: str
    template: PromptTemplate
    copies: int


@dataclass(frozen=True)
class AuthorsLayout:
    """Where the tensors of one model's authors' prompt file go: written in each model's ``authors_layout.py``.

    Attributes:
        learned: The model's own learned tensors (its contexts, FAPrompt's prior network); the deep prompts, which
            both models have, are added by :func:`load_authors_prompts`.
        prompts: The file's prompt sets, whose ``token_*`` buffers are compared with what this model builds.
    """

    learned: list[AuthorsEntry]
    prompts: list[AuthorsPrompt]


def _buffers(model: PromptedCLIPModel, prompts: list[AuthorsPrompt]) -> list[AuthorsEntry]:
    """The shape entries of the ``token_*`` buffers (compared by :func:`_check_texts`, never loaded)."""
    width, length = model.backbone.text_width, model.backbone.context_length
    entries = []
    for prompt in prompts:
        copies, learned = prompt.copies, prompt.template.n_learned
        entries += [
            AuthorsEntry(f"token_prefix_{prompt.suffix}", (1, copies, 1, width)),
            AuthorsEntry(f"token_suffix_{prompt.suffix}", (1, copies, length - 1 - learned, width)),
            AuthorsEntry(f"tokenized_prompts_{prompt.suffix}", (1, copies, length)),
        ]
    return entries


def _deep_prompts(model: PromptedCLIPModel) -> list[AuthorsEntry]:
    prompts = model.deep_prompts.prompts
    return [
        AuthorsEntry(
            f"{DEEP_PROMPTS}.{index}", tuple(prompts.shape[1:]), {0: ("prompt_length", 1)}, prompts.data[index]
        )
        for index in range(prompts.shape[0])
    ]


def check_authors_model(model_name: str, state: Mapping[str, Any], where: str) -> None:
    """Refuse an authors' prompt file of the other model than ``model_name``, naming the one it is for."""
    found = authors_model_name(state)
    if found != model_name:
        extra = "it has the prior network `patch_meta_net`" if found == "FAPrompt" else "it has no `patch_meta_net`"
        msg = f"{where} is a prompt file of the authors' {found} ({extra}), not of {model_name}: use `--model {found}`."
        raise InvalidInputError(msg)


def _check_keys(model_name: str, state: Mapping[str, Any], entries: list[AuthorsEntry], where: str) -> None:
    expected = {entry.key for entry in entries}
    given = {key for key in state if not key.startswith(IGNORED_PREFIX)}
    deep_given = sorted(key for key in given if key.startswith(f"{DEEP_PROMPTS}."))
    deep_expected = [key for key in expected if key.startswith(f"{DEEP_PROMPTS}.")]
    if deep_given and len(deep_given) != len(deep_expected):
        msg = (
            f"{where} has {len(deep_given)} deep text prompts ({DEEP_PROMPTS}.*), this {model_name} "
            f"{len(deep_expected)}: set `prompt_depth` to the file's, {len(deep_given) + 1}."
        )
        raise InvalidInputError(msg)
    missing, unknown = sorted(expected - given), sorted(given - expected)
    if missing or unknown:
        found = f"lacks {missing[:3]}" if missing else f"has {unknown[:3]}, unknown to the authors' {model_name}"
        msg = f"{where} is not a prompt file of the authors' {model_name}: its `{AUTHORS_KEY}` {found}."
        raise InvalidInputError(msg)


def _check_shapes(model: PromptedCLIPModel, state: Mapping[str, Any], entries: list[AuthorsEntry], where: str) -> None:
    width = model.backbone.text_width
    for entry in entries:
        value = state[entry.key]
        if not isinstance(value, torch.Tensor):
            msg = f"{where}: `{AUTHORS_KEY}.{entry.key}` is a {type(value).__name__}, not a tensor: a damaged file."
            raise InvalidInputError(msg)
        shape = tuple(value.shape)
        if shape == entry.shape:
            continue
        if len(shape) == len(entry.shape) and entry.key.startswith(("ctx_", "token_")) and shape[-1] != width:
            msg = (
                f"{where}: `{entry.key}` is {shape} there, {entry.shape} here: the file's text width is {shape[-1]}, "
                f"this CLIP's {width}. Load the CLIP it was trained with (`backbone`, `pretrained`: ViT-L-14-336, "
                "openai for the authors' files)."
            )
            raise InvalidInputError(msg)
        fix = ""
        if len(shape) == len(entry.shape):
            names = [
                f"`{name}` to the file's {shape[dim] // divisor}"
                for dim, (name, divisor) in entry.arguments.items()
                if shape[dim] != entry.shape[dim]
            ]
            fix = f": set {' and '.join(names)}" if names else ""
        msg = (
            f"{where}: `{entry.key}` is {shape} there, {entry.shape} here{fix or ' (another CLIP or model size)'}. "
            "The authors' released files need the models' defaults."
        )
        raise InvalidInputError(msg)


def _decode(model: PromptedCLIPModel, tokens: torch.Tensor) -> str:
    """The text of token ids, as far as the tokenizer can decode them."""
    decode = getattr(model.backbone.tokenizer, "decode", None)
    ids = [int(token) for token in tokens if int(token) != 0]
    return decode(ids).strip() if callable(decode) else str(ids)


def _check_texts(model: PromptedCLIPModel, state: Mapping[str, Any], prompts: list[AuthorsPrompt], where: str) -> None:
    """Compare what the computation uses of the file's prompt texts with what this model builds with its CLIP.

    That is the token ids outside the learned positions (start token, fixed words, end-of-text position) and the
    token embeddings of the fixed tokens; the ids at the learned positions are placeholders, never used.
    """
    backbone = model.backbone
    for prompt in prompts:
        template = prompt.template
        fixed_positions = [0, *range(1 + template.n_learned, backbone.context_length)]
        ours = template.tokens.to(torch.long)
        theirs = state[f"tokenized_prompts_{prompt.suffix}"].reshape(prompt.copies, -1).to(torch.long)
        differing = [
            copy
            for copy in range(prompt.copies)
            if not torch.equal(theirs[copy, fixed_positions], ours[fixed_positions])
        ]
        if differing:
            kind = "normal" if prompt.suffix == "pos" else "abnormal"
            msg = (
                f"{where} was trained with other prompt texts: its {kind} prompt is "
                f"'{_decode(model, theirs[differing[0]])}', this model's '{_decode(model, ours)}' (the first "
                f"{template.n_learned} words are placeholders for learned vectors). Set `abnormal_word` and the "
                "numbers of learned tokens to the file's (the authors' word is 'damaged')."
            )
            raise InvalidInputError(msg)
        with torch.no_grad():
            fixed = backbone.embed_tokens(ours.to(backbone.clip.token_embedding.weight.device)).float().cpu()
        expected = {
            "prefix": fixed[:1],
            "suffix": fixed[1 + template.n_learned :],
        }
        for part, embedding in expected.items():
            key = f"token_{part}_{prompt.suffix}"
            given = state[key].reshape(prompt.copies, *embedding.shape).float()
            if not torch.allclose(given, embedding.expand_as(given), rtol=RTOL, atol=ATOL):
                difference = float((given - embedding).abs().max())
                msg = (
                    f"{where} was trained on other CLIP weights: its `{key}` differs from this CLIP's token "
                    f"embedding by up to {difference:.3g}. Load the CLIP it was trained with (`backbone`, "
                    "`pretrained`: ViT-L-14-336, openai for the authors' files)."
                )
                raise InvalidInputError(msg)


def load_authors_prompts(
    model: PromptedCLIPModel, layout: AuthorsLayout, model_name: str, content: dict[str, Any], where: str
) -> None:
    """Check an authors' prompt file against ``model`` and copy its prompts (and FAPrompt's prior network) in.

    Args:
        model: The torch model, built with the CLIP the prompts are to be used with.
        layout: Where the file's tensors go in ``model`` (the model folder's ``authors_layout``).
        model_name: ``"FAPrompt"`` or ``"AnomalyCLIP"``.
        content: The loaded file (see :func:`is_authors_file`).
        where: The file's description for messages, e.g. "'epoch_15.pth' (argument `weights`)".

    Raises:
        InvalidInputError: The file holds the other model, other sizes, other prompt texts or was trained on other
            CLIP weights; nothing is copied then.
    """
    state = prompt_learner_state(content)
    check_authors_model(model_name, state, where)
    prompts = layout.prompts
    entries = [*layout.learned, *_deep_prompts(model), *_buffers(model, prompts)]
    _check_keys(model_name, state, entries, where)
    _check_shapes(model, state, entries, where)
    _check_texts(model, state, prompts, where)
    with torch.no_grad():
        for entry in entries:
            if entry.target is not None:
                entry.target.copy_(state[entry.key].to(entry.target))
    model.text_cache.invalidate()
