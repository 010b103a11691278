"""Prompt files of the authors' released code (``{"prompt_learner": state_dict}``) as ``weights``.

The files are built as the authors' code builds them (:mod:`authors_code`: their prompt learners' names, shapes,
placeholder words and ``token_*`` buffers), not with the package's loader.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.errors import InvalidInputError
from anomalib_faprompt.models.inspection import CheckedCheckpointIO
from tests.helpers.authors_code import authors_anomalyclip_file, authors_faprompt_file
from tests.helpers.data import logged_warnings
from tests.helpers.models import as_if_trained, tiny_args

IMAGES = torch.randn(3, 3, 64, 64)


def _trained(model_class: type, clip_file: Path, **overrides):
    """A model whose learned parameters are random (as if trained), on the CLIP of ``clip_file``."""
    return as_if_trained(model_class(**tiny_args(pretrained=str(clip_file), **overrides)))


def _quiet(model_class: type, **arguments):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_class(**arguments).eval()


def _outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        output = model.model(IMAGES)
    return output.pred_score, output.anomaly_map


# Each model, the function that writes its authors' file, and the settings of its authors' test.
AUTHORS_FILES = pytest.mark.parametrize(
    ("model_class", "build", "their_test"),
    [
        (FAPrompt, authors_faprompt_file, {"patch_selection": "first_k", "local_score": "released"}),
        (AnomalyCLIP, authors_anomalyclip_file, {}),
    ],
    ids=["FAPrompt", "AnomalyCLIP"],
)


@AUTHORS_FILES
def test_an_authors_file_gives_the_maps_and_scores_of_the_same_parameters_set_directly(
    clip_file, tmp_path, model_class, build, their_test
):
    direct = _trained(model_class, clip_file, **their_test)
    path = build(direct, tmp_path / "epoch.pth")
    loaded = _quiet(model_class, **tiny_args(pretrained=str(clip_file), weights=str(path)))
    assert {name: loaded.hparams[name] for name in their_test} == their_test  # the settings of their test
    assert loaded.learning_type.value == "zero_shot"
    for ours, theirs in zip(_outputs(loaded), _outputs(direct), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    fresh = _quiet(model_class, **tiny_args(pretrained=str(clip_file), **their_test))
    assert not torch.allclose(_outputs(fresh)[0], _outputs(direct)[0])


def test_the_placeholder_ids_differ_from_the_packages_and_are_not_compared(clip_file, tmp_path):
    """FAPrompt's texts use `N`/`A` where the package writes `X`: the files' ids differ there, and only there."""
    model = _trained(FAPrompt, clip_file)
    content = torch.load(authors_faprompt_file(model, tmp_path / "epoch_7.pth"), weights_only=True)
    theirs = content["prompt_learner"]["tokenized_prompts_neg"][0, 0].long()
    template = model.model.abnormal_template
    ours = template.tokens.long()
    learned = slice(1, 1 + template.n_learned)
    assert not torch.equal(theirs[learned], ours[learned])
    assert torch.equal(theirs[: learned.start], ours[: learned.start])
    assert torch.equal(theirs[learned.stop :], ours[learned.stop :])


@AUTHORS_FILES
def test_a_file_saved_from_a_data_parallel_learner_loads_without_its_prefix(
    clip_file, tmp_path, model_class, build, their_test
):
    direct = _trained(model_class, clip_file, **their_test)
    path = build(direct, tmp_path / "epoch.pth", wrapped=True)
    assert all(key.startswith("module.") for key in torch.load(path, weights_only=True)["prompt_learner"])
    loaded = _quiet(model_class, **tiny_args(pretrained=str(clip_file), weights=str(path)))
    for ours, theirs in zip(_outputs(loaded), _outputs(direct), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_without_an_authors_file_the_defaults_are_the_papers(clip_file):
    model = _quiet(FAPrompt, **tiny_args(pretrained=str(clip_file)))
    assert (model.hparams.patch_selection, model.hparams.local_score) == ("topk", "paper")


def test_settings_unlike_the_authors_test_are_named_once_and_kept(clip_file, tmp_path, caplog):
    """A logged warning (advice to the user, which ``PYTHONWARNINGS=ignore`` does not hide)."""
    path = authors_faprompt_file(_trained(FAPrompt, clip_file), tmp_path / "epoch_7.pth")
    model = FAPrompt(**tiny_args(pretrained=str(clip_file), weights=str(path), patch_selection="topk"))
    messages = logged_warnings(caplog, "other settings than their test")
    assert len(messages) == 1
    assert "patch_selection='topk' (their test: 'first_k')" in messages[0]
    assert "sigma=2.0 (their test: 10.0)" in messages[0]
    assert "local_score" not in messages[0]
    assert model.hparams.patch_selection == "topk"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"n_ctx": 3}, "`ctx_pos` is (1, 1, 5, 32) there, (1, 1, 3, 32) here: set `n_ctx` to the file's 5"),
        ({"n_abnormal_prompts": 4}, "set `n_abnormal_prompts` to the file's 10"),
        ({"n_abnormal_ctx": 3}, "set `n_abnormal_ctx` to the file's 2"),
        ({"n_prior_patches": 4}, "set `n_prior_patches` to the file's 10"),
        ({"prompt_length": 2}, "set `prompt_length` to the file's 4"),
        ({"prompt_depth": 2}, "has 2 deep text prompts (compound_prompts_text.*), this FAPrompt 1: set `prompt_depth`"),
    ],
)
def test_a_file_of_other_sizes_is_refused_naming_the_argument(clip_file, tmp_path, overrides, expected):
    path = authors_faprompt_file(_trained(FAPrompt, clip_file), tmp_path / "epoch_7.pth")
    with pytest.raises(InvalidInputError) as caught:
        _quiet(FAPrompt, **tiny_args(pretrained=str(clip_file), weights=str(path), **overrides))
    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"'{path}' (argument `weights`)")
    assert "\n" not in message


def test_the_other_models_file_is_named_as_such(clip_file, tmp_path):
    faprompt_file = authors_faprompt_file(_trained(FAPrompt, clip_file), tmp_path / "fa.pth")
    anomalyclip_file = authors_anomalyclip_file(_trained(AnomalyCLIP, clip_file), tmp_path / "ac.pth")
    with pytest.raises(InvalidInputError, match=r"prompt file of the authors' FAPrompt .*`--model FAPrompt`"):
        _quiet(AnomalyCLIP, **tiny_args(pretrained=str(clip_file), weights=str(faprompt_file)))
    with pytest.raises(InvalidInputError, match=r"prompt file of the authors' AnomalyCLIP .*`--model AnomalyCLIP`"):
        _quiet(FAPrompt, **tiny_args(pretrained=str(clip_file), weights=str(anomalyclip_file)))


def test_other_prompt_texts_are_refused_naming_the_texts(clip_file, tmp_path):
    path = authors_faprompt_file(_trained(FAPrompt, clip_file), tmp_path / "epoch_7.pth", abnormal_word="broken")
    with pytest.raises(InvalidInputError) as caught:
        _quiet(FAPrompt, **tiny_args(pretrained=str(clip_file), weights=str(path)))
    message = str(caught.value)
    assert "other prompt texts" in message
    assert "broken object" in message
    assert "damaged object" in message
    assert "`abnormal_word`" in message


def test_other_clip_weights_are_refused(clip_file, tmp_path):
    path = authors_anomalyclip_file(_trained(AnomalyCLIP, clip_file), tmp_path / "epoch_15.pth")
    torch.manual_seed(1)
    with pytest.raises(InvalidInputError, match=r"trained on other CLIP weights: its `token_prefix_pos` differs"):
        _quiet(AnomalyCLIP, **tiny_args(weights=str(path)))  # another random CLIP


def test_damaged_and_unrelated_files_get_the_checkpoint_errors(clip_file, tmp_path):
    path = authors_anomalyclip_file(_trained(AnomalyCLIP, clip_file), tmp_path / "epoch_15.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InvalidInputError, match="is not a readable anomalib checkpoint"):
        _quiet(AnomalyCLIP, **tiny_args(pretrained=str(clip_file), weights=str(truncated)))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, unrelated)
    with pytest.raises(InvalidInputError, match=r"no 'state_dict', nor is it a prompt file of the authors' code"):
        _quiet(AnomalyCLIP, **tiny_args(pretrained=str(clip_file), weights=str(unrelated)))
    other_learner = tmp_path / "other_learner.pth"
    torch.save({"prompt_learner": {"ctx": torch.zeros(1, 4, 32)}}, other_learner)
    with pytest.raises(InvalidInputError, match=r"not a prompt file of the authors' AnomalyCLIP: .* lacks"):
        _quiet(AnomalyCLIP, **tiny_args(pretrained=str(clip_file), weights=str(other_learner)))


def test_an_authors_file_as_ckpt_path_says_to_pass_it_as_weights(clip_file, tmp_path):
    path = authors_anomalyclip_file(_trained(AnomalyCLIP, clip_file), tmp_path / "epoch_15.pth")
    with pytest.raises(InvalidInputError, match=r"prompt file of the authors' code, .*`--model.weights`"):
        CheckedCheckpointIO(AnomalyCLIP).load_checkpoint(path)


def test_the_benchmark_takes_an_authors_file_and_names_one_of_the_other_model(clip_file, tmp_path):
    """A file saved from a DataParallel learner (keys `module.*`), as the benchmark's checks read it."""
    from anomalib_faprompt.pipelines import checks

    path = authors_faprompt_file(_trained(FAPrompt, clip_file), tmp_path / "epoch_7.pth", wrapped=True)
    init_args = {**tiny_args(pretrained=str(clip_file)), "weights": str(path)}
    grid = [{"class_path": "FAPrompt", "init_args": init_args}]
    config = {"benchmark": {"seed": 1, "model": {"grid": grid}, "data": {"class_path": "MVTecAD"}}}
    assert checks.unusable_weights(config) == []
    grid.append({"class_path": "AnomalyCLIP", "init_args": init_args})
    (problem,) = checks.unusable_weights(config)
    assert problem.startswith(f"'{path}' (AnomalyCLIP.weights) is a prompt file of the authors' FAPrompt")
