"""Prompt files built the way the authors' released code builds them, for the tests of the package's loader.

The classes below re-create the ``__init__`` of the authors' prompt learners, as far as it decides what
``train.py`` saves (``torch.save({"prompt_learner": prompt_learner.state_dict()}, path)``): the parameter and buffer
names, their shapes and dtypes, and the ``token_*`` buffers computed from the prompt texts, placeholders included.

- FAPrompt (mala-lab/FAPrompt, ``FAPrompt.py``, ``AnomalyCLIP_PromptLearner.__init__``): ``ctx_pos`` (n_cls, 1, E, C),
  ``ctx_neg`` (n_cls, K, E', C), ``compound_prompts_text`` (a ``ParameterList``), ``compound_prompt_projections``
  (clones of ``nn.Linear(C, 896)``), ``patch_meta_net`` (``linear1``, ``relu``, ``linear2``); the texts
  ``"N N N N N object."`` and, K times, ``"N N N N N A A damaged object."`` (``prompt_prefix_pos`` of ``"N"``,
  ``prompt_prefix_neg`` of ``"A"``); the embeddings reshaped ``(K, n_cls, l, d).permute(1, 0, 2, 3)`` and cut
  after ``1 + n_ctx_pos + n_ctx_neg``.
- AnomalyCLIP (zqhang/AnomalyCLIP, ``prompt_ensemble.py``, ``AnomalyCLIP_PromptLearner.__init__``): ``ctx_pos`` and
  ``ctx_neg`` (n_cls, 1, n_ctx, C), the texts ``"X ... X object."`` and ``"X ... X damaged object."`` (the
  ``state_normal_list`` ``"{}"`` and ``state_anomaly_list`` ``"damaged {}"``), cut after ``1 + n_ctx``.

Both tokenise with their ``tokenize`` (start token, BPE of the text, end token, zero padding to 77, ``torch.int``), with
CLIP's BPE vocabulary, which open_clip's ``SimpleTokenizer`` shares. The learned tensors are then set to a model's
values, as if that model had been trained by the authors' code.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import open_clip
import torch
from torch import nn

UNUSED_PROJECTION_WIDTH = 896  # the authors' ``nn.Linear(ctx_dim, 896)``, created and never used
_TOKENIZER = open_clip.tokenizer.SimpleTokenizer()


def authors_tokenize(text: str, context_length: int) -> torch.Tensor:
    """The authors' ``tokenize(text)``: ``(1, context_length)`` int32 ids of ``[SOS] text [EOS]``, zero padded."""
    ids = [_TOKENIZER.sot_token_id, *_TOKENIZER.encode(text), _TOKENIZER.eot_token_id]
    result = torch.zeros(1, context_length, dtype=torch.int)
    result[0, : len(ids)] = torch.tensor(ids)
    return result


class _AuthorsLearner(nn.Module):
    """The buffers and deep prompts both learners share."""

    def _deep_prompts(self, depth: int, length: int, width: int) -> None:
        self.compound_prompts_text = nn.ParameterList(nn.Parameter(torch.empty(length, width)) for _ in range(depth))
        self.compound_prompt_projections = nn.ModuleList(
            nn.Linear(width, UNUSED_PROJECTION_WIDTH) for _ in range(depth)
        )

    def _token_buffers(self, clip: nn.Module, texts: dict[str, list[str]], learned: dict[str, int]) -> None:
        length = clip.positional_embedding.shape[0]
        for suffix, prompts in texts.items():
            tokens = torch.cat([authors_tokenize(text, length) for text in prompts])
            with torch.no_grad():
                embedding = clip.token_embedding(tokens)
            copies = len(prompts)
            embedding = embedding.reshape(copies, 1, *embedding.shape[1:]).permute(1, 0, 2, 3)
            self.register_buffer(f"token_prefix_{suffix}", embedding[:, :, :1, :])
            self.register_buffer(f"token_suffix_{suffix}", embedding[:, :, 1 + learned[suffix] :, :])
            self.register_buffer(f"tokenized_prompts_{suffix}", tokens.reshape(copies, 1, -1).permute(1, 0, 2))


