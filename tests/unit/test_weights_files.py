"""Weights files as users bring them: OpenAI's TorchScript CLIP file, torch's legacy format, and unsafe pickles.

Each is given through the argument a user passes it with: `pretrained` (CLIP), `weights` (a checkpoint or an authors'
prompt file) and `ckpt_path` (read by the models' checkpoint IO, ``CheckedCheckpointIO``).
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from anomalib_faprompt import AnomalyCLIP
from anomalib_faprompt.components import load_open_clip
from anomalib_faprompt.errors import InvalidInputError
from anomalib_faprompt.models.inspection import CheckedCheckpointIO
from tests.helpers.authors_code import authors_anomalyclip_file
from tests.helpers.models import TINY_CLIP, as_if_trained, tiny_args

IMAGES = torch.rand(2, 3, 64, 64)
# OpenAI's TorchScript files hold three integers beside the weights (open_clip's `load_state_dict` drops them).
OPENAI_EXTRAS = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}


class _OpenAICLIP(nn.Module):
    """A CLIP as OpenAI's ``clip/model.py`` lays it out (the layout open_clip's ``CLIP`` keeps, and that open_clip's
    ``build_model_from_openai_state_dict`` loads strictly): ``visual``, ``transformer``, ``token_embedding``,
    ``ln_final``, ``positional_embedding``, ``text_projection``, ``logit_scale``, and the three integers."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        for name, child in clip.named_children():
            setattr(self, name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            setattr(self, name, parameter)
        for name, value in OPENAI_EXTRAS.items():
            self.register_buffer(name, torch.tensor(value))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def openai_torchscript_file(clip: nn.Module, path: Path) -> Path:
    """A TorchScript archive of ``clip`` as OpenAI distributes theirs: traced, weights in fp16 (their
    ``convert_weights``), saved with ``torch.jit.save``; what open_clip's ``load_openai_model`` reads with
    ``torch.jit.load``."""
    traced = torch.jit.trace(_OpenAICLIP(copy.deepcopy(clip)), (torch.rand(1, 3, 32, 32),), check_trace=False)
    torch.jit.save(traced.half(), str(path))
    return path


class _Payload:
    """A pickled object whose unpickling would create a folder: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.makedirs, (str(self.marker),)


@pytest.fixture(scope="module")
def tiny_clip() -> nn.Module:
    torch.manual_seed(3)
    return load_open_clip("tiny", None, copy.deepcopy(TINY_CLIP))


def test_openai_torchscript_file_loads_as_the_same_weights_in_a_state_dict_file(tiny_clip, tmp_path):
    archive = openai_torchscript_file(tiny_clip, tmp_path / "ViT-tiny.pt")
    with pytest.raises(RuntimeError, match="TorchScript"):  # what refused OpenAI's file before
        torch.load(archive, weights_only=True)
    state_file = tmp_path / "state.pt"  # the same weights, fp16 as OpenAI's, as a plain state dict
    torch.save({key: value.half() for key, value in tiny_clip.state_dict().items()}, state_file)
    from_archive = load_open_clip("tiny", str(archive), copy.deepcopy(TINY_CLIP))
    from_state = load_open_clip("tiny", str(state_file), copy.deepcopy(TINY_CLIP))
    for (name, ours), theirs in zip(from_archive.state_dict().items(), from_state.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    difference = max(
        float((ours - theirs).abs().max())
        for ours, theirs in zip(from_archive.state_dict().values(), tiny_clip.state_dict().values(), strict=True)
    )
    assert 0 < difference < 1e-2  # read back from fp16


def test_a_model_runs_on_openai_torchscript_file_as_on_its_state_dict(tiny_clip, tmp_path):
    archive = openai_torchscript_file(tiny_clip, tmp_path / "ViT-tiny.pt")
    state_file = tmp_path / "state.pt"
    torch.save({key: value.half() for key, value in tiny_clip.state_dict().items()}, state_file)
    outputs = []
    for file in (archive, state_file):
        torch.manual_seed(0)  # the same random prompts
        model = AnomalyCLIP(**tiny_args(pretrained=str(file))).eval()
        with torch.no_grad():
            outputs.append(model.model(IMAGES))
    torch.testing.assert_close(outputs[0].pred_score, outputs[1].pred_score, rtol=0, atol=0)
    torch.testing.assert_close(outputs[0].anomaly_map, outputs[1].anomaly_map, rtol=0, atol=0)


def test_a_torchscript_file_as_weights_or_ckpt_path_is_named_as_such(tiny_clip, tmp_path):
    archive = openai_torchscript_file(tiny_clip, tmp_path / "ViT-tiny.pt")
    with pytest.raises(InvalidInputError, match=r"ViT-tiny\.pt' \(argument `weights`\) is a TorchScript archive"):
        AnomalyCLIP(**tiny_args(weights=str(archive)))
    with pytest.raises(InvalidInputError, match=r"is a TorchScript archive .* passed as `pretrained`"):
        CheckedCheckpointIO(AnomalyCLIP).load_checkpoint(archive)


def test_an_authors_file_in_torchs_legacy_format_loads(tiny_clip, tmp_path):
    """Files written by torch before 1.6 (or with `_use_new_zipfile_serialization=False`) are no zip archives."""
    clip_file = tmp_path / "clip.pt"
    torch.save(tiny_clip.state_dict(), clip_file)
    direct = as_if_trained(AnomalyCLIP(**tiny_args(pretrained=str(clip_file))))
    zipped = authors_anomalyclip_file(direct, tmp_path / "epoch_15.pth")
    legacy = tmp_path / "epoch_15_legacy.pth"
    torch.save(torch.load(zipped, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] != b"PK"
    loaded = AnomalyCLIP(**tiny_args(pretrained=str(clip_file), weights=str(legacy))).eval()
    with torch.no_grad():
        ours, theirs = loaded.model(IMAGES), direct.model(IMAGES)
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=0, atol=0)


def test_a_legacy_format_checkpoint_is_read(tmp_path):
    checkpoint = {"state_dict": {"model.x": torch.zeros(2)}, "hyper_parameters": {}}
    legacy = tmp_path / "model.ckpt"
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    assert CheckedCheckpointIO(AnomalyCLIP).load_checkpoint(legacy)["state_dict"]["model.x"].shape == (2,)


def _unsafe_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A `torch.save` file and a plain pickle, each holding an object whose unpickling would create `marker`."""
    marker = tmp_path / "payload_ran"
    zipped = tmp_path / "unsafe.pth"
    torch.save({"prompt_learner": {"ctx_pos": _Payload(marker)}}, zipped)
    legacy = tmp_path / "unsafe_legacy.pth"
    with legacy.open("wb") as file:
        pickle.dump({"state_dict": _Payload(marker)}, file, protocol=2)
    return marker, [zipped, legacy]


def test_a_file_holding_python_objects_is_refused_for_safety_and_never_run(tmp_path):
    marker, files = _unsafe_files(tmp_path)
    for file in files:
        with pytest.raises(InvalidInputError) as caught:
            AnomalyCLIP(**tiny_args(weights=str(file)))
        message = str(caught.value)
        assert message.startswith(f"'{file}' (argument `weights`) holds Python objects other than weights (")
        assert "makedirs" in message  # the global it refused
        assert "for safety" in message
        assert "weights_only" not in message
        with pytest.raises(InvalidInputError, match=r"\(`ckpt_path`\) holds Python objects other than weights"):
            CheckedCheckpointIO(AnomalyCLIP).load_checkpoint(file)
        with pytest.raises(ValueError, match=r"\(argument `pretrained`\) holds Python objects other than weights") as c:
            load_open_clip("tiny", str(file), copy.deepcopy(TINY_CLIP))
        assert "weights_only" not in str(c.value)
    assert not marker.exists()
