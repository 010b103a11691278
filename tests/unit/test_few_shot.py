"""Few-shot: the memory bank of normal references, its map and score, and the choice of references.

Also the choice of calibration images, which never takes a reference. tests/integration/test_few_shot.py runs
few-shot through anomalib's Engine, command line and exports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from anomalib.data.utils import read_image

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.components.few_shot import default_few_shot_layers
from anomalib_faprompt.data import AuxiliaryDataModule
from anomalib_faprompt.data.references import SOURCE, choose_calibration, choose_references, folder_candidates
from anomalib_faprompt.pipelines import checks
from anomalib_faprompt.report.benchmark import load_results
from tests.helpers.commands import REPO
from tests.helpers.data import read_images
from tests.helpers.models import each_model, trained_like


def test_calibration_images_are_no_references_at_most_the_cap_and_reproducible_with_the_seed(tmp_path):
    candidates = [tmp_path / f"{index:03d}.png" for index in range(30)]
    references = choose_references(candidates, 4, 111, "gamma", "train/good")
    chosen = choose_calibration(candidates, references, 10, 111, "gamma")
    assert len(chosen) == 10
    assert not set(chosen) & set(references)
    assert set(chosen) <= {str(path) for path in candidates}
    assert chosen == choose_calibration(list(reversed(candidates)), references, 10, 111, "gamma")
    assert len({tuple(choose_calibration(candidates, references, 10, seed, "gamma")) for seed in range(6)}) > 1
    every = choose_calibration(candidates, references, 200, 111, "gamma")  # fewer than the cap: all but the references
    assert every == sorted(str(path) for path in candidates if str(path) not in references)


def _ordinary_tokens(model, images: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """The ordinary residual stream's patch tokens after each block, with open_clip's own blocks."""
    visual = model.model.backbone.clip.visual
    x = visual._embeds(model.pre_processor.transform(images))
    tokens = {}
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        tokens[index + 1] = x[:, 1:]
    return [tokens[layer] for layer in layers]


def test_default_layers_are_the_quarter_points():
    assert default_few_shot_layers(24) == (6, 12, 18, 24)
    assert default_few_shot_layers(3) == (1, 2, 3)
    assert default_few_shot_layers(12) == (3, 6, 9, 12)


@each_model
def test_map_and_score_against_a_direct_computation_of_the_rule(model_class, synthetic_target):
    model = trained_like(model_class, visualizer=False, k_shot=2)
    references = sorted((synthetic_target / "gamma" / "train" / "good").glob("*.png"))[:2]
    test = torch.cat(
        [
            read_images(synthetic_target / "gamma" / "test" / "defect")[:2],
            read_images(synthetic_target / "gamma" / "test" / "good")[:1],
        ]
    )
    with torch.no_grad():
        zero_shot = model(test)
        model.set_references(references)
        few_shot = model(test)
        layers = model.model.few_shot.layers
        bank = _ordinary_tokens(model, torch.stack([read_image(p, as_tensor=True) for p in references]), layers)
        ours = _ordinary_tokens(model, test, layers)
    association = torch.zeros(test.shape[0], ours[0].shape[1])
    for test_tokens, reference_tokens in zip(ours, bank, strict=True):
        candidates = F.normalize(reference_tokens.flatten(0, 1), dim=-1)
        for image in range(test.shape[0]):
            for patch in range(test_tokens.shape[1]):
                cosine = (F.normalize(test_tokens[image, patch], dim=-1) * candidates).sum(-1).max()
                association[image, patch] += (1 - cosine) / 2 / len(layers)
    expected_score = 0.5 * (zero_shot.pred_score + association.amax(dim=1))
    torch.testing.assert_close(few_shot.pred_score, expected_score, rtol=0, atol=1e-5)
    # Upsampling and blur are linear: the blurred mean of the two patch maps is the mean of the blurred maps.
    expected_map = 0.5 * (zero_shot.anomaly_map + model.model.pixel_map(association))
    torch.testing.assert_close(few_shot.anomaly_map, expected_map, rtol=0, atol=1e-5)
    assert (association > 1e-3).any()


def test_a_reference_scored_as_a_test_image_has_a_few_shot_map_of_zero(synthetic_target):
    model = trained_like(FAPrompt, visualizer=False, k_shot=2)
    references = sorted((synthetic_target / "delta" / "train" / "good").glob("*.png"))[:2]
    model.set_references(references)
    images = model.pre_processor.transform(torch.stack([read_image(p, as_tensor=True) for p in references]))
    with torch.no_grad():
        _, _, tokens = model.model.encode_image(images, (model.model.backbone.depth,))
        association = model.model.few_shot.association(tokens)
    assert association.abs().max() < 1e-6


@each_model
def test_the_torch_model_stores_the_references_the_lightning_model_reads(model_class, synthetic_target):
    """`set_references(files)` reads and pre-processes the files; the torch model encodes and keeps them."""
    files = sorted((synthetic_target / "gamma" / "train" / "good").glob("*.png"))[:2]
    images = read_images(synthetic_target / "gamma" / "test" / "defect")[:2]
    lightning = trained_like(model_class, visualizer=False, k_shot=2)
    lightning.set_references(files)
    torch_model = trained_like(model_class, visualizer=False, k_shot=2).model.train()
    batch = lightning.pre_processor.transform(torch.stack([read_image(path, as_tensor=True) for path in files]))
    torch_model.store_references(batch, files)
    assert torch_model.training  # its mode is kept
    assert torch_model.few_shot.references == tuple(map(str, files))
    torch_model.eval()
    with torch.no_grad():
        expected, stored = lightning(images), torch_model(lightning.pre_processor.transform(images))
    torch.testing.assert_close(stored.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(stored.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    torch_model.clear_references()
    assert not torch_model.few_shot.is_set
    assert torch_model.few_shot.references == ()


def test_the_references_of_few_shot_source_are_drawn_with_the_seed_given(synthetic_target, monkeypatch):
    source = synthetic_target / "gamma" / "train" / "good"  # four images, two drawn
    model = trained_like(FAPrompt, visualizer=False, k_shot=2, few_shot_source=str(source))
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")  # what `seed_everything(3)` leaves: not read by a draw given its seed
    draws = {seed: model.source_references(seed) for seed in range(8)}
    for seed, files in draws.items():
        assert files == choose_references(folder_candidates(source), 2, seed, SOURCE, "")
        assert files == model.source_references(seed)
    assert len({tuple(files) for files in draws.values()}) > 1


def test_without_references_the_outputs_are_the_zero_shot_ones_bit_for_bit(synthetic_target):
    zero = trained_like(FAPrompt, visualizer=False)
    few = trained_like(FAPrompt, visualizer=False, k_shot=2)
    images = read_images(synthetic_target / "gamma" / "test" / "defect")[:3]
    with torch.no_grad():
        before = zero(images)
        few.set_references(sorted((synthetic_target / "gamma" / "train" / "good").glob("*.png"))[:2])
        few.model.clear_references()
        after = few(images)
    assert torch.equal(before.pred_score, after.pred_score)
    assert torch.equal(before.anomaly_map, after.anomaly_map)
    assert not any(name.startswith("model.few_shot") for name in few.state_dict())


def test_the_choice_is_reproducible_with_the_seed_and_never_from_the_test_split(synthetic_target):
    candidates = sorted((synthetic_target / "gamma" / "train" / "good").glob("*.png"))
    first = choose_references(candidates, 2, 111, "gamma", "train/good")
    assert first == choose_references(list(reversed(candidates)), 2, 111, "gamma", "train/good")
    choices = {tuple(choose_references(candidates, 2, seed, "gamma", "train/good")) for seed in range(10)}
    assert len(choices) > 1
    datamodule = AuxiliaryDataModule(
        root=synthetic_target, target_dataset="MVTecAD", target_root=synthetic_target, num_workers=0
    )
    for index, category in enumerate(datamodule.test_categories):
        name, found, _ = datamodule.normal_training_images(index)
        assert name == category
        assert found == sorted((synthetic_target / category / "train" / "good").glob("*.png"))
        assert all("/test/" not in str(path) for path in found)


def test_the_few_shot_benchmark_config_puts_every_k_shot_beside_winclip(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "benchmark_few_shot.yaml").read_text())
    assert checks.unknown_arguments(config) == []
    jobs = checks.jobs(config)
    shots = {}
    for job in jobs:
        shots.setdefault(job["model"]["class_path"], set()).add(job["model"]["init_args"]["k_shot"])
    assert shots == {name: {0, 1, 2, 4} for name in ("FAPrompt", "AnomalyCLIP", "WinClip")}
    rows = ["model.class_path,model.init_args.k_shot,data.init_args.category,image_AUROC"]
    rows += [f"{name},{k},candle,0.{50 + k}" for name in ("FAPrompt", "WinClip") for k in (0, 4)]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    labels = list(dict.fromkeys(load_results(tmp_path / "results.csv")["model"]))
    assert labels == ["FAPrompt (k_shot=0)", "FAPrompt (k_shot=4)", "WinClip (k_shot=0)", "WinClip (k_shot=4)"]