class FAPromptLearner(_AuthorsLearner):
    """The authors' FAPrompt prompt learner, with a trained package ``FAPrompt``'s learned values."""

    def __init__(self, model: nn.Module, abnormal_word: str = "damaged") -> None:
        super().__init__()
        inner = model.model
        n_ctx_pos, width = inner.normal_ctx.shape
        n_prompts, n_ctx_neg, _ = inner.abnormal_ctx.shape
        first, second = inner.prior_net.layers[0], inner.prior_net.layers[2]
        self.patch_meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(first.in_features, first.out_features)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(second.in_features, second.out_features)),
                ]
            )
        )
        deep = inner.deep_prompts.prompts
        self._deep_prompts(deep.shape[0], deep.shape[1], width)
        self.ctx_pos = nn.Parameter(torch.empty(1, 1, n_ctx_pos, width))
        self.ctx_neg = nn.Parameter(torch.empty(1, n_prompts, n_ctx_neg, width))
        prefix_pos, prefix_neg = " ".join(["N"] * n_ctx_pos), " ".join(["A"] * n_ctx_neg)
        texts = {
            "pos": [f"{prefix_pos} object."],
            "neg": [f"{prefix_pos} {prefix_neg} {abnormal_word} object."] * n_prompts,
        }
        self._token_buffers(inner.backbone.clip, texts, {"pos": n_ctx_pos, "neg": n_ctx_pos + n_ctx_neg})
        with torch.no_grad():
            self.ctx_pos.copy_(inner.normal_ctx[None, None])
            self.ctx_neg.copy_(inner.abnormal_ctx[None])
            for index, prompts in enumerate(self.compound_prompts_text):
                prompts.copy_(deep[index])
            for ours, theirs in ((first, self.patch_meta_net.linear1), (second, self.patch_meta_net.linear2)):
                theirs.weight.copy_(ours.weight)
                theirs.bias.copy_(ours.bias)


class AnomalyCLIPLearner(_AuthorsLearner):
    """The authors' AnomalyCLIP prompt learner, with a trained package ``AnomalyCLIP``'s learned values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        inner = model.model
        n_ctx, width = inner.normal_ctx.shape
        deep = inner.deep_prompts.prompts
        self._deep_prompts(deep.shape[0], deep.shape[1], width)
        self.ctx_pos = nn.Parameter(torch.empty(1, 1, n_ctx, width))
        self.ctx_neg = nn.Parameter(torch.empty(1, 1, n_ctx, width))
        prefix = " ".join(["X"] * n_ctx)
        texts = {"pos": [f"{prefix} object."], "neg": [f"{prefix} damaged object."]}
        self._token_buffers(inner.backbone.clip, texts, {"pos": n_ctx, "neg": n_ctx})
        with torch.no_grad():
            self.ctx_pos.copy_(inner.normal_ctx[None, None])
            self.ctx_neg.copy_(inner.abnormal_ctx[None, None])
            for index, prompts in enumerate(self.compound_prompts_text):
                prompts.copy_(deep[index])


def save_as_train_py(learner: nn.Module, path: Path, wrapped: bool = False) -> Path:
    """What the authors' ``train.py`` saves; ``wrapped``: the learner inside ``nn.DataParallel`` (keys ``module.*``)."""
    module = nn.DataParallel(learner) if wrapped else learner
    torch.save({"prompt_learner": module.state_dict()}, path)
    return path


def authors_faprompt_file(model: nn.Module, path: Path, abnormal_word: str = "damaged", wrapped: bool = False) -> Path:
    """The prompt file the authors' FAPrompt code saves for the learned values of a package ``FAPrompt``."""
    return save_as_train_py(FAPromptLearner(model, abnormal_word), path, wrapped)


def authors_anomalyclip_file(model: nn.Module, path: Path, wrapped: bool = False) -> Path:
    """The prompt file the authors' AnomalyCLIP code saves for the learned values of a package ``AnomalyCLIP``."""
    return save_as_train_py(AnomalyCLIPLearner(model), path, wrapped)
