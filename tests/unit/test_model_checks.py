"""Construction checks, the subclass contract, and checkpoints that fit (or are refused with a clear error)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import pytest
import torch
from anomalib.data import MVTecAD

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule
from anomalib_faprompt.models import base
from anomalib_faprompt.models.faprompt.lightning_model import RELEASED_CODE
from anomalib_faprompt.models.hyperparameters import Hyperparameter
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args, write_checkpoint

# --- every number is checked before CLIP is loaded ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_class", "argument", "value", "message"),
    [
        (FAPrompt, "n_abnormal_prompts", 0, r"n_abnormal_prompts=0 must be an integer of at least 1"),
        (FAPrompt, "n_prior_patches", -3, r"n_prior_patches=-3 must be"),
        (AnomalyCLIP, "n_ctx", 0, r"n_ctx=0 must be"),
        (FAPrompt, "temperature", 0, r"temperature=0 must be a positive number"),
        (FAPrompt, "temperature", -0.07, r"temperature=-0.07 must be a positive number"),
        (AnomalyCLIP, "sigma", 0.0, r"sigma=0.0 must be a positive number"),
        (FAPrompt, "sigma", 1000.0, r"sigma=1000.0 is larger than image_size=64"),
        (FAPrompt, "image_size", 0, r"image_size=0 must be an integer of at least 1"),
        (FAPrompt, "image_size", -64, r"image_size=-64 must be"),
        (FAPrompt, "learning_rate", 0.0, r"learning_rate=0.0 must be a positive number"),
        (FAPrompt, "betas", (0.5, 1.5), r"betas=\[0.5, 1.5\] must be two numbers in \[0, 1\)"),
        (FAPrompt, "prior_weight", -1.0, r"prior_weight=-1.0 must be a number of at least 0"),
        (FAPrompt, "patch_selection", "top", r"patch_selection='top' must be one of 'topk', 'first_k'"),
        (FAPrompt, "global_loss_input", "logit", r"global_loss_input='logit' must be one of 'probability', 'logits'"),
        (FAPrompt, "weights", "/nonexistent/model.ckpt", r"'/nonexistent/model.ckpt' \(argument `weights`\) does not"),
        (FAPrompt, "false_alarm_rate", 0.0, r"false_alarm_rate=0.0 must be a number between 0 and 1"),
        (AnomalyCLIP, "false_alarm_rate", 1.0, r"false_alarm_rate=1.0 must be a number between 0 and 1"),
        (FAPrompt, "false_alarm_rate", float("nan"), r"false_alarm_rate=nan must be a number between 0 and 1"),
        (FAPrompt, "calibration_source", "/tmp", r"calibration_source is used only with a false_alarm_rate"),
    ],
)
def test_bad_arguments_fail_before_clip_is_loaded(model_class, argument, value, message, monkeypatch):
    def no_clip(*_args, **_kwargs):
        raise AssertionError("CLIP was loaded before the arguments were checked")

    monkeypatch.setattr(base, "build_backbone", no_clip)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        model_class(**tiny_args(**{argument: value}))


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("prompt_length", 100, r"prompt_length=100 must be between 1 and 76"),
        ("n_prior_patches", 65, r"n_prior_patches=65 must be between 1 and 64 \(the number of patches\)"),
        ("vv_layers", 4, r"vv_layers=4 must be between 1 and the image tower depth \(3\)"),
        ("prompt_depth", 9, r"prompt_depth=9 must be between 1 and the text depth \(3\)"),
    ],
)
def test_arguments_bounded_by_the_backbone_are_checked_at_construction(argument, value, message):
    with pytest.raises(ValueError, match=message):
        FAPrompt(**tiny_args(**{argument: value}))


def test_long_deep_prompts_are_exact_under_truncation():
    """Deep prompts longer than the prompts themselves: the truncated text context still covers them."""
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args(prompt_length=20)).model.eval()
    with torch.no_grad():
        normal, _abnormal = model.static_text()
        full = model.backbone.encode_text
        eos = torch.tensor([model.normal_template.eos_index])
        tokens = model.normal_template.embed(model.backbone, model.normal_ctx.unsqueeze(0), 77)
        expected = full(tokens, eos, model.deep_prompts())
    torch.testing.assert_close(normal, expected[0], rtol=1e-5, atol=1e-6)


# --- the subclass contract --------------------------------------------------------------------------------------------


def test_a_subclass_without_build_model_or_loss_weights_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"NoBuild must set LOSS_TERMS.*build_model, compute_losses and authors_layout"):

        class NoBuild(AnomalyCLIP):
            build_model = base.PromptLearningModule.build_model

    with pytest.raises(TypeError, match=r"NoWeight must .* \(missing: \['extra_weight'\]\)"):

        class NoWeight(AnomalyCLIP):
            LOSS_TERMS = ("local", "ce", "extra")


def _init_with(model_class: type, renamed: dict[str, str | None]) -> Callable[..., None]:
    """An ``__init__`` whose signature is ``model_class``'s with arguments renamed (``None``: left out)."""
    signature = inspect.signature(model_class.__init__)
    parameters = [
        parameter.replace(name=renamed.get(parameter.name, parameter.name))
        for parameter in signature.parameters.values()
        if renamed.get(parameter.name, parameter.name) is not None
    ]

    def init(self, **kwargs: object) -> None:
        model_class.__init__(self, **kwargs)

    init.__signature__ = signature.replace(parameters=parameters)
    return init


@pytest.mark.parametrize(
    ("model_class", "renamed", "attributes", "message"),
    [
        (
            AnomalyCLIP,
            {"false_alarm_rate": None},
            {},
            r"^Mismatched.__init__ lacks \['false_alarm_rate'\], declared by SHARED_HYPERPARAMETERS \(",
        ),
        (
            FAPrompt,
            {"k_shot": "kshot"},
            {},
            r"lacks \['k_shot'\], declared by SHARED_HYPERPARAMETERS .*; takes \['kshot'\], which no table declares",
        ),
        (AnomalyCLIP, {"feature_layers": None}, {}, r"lacks \['feature_layers'\], declared by Mismatched.HYPERPAR"),
        (
            AnomalyCLIP,
            {},
            {"HYPERPARAMETERS": {**AnomalyCLIP.HYPERPARAMETERS, "feature_layer": Hyperparameter(structural=True)}},
            r"lacks \['feature_layer'\], declared by Mismatched.HYPERPARAMETERS",
        ),
        (
            FAPrompt,
            {},
            {"HYPERPARAMETERS": {**FAPrompt.HYPERPARAMETERS, "sigma": Hyperparameter(structural=False)}},
            r"Mismatched.HYPERPARAMETERS declares \['sigma'\] again: SHARED_HYPERPARAMETERS declares them",
        ),
        (
            FAPrompt,
            {},
            {"HYPERPARAMETERS": {**FAPrompt.HYPERPARAMETERS, "n_ctx": Hyperparameter(structural=True)}},
            r"declares \['n_ctx'\] again",
        ),
        (
            FAPrompt,
            {},
            {
                "HYPERPARAMETERS": {
                    **FAPrompt.HYPERPARAMETERS,
                    "n_prior_patches": Hyperparameter(structural=True, none_means=(10, 10)),
                }
            },
            r"Mismatched.HYPERPARAMETERS gives `n_prior_patches` a none_means, but its default is 10, not None",
        ),
    ],
)
def test_a_signature_unlike_the_hyperparameter_tables_is_refused_when_the_class_is_defined(
    model_class, renamed, attributes, message
):
    with pytest.raises(TypeError, match=message) as raised:
        type("Mismatched", (model_class,), {"__init__": _init_with(model_class, renamed), **attributes})
    assert "\n" not in str(raised.value)


def test_released_code_preset_matches_its_config():
    import yaml

    config = yaml.safe_load(open("configs/faprompt_released_code.yaml"))["model"]["init_args"]  # noqa: SIM115
    assert {key: config[key] for key in RELEASED_CODE} == RELEASED_CODE
    model = FAPrompt.released_code(**tiny_args())
    assert {key: model.hparams[key] for key in RELEASED_CODE} == RELEASED_CODE
    assert model.model.patch_selection == "first_k"


# --- checkpoints ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(3)
    return str(write_checkpoint(FAPrompt(**tiny_args()), tmp_path_factory.mktemp("ckpt") / "faprompt.ckpt"))


def test_a_checkpoint_does_not_need_the_weights_file_it_started_from(checkpoint, tmp_path):
    started = tmp_path / "started.ckpt"
    started.write_bytes(open(checkpoint, "rb").read())  # noqa: SIM115
    model = FAPrompt(**tiny_args(weights=str(started)))
    saved = write_checkpoint(model, tmp_path / "saved.ckpt")
    started.unlink()
    loaded = FAPrompt.load_from_checkpoint(saved)
    assert loaded.learning_type == model.learning_type
    assert loaded.hparams.weights is None
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(images).anomaly_map, model.model.eval()(images).anomaly_map)


@pytest.fixture
def datamodule(synthetic_source) -> AuxiliaryDataModule:
    return AuxiliaryDataModule(
        root=synthetic_source, val_split_ratio=0.5, train_batch_size=4, eval_batch_size=4, num_workers=0
    )


@pytest.mark.parametrize(
    ("model_factory", "message"),
    [
        (
            lambda: FAPrompt(**tiny_args(vv_layers=1, abnormal_word="")),
            r"other hyperparameters: vv_layers=2 \(here: 1\), ",
        ),
        (lambda: FAPrompt(**tiny_args(patch_selection="first_k")), r"patch_selection='topk' \(here: 'first_k'\)"),
        (lambda: AnomalyCLIP(**tiny_args()), r"is a checkpoint of FAPrompt, not of AnomalyCLIP: use it with FAPrompt"),
    ],
)
def test_ckpt_path_that_does_not_fit_is_refused_before_lightning_reads_it(
    model_factory, message, checkpoint, datamodule, tmp_path
):
    engine = cpu_engine(tmp_path)
    with pytest.raises(ValueError, match=message):
        engine.test(model_factory(), datamodule=datamodule, ckpt_path=checkpoint)


def test_damaged_ckpt_path_is_named(checkpoint, datamodule, tmp_path):
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(open(checkpoint, "rb").read()[:500])  # noqa: SIM115
    engine = cpu_engine(tmp_path)
    with pytest.raises(ValueError, match=r"damaged\.ckpt' \(`ckpt_path`\) is not a readable anomalib checkpoint"):
        engine.test(FAPrompt(**tiny_args()), datamodule=datamodule, ckpt_path=str(damaged))


def test_normal_only_training_data_stops_with_clear_error(synthetic_source, tmp_path):
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args())
    datamodule = MVTecAD(root=synthetic_source, category="alpha", num_workers=0)  # its train split is normal-only
    with pytest.raises(
        ValueError,
        match=rf"FAPrompt learns from defect images.*training data \(MVTecAD: '{re.escape(str(synthetic_source))}'\) "
        r"holds no anomalous image.*AuxiliaryDataModule",
    ):
        cpu_engine(tmp_path, max_epochs=1).fit(model, datamodule=datamodule)
