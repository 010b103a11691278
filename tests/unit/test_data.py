"""The data layer: reading (16-bit, damaged, JPEG files), mask checks, splits, names, empty categories, generator."""

from __future__ import annotations

import re
import shutil
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from anomalib.data.datamodules.image import mvtecad as mvtecad_module
from anomalib.data.datamodules.image import visa as visa_module
from anomalib.data.datasets import MVTecADDataset
from anomalib.data.utils import read_image as anomalib_read_image
from anomalib.data.utils import read_mask as anomalib_read_mask
from PIL import Image

from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.data.images import UnreadableFileError, read_image, read_mask
from anomalib_faprompt.data.sources import available_categories, prepare_category
from anomalib_faprompt.errors import InvalidInputError, MissingInputError
from tests.helpers.commands import REPO
from tests.helpers.data import (
    N_DEFECT,
    N_GOOD,
    SOURCE_CATEGORIES,
    camera_photo,
    exif_tagged,
    logged_warnings,
    small_dataset,
    snapshot,
    truncate,
)


class _Recorder(pl.LightningModule):
    """Records what Lightning's test and predict loops hand to the model."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[tuple[int, str]] = []

    def test_step(self, batch, batch_idx, dataloader_idx=0) -> None:
        del batch_idx
        self.seen += [(dataloader_idx, path) for path in batch.image_path]

    def predict_step(self, batch, batch_idx, dataloader_idx=0) -> list[str]:
        del batch_idx, dataloader_idx
        return list(batch.image_path)


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)


# --- reading -------------------------------------------------------------------------------------------------------


def test_sixteen_bit_grayscale_images_and_masks_read_like_their_eight_bit_versions(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "image8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "image16.png")
    assert Image.open(tmp_path / "image16.png").mode.startswith("I;16")

    eight, sixteen = read_image(tmp_path / "image8.png"), read_image(tmp_path / "image16.png")
    assert sixteen.shape == (3, 24, 40)
    torch.testing.assert_close(sixteen, eight, rtol=0, atol=1e-6)
    expected = torch.from_numpy(gray / 255.0).float().expand(3, -1, -1)
    torch.testing.assert_close(sixteen, expected, rtol=0, atol=1e-6)
    assert torch.equal(eight, anomalib_read_image(tmp_path / "image8.png", as_tensor=True))  # 8-bit: anomalib's values
    clipped = anomalib_read_image(tmp_path / "image16.png", as_tensor=True)  # anomalib: every non-zero pixel white
    assert torch.equal(clipped, (torch.from_numpy(gray) > 0).float().expand(3, -1, -1))

    mask = np.zeros((24, 40), dtype=np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask8.png")
    Image.fromarray(mask.astype(np.uint16) * 257).save(tmp_path / "mask16.png")
    assert torch.equal(read_mask(tmp_path / "mask16.png"), read_mask(tmp_path / "mask8.png"))
    assert torch.equal(read_mask(tmp_path / "mask8.png"), anomalib_read_mask(tmp_path / "mask8.png", as_tensor=True))
    assert int(read_mask(tmp_path / "mask16.png").sum()) == 10 * 20


def test_sixteen_bit_dataset_gives_the_items_of_its_eight_bit_copy(tmp_path):
    eight = small_dataset(tmp_path / "eight")
    sixteen = tmp_path / "sixteen"
    shutil.copytree(eight, sixteen)
    for path in sixteen.rglob("*.png"):
        gray = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
        Image.fromarray(gray).save(eight / path.relative_to(sixteen))  # the same image, in 8 bits
    items = []
    for root in (eight, sixteen):
        datamodule = AuxiliaryDataModule(root=root, val_split_ratio=0, num_workers=0)
        datamodule.setup()
        items.append([datamodule.train_data[index] for index in range(len(datamodule.train_data))])
    assert len(items[0]) == len(items[1]) == 4
    for item8, item16 in zip(*items, strict=True):
        torch.testing.assert_close(item16.image, item8.image, rtol=0, atol=1e-6)
        assert torch.equal(item16.gt_mask, item8.gt_mask)
    assert any(item.gt_mask.any() for item in items[1])


def test_predict_dataset_reads_as_anomalib_and_names_a_damaged_file(tmp_path):
    """``predict``'s images: anomalib's items for 8-bit files, 16-bit like 8-bit, a damaged file named."""
    from anomalib.data import PredictDataset

    from anomalib_faprompt.data.dataset import ImagePredictDataset

    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a_color.png")
    Image.fromarray(gray).save(tmp_path / "b_gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "c_gray16.png")

    ours, anomalib_items = ImagePredictDataset(tmp_path), PredictDataset(tmp_path)
    assert len(ours) == len(anomalib_items) == 3
    for index in range(2):
        assert ours[index].image_path == anomalib_items[index].image_path
        assert torch.equal(ours[index].image, anomalib_items[index].image)
    torch.testing.assert_close(ours[2].image, ours[1].image, rtol=0, atol=1e-6)

    damaged = tmp_path / "d_damaged.png"
    damaged.write_bytes((tmp_path / "a_color.png").read_bytes()[:100])
    with pytest.raises(UnreadableFileError, match=rf"Cannot read '{re.escape(str(damaged))}' .* then predict again"):
        ImagePredictDataset(tmp_path)[3]


def test_predict_paths_that_hold_no_images_are_named(tmp_path):
    from anomalib_faprompt.data.dataset import ImagePredictDataset

    with pytest.raises(MissingInputError, match=rf"^'{re.escape(str(tmp_path / 'nope'))}' \(the images to predict"):
        ImagePredictDataset(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match=rf"^'{re.escape(str(tmp_path))}' .*: Found 0 images in .* folder of"):
        ImagePredictDataset(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InvalidInputError, match=r"notes.txt' \(the images to predict, `--data`\): ``filename`` is not"):
        ImagePredictDataset(tmp_path / "notes.txt")


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_photo_tagged_with_its_orientation_reads_upright_everywhere(tmp_path, orientation):
    """Test, predict and reference images are read by ``read_image``: a tagged photo reads as a viewer shows it."""
    from anomalib_faprompt.data.dataset import ImagePredictDataset

    upright = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    photo, shown = camera_photo(tmp_path, "photo", upright, orientation)
    assert Image.open(photo).size == ((24, 40) if orientation in (6, 8) else (40, 24))  # stored turned

    image = read_image(photo)
    assert image.shape == (3, 24, 40)
    assert torch.equal(image, read_image(shown))
    assert not torch.equal(anomalib_read_image(photo, as_tensor=True), image)  # anomalib: as stored
    predicted = ImagePredictDataset(tmp_path)
    assert [Path(item.image_path).name for item in predicted] == ["photo.jpg", "photo_upright.png"]
    assert torch.equal(predicted[0].image, predicted[1].image)


def test_a_tagged_mask_reads_upright_and_a_turned_photo_matches_its_mask(tmp_path):
    """A mask drawn on the upright view (untagged) fits its tagged photo; a tagged mask is turned like a photo."""
    from anomalib_faprompt.data.dataset import CheckedImageDataset

    mask = np.zeros((24, 40), dtype=np.uint8)
    mask[2:10, 5:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask_upright.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(mask, 1))).save(tmp_path / "mask.png", exif=exif_tagged(6))
    assert torch.equal(read_mask(tmp_path / "mask.png"), read_mask(tmp_path / "mask_upright.png"))
    assert int(read_mask(tmp_path / "mask.png")[2:10, 5:30].sum()) == 8 * 25

    rng = np.random.default_rng(0)
    photo, shown = camera_photo(tmp_path, "photo", rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), 6)
    samples = pd.DataFrame(
        [(str(photo), "defect", 1, str(tmp_path / "mask_upright.png"), "test")],
        columns=["image_path", "label", "label_index", "mask_path", "split"],
    )
    samples.attrs["task"] = "segmentation"
    item = CheckedImageDataset(samples, name="photos", category="photo")[0]
    assert torch.equal(item.image, read_image(shown))
    assert torch.equal(item.gt_mask, read_mask(tmp_path / "mask_upright.png"))


def test_items_equal_anomalib_mvtecad_dataset(synthetic_source):
    """Valid 8-bit data reads exactly as anomalib's own MVTecADDataset, in the same order."""
    root = synthetic_source
    datamodule = AuxiliaryDataModule(root=root, categories=["beta"], val_split_ratio=0, num_workers=0)
    datamodule.setup()
    ours = datamodule.train_data
    reference = MVTecADDataset(root=root, category="beta", split="test")
    assert list(ours.samples.image_path) == list(reference.samples.image_path)
    for index in range(len(reference)):
        mine, theirs = ours[index], reference[index]
        assert torch.equal(mine.image, theirs.image)
        assert torch.equal(mine.gt_mask, theirs.gt_mask)
        assert int(mine.gt_label) == int(theirs.gt_label)


# --- val_split_ratio 0 ---------------------------------------------------------------------------------------------


def test_val_split_ratio_zero_trains_on_the_whole_split(synthetic_source):
    root = synthetic_source
    datamodule = AuxiliaryDataModule(root=root, val_split_ratio=0, num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == len(SOURCE_CATEGORIES) * (N_GOOD + N_DEFECT)
    assert sorted(datamodule.train_data.samples.image_path) == sorted(str(path) for path in root.rglob("test/*/*.png"))
    assert datamodule.val_dataloader() == []
    with pytest.raises(ValueError, match=r"Nothing to test on.*target_dataset"):
        datamodule.test_dataloader()
    for ratio in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"val_split_ratio.*\[0, 1\)"):
            AuxiliaryDataModule(root=root, val_split_ratio=ratio)
    for config in ("faprompt_mvtec_to_visa.yaml", "faprompt_visa_to_mvtec.yaml"):
        data = yaml.safe_load((REPO / "configs" / config).read_text())["data"]["init_args"]
        assert data["val_split_ratio"] == 0, config


# --- relative roots ------------------------------------------------------------------------------------------------


def test_relative_root_with_folder_and_without_masks(tmp_path, monkeypatch):
    source = small_dataset(tmp_path / "src" / "data")
    folder = tmp_path / "src" / "a"
    shutil.copytree(source / "alpha" / "test" / "good", folder / "good")
    shutil.copytree(source / "alpha" / "test" / "defect", folder / "defect")
    monkeypatch.chdir(tmp_path)
    for masks in (False, True):
        if masks:
            shutil.copytree(source / "alpha" / "ground_truth" / "defect", folder / "ground_truth")
        datamodule = AuxiliaryDataModule(root="src/a", dataset="Folder", masks=masks, val_split_ratio=0, num_workers=0)
        datamodule.setup()
        paths = sorted(datamodule.train_data.samples.image_path)
        assert paths == sorted(str(path) for path in folder.rglob("*/0*.png") if path.parent.name != "ground_truth")
        assert datamodule.name == "a"
        assert datamodule.train_data[0].image.shape == (3, 64, 64)
    mvtec = AuxiliaryDataModule(root="src/data", masks=False, val_split_ratio=0, num_workers=0)
    mvtec.setup()
    assert len(mvtec.train_data) == 4
    assert all(Path(path).is_file() for path in mvtec.train_data.samples.image_path)


# --- damaged files, JPEG files, extra masks ------------------------------------------------------------------------


def test_skip_unreadable_in_lightning_test_and_predict_with_workers(tmp_path, caplog):
    source = small_dataset(tmp_path / "source")
    target = small_dataset(tmp_path / "target", categories=("gamma", "delta"), seed=1)
    damaged = target / "gamma" / "test" / "defect" / "000.png"
    truncate(damaged)
    datamodule = AuxiliaryDataModule(
        root=source,
        val_split_ratio=0,
        target_dataset="MVTecAD",
        target_root=target,
        skip_unreadable=True,
        eval_batch_size=1,
        num_workers=1,
    )
    model = _Recorder()
    _trainer().test(model, datamodule=datamodule, verbose=False)
    (message,) = logged_warnings(caplog, "unreadable")
    assert message.startswith(f"Skipped 1 unreadable file(s) in stage 'test': {damaged} (")
    expected = [
        (index, str(path))
        for index, category in enumerate(["delta", "gamma"])
        for path in sorted((target / category / "test").rglob("*.png"))
        if path != damaged
    ]
    assert model.seen == expected
    assert list(datamodule.skipped_files) == [str(damaged)]

    predicted = _trainer().predict(model, datamodule=datamodule)  # Lightning re-creates the loaders here
    assert [path for loader in predicted for batch in loader for path in batch] == [path for _, path in expected]


def test_jpeg_images_and_masks_in_the_mvtec_layout(tmp_path):
    root = tmp_path / "jpeg"
    for folder in ("test/good", "test/defect", "ground_truth/defect"):
        (root / "parts" / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    masks = {}
    for number in range(3):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "parts" / "test" / "good" / f"{number:03d}.jpg")
        Image.fromarray(image).save(root / "parts" / "test" / "defect" / f"{number:03d}.JPG")
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[8 * number + 3 : 8 * number + 21, 13:37] = 255
        masks[f"{number:03d}"] = mask
        Image.fromarray(mask).save(root / "parts" / "ground_truth" / "defect" / f"{number:03d}_mask.jpg", quality=75)
    artefacts = np.asarray(Image.open(root / "parts" / "ground_truth" / "defect" / "000_mask.jpg"))
    assert ((artefacts > 0) != (masks["000"] > 0)).any()  # JPEG noise: anomalib's `> 0` would grow the mask

    datamodule = AuxiliaryDataModule(root=root, val_split_ratio=0, num_workers=0)
    datamodule.setup()
    data = datamodule.train_data
    assert len(data) == 6
    for index in range(len(data)):
        item = data[index]
        if int(item.gt_label) == 1:
            assert torch.equal(item.gt_mask.bool(), torch.from_numpy(masks[Path(item.image_path).stem] > 0))
        else:
            assert not item.gt_mask.any()


def test_extra_mask_in_a_folder_dataset_is_ignored_with_a_warning(tmp_path, caplog):
    source = small_dataset(tmp_path / "data")
    folder = tmp_path / "custom"
    shutil.copytree(source / "alpha" / "test" / "good", folder / "good")
    shutil.copytree(source / "alpha" / "test" / "defect", folder / "defect")
    shutil.copytree(source / "alpha" / "ground_truth" / "defect", folder / "ground_truth")
    shutil.copy(folder / "ground_truth" / "000_mask.png", folder / "ground_truth" / "007_mask.png")
    datamodule = AuxiliaryDataModule(root=folder, dataset="Folder", val_split_ratio=0, num_workers=0)
    datamodule.setup()
    assert logged_warnings(caplog, "mask file") == [
        (
            f"1 mask file(s) under '{folder}' belong to no defect image and are ignored: "
            f"{folder / 'ground_truth' / '007_mask.png'}"
        )
    ]
    samples = datamodule.train_data.samples
    defects = samples[samples.label_index == 1]
    assert [Path(path).name for path in defects.mask_path] == ["000_mask.png", "001_mask.png"]
    assert [Path(path).name for path in defects.image_path] == ["000.png", "001.png"]


# --- mask checks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["training", "target"])
def test_mask_of_another_size_or_with_no_defect_is_an_error_naming_it(tmp_path, where):
    source = small_dataset(tmp_path / "source")
    target = small_dataset(tmp_path / "target", categories=("gamma",), seed=1)
    data = source / "alpha" if where == "training" else target / "gamma"
    mask = data / "ground_truth" / "defect" / "001_mask.png"
    datamodule = AuxiliaryDataModule(
        root=source, val_split_ratio=0, target_dataset="MVTecAD", target_root=target, num_workers=0
    )
    datamodule.setup()
    dataset = datamodule.train_data if where == "training" else datamodule.target_data[0]
    index = list(dataset.samples.mask_path).index(str(mask))
    assert dataset[index].gt_mask.shape == (64, 64)

    Image.fromarray(np.full((32, 128), 255, dtype=np.uint8)).save(mask)
    with pytest.raises(ValueError, match=r"001_mask\.png' is 128x32 pixels but its image .*001\.png' is 64x64"):
        dataset[index]
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(mask)
    with pytest.raises(ValueError, match=r"001_mask\.png' of the defect image .*001\.png' marks no defect pixel"):
        dataset[index]


# --- empty target categories ---------------------------------------------------------------------------------------


def test_empty_target_category_keeps_its_place_among_the_test_dataloaders(tmp_path, caplog):
    source = small_dataset(tmp_path / "source")
    target = small_dataset(tmp_path / "target", categories=("alpha", "gamma"), seed=1)
    for folder in ("test/good", "test/defect", "ground_truth/defect"):
        (target / "beta" / folder).mkdir(parents=True)  # folders, no images
    datamodule = AuxiliaryDataModule(
        root=source, val_split_ratio=0, target_dataset="MVTecAD", target_root=target, num_workers=0
    )
    assert datamodule.test_categories == ["alpha", "beta", "gamma"]
    model = _Recorder()
    trainer = _trainer()
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert logged_warnings(caplog, "no images") == [
        (
            f"Target categories with no images under '{target}': beta. They keep their place among the test "
            "dataloaders, with no batches."
        )
    ]
    assert [len(loader.dataset) for loader in trainer.test_dataloaders] == [4, 0, 4]
    assert [loader.dataset.samples.image_path[0].split("/")[-4] for loader in trainer.test_dataloaders[::2]] == [
        "alpha",
        "gamma",
    ]
    assert sorted({index for index, _ in model.seen}) == [0, 2]  # gamma keeps index 2: names and indices line up
    assert all(f"/{['alpha', 'beta', 'gamma'][index]}/" in path for index, path in model.seen)

    for category in ("alpha", "gamma"):
        shutil.rmtree(target / category / "test")
        (target / category / "test" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images in any target category"):
        _trainer().test(
            _Recorder(),
            datamodule=AuxiliaryDataModule(
                root=source, val_split_ratio=0, target_dataset="MVTecAD", target_root=target, num_workers=0
            ),
            verbose=False,
        )


# --- loader sizes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value", "expected"),
    [
        ("eval_batch_size", 0, "eval_batch_size=0 must be an integer of at least 1 (images per validation or test"),
        ("eval_batch_size", -3, "eval_batch_size=-3 must be an integer of at least 1"),
        ("train_batch_size", 0, "train_batch_size=0 must be an integer of at least 1 (images per training step)."),
        ("num_workers", -1, "num_workers=-1 must be an integer of at least 0 (0 loads the images in the main process)"),
    ],
)
@pytest.mark.parametrize("datamodule", ["AuxiliaryDataModule", "MetaJson"])
def test_a_batch_size_below_one_or_negative_workers_are_refused_in_one_line(
    synthetic_source, datamodule, argument, value, expected
):
    from anomalib_faprompt.data import MetaJson

    build = {"AuxiliaryDataModule": AuxiliaryDataModule, "MetaJson": MetaJson}[datamodule]
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        build(root=synthetic_source, **{argument: value})  # refused before the root is read (no meta.json there)
    assert "\n" not in str(error.value)


# --- names and missing folders -------------------------------------------------------------------------------------


def test_names_say_what_the_data_is(synthetic_source, synthetic_target, tmp_path):
    source, target = synthetic_source, synthetic_target
    assert AuxiliaryDataModule(root=source).name == "synthetic_source"
    assert AuxiliaryDataModule(root=source).test_categories == ["held_out"]
    pair = AuxiliaryDataModule(root=source, target_dataset="MVTecAD", target_root=target)
    assert pair.name == "synthetic_source_to_synthetic_target"
    mvtec = small_dataset(tmp_path / "mvtec_copy", categories=("bottle", "cable"))  # MVTec AD's categories
    assert (
        AuxiliaryDataModule(root=mvtec, target_dataset="MVTecAD", target_root=target).name
        == "MVTecAD_to_synthetic_target"
    )
    assert AuxiliaryDataModule(root=source, name="toy").name == "toy"


def test_missing_dataset_folder_fails_in_one_line_before_any_download(synthetic_source, tmp_path, monkeypatch):
    def no_download(*_args, **_kwargs):
        pytest.fail("a download was tried")

    monkeypatch.setattr(mvtecad_module, "download_and_extract", no_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        AuxiliaryDataModule(root="datasets/synthetic")
    message = str(error.value)
    assert "\n" not in message
    assert "'datasets/synthetic' (argument `root`) does not exist" in message
    assert "python -m anomalib_faprompt.data.synthetic datasets/synthetic" in message
    with pytest.raises(FileNotFoundError, match=r"'datasets/target' \(argument `target_root`\)"):
        AuxiliaryDataModule(root=synthetic_source, target_dataset="Visa", target_root="datasets/target")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_without_categories_is_never_downloaded_into(tmp_path, monkeypatch):
    """Only folders named like anomalib's defaults are downloaded into (docs/protocol.md); a category: its parent."""

    def no_download(*_args, **_kwargs):
        pytest.fail("a download was tried")

    monkeypatch.setattr(mvtecad_module, "download_and_extract", no_download)
    monkeypatch.setattr(visa_module, "download_and_extract", no_download)
    monkeypatch.chdir(tmp_path)
    source, target = (
        small_dataset(Path("source")),
        small_dataset(Path("datasets/target"), categories=("gamma", "delta"), seed=1),
    )
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InvalidInputError) as error:  # `--data.root ./datasets/target/gamma`
        AuxiliaryDataModule(root="datasets/target/gamma")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "Dataset folder 'datasets/target/gamma' (argument `root`) holds no category folders with a `test/` sub-folder"
    )
    assert message.endswith("looks like one category folder: pass its parent 'datasets/target' as `root`.")
    with pytest.raises(
        InvalidInputError, match=r"'datasets/target/gamma' \(argument `target_root`\).*as `target_root`"
    ):
        AuxiliaryDataModule(root=source, target_dataset="MVTecAD", target_root=target / "gamma")

    empty = tmp_path / "mine"
    empty.mkdir()
    for dataset in ("MVTecAD", "Visa"):
        with pytest.raises(InvalidInputError, match=r"'.*mine' \(argument `target_root`\) holds no category") as error:
            AuxiliaryDataModule(root=source, target_dataset=dataset, target_root=empty)
        assert "looks like one category" not in str(error.value)
        with pytest.raises(InvalidInputError, match=r"'.*mine' \(argument `root`\) holds no category"):
            prepare_category(dataset, empty, "bottle")
    with pytest.raises(
        FileNotFoundError, match=r"category 'bottle' is not under 'datasets/target' \(argument `root`\), which holds"
    ):
        prepare_category("MVTecAD", target, "bottle")  # a folder with other categories
    assert sorted(tmp_path.rglob("*")) == sorted([*before, empty])

    # Where anomalib may fetch the data, its category list stays: a folder named like its default (downloaded
    # into), and VisA's raw download in any folder (split into `visa_pytorch`).
    (tmp_path / "datasets" / "MVTecAD").mkdir()
    assert available_categories("MVTecAD", "datasets/MVTecAD")[0] == "bottle"
    (tmp_path / "raw" / "candle" / "Data").mkdir(parents=True)
    assert "candle" in available_categories("Visa", "raw")


def test_failed_download_into_the_default_folder_leaves_nothing_behind(tmp_path, monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mvtecad_module, "download_and_extract", offline)
    monkeypatch.chdir(tmp_path)
    datamodule = AuxiliaryDataModule(root="datasets/MVTecAD", categories=["bottle"])
    with pytest.raises(FileNotFoundError, match=r"MVTecAD category 'bottle' is not under 'datasets/MVTecAD'") as error:
        datamodule.prepare_data()
    assert "mvtec.com" in str(error.value)  # where to get it by hand
    assert list(tmp_path.iterdir()) == []


# --- the synthetic generator ---------------------------------------------------------------------------------------


def test_generator_keeps_a_folder_holding_the_same_dataset_and_refuses_any_other(tmp_path):
    root = small_dataset(tmp_path / "data", categories=("alpha", "beta"), seed=3)
    before = snapshot(root)
    assert small_dataset(root, categories=("alpha", "beta"), seed=3) == root  # the same parameters: kept as it is
    assert snapshot(root) == before

    for categories, seed, differs in (
        (("alpha",), 3, "categories ['alpha', 'beta'], not ['alpha']"),
        (("alpha", "beta"), 4, "seed 3, not 4"),
    ):
        with pytest.raises(FileExistsError, match=re.escape(f"other parameters ({differs})")):
            small_dataset(root, categories=categories, seed=seed)
    with pytest.raises(FileExistsError, match=r"image_size 64, not 32.*n_train 1, not 4"):
        make_synthetic_dataset(root, categories=("alpha", "beta"), image_size=32, n_good=2, n_defect=2, seed=3)
    assert snapshot(root) == before

    (root / "notes.txt").write_text("mine")  # mixed with other content: not "this dataset" any more
    with pytest.raises(FileExistsError, match=r"besides this synthetic dataset it holds notes.txt"):
        small_dataset(root, categories=("alpha", "beta"), seed=3)
    (root / "notes.txt").unlink()
    (root / "alpha" / "test" / "good" / "000.png").write_bytes(
        (root / "beta" / "test" / "good" / "000.png").read_bytes()
    )
    with pytest.raises(FileExistsError, match=r"files of this synthetic dataset were changed"):
        small_dataset(root, categories=("alpha", "beta"), seed=3)
    (root / "synthetic.json").unlink()  # a folder without the manifest: as any other non-empty folder
    with pytest.raises(FileExistsError, match=r"is not empty and holds no synthetic dataset manifest"):
        small_dataset(root, categories=("alpha", "beta"), seed=3)


@pytest.mark.parametrize(
    ("datamodule", "count", "expected"),
    [
        (SimpleNamespace(test_categories=["a", "b"], category="x"), 2, ["a", "b"]),
        (SimpleNamespace(test_categories=["a", "b"], category="x"), 1, ["x"]),
        (SimpleNamespace(category="bottle"), 1, ["bottle"]),
        (SimpleNamespace(category="bottle"), 2, [None, None]),
        (SimpleNamespace(category=""), 1, [None]),
        (None, 1, [None]),
        (None, 0, []),
    ],
)
def test_dataloader_categories(datamodule, count, expected):
    from anomalib_faprompt.data.categories import dataloader_categories

    assert dataloader_categories(datamodule, count) == expected


def test_an_unreadable_file_from_a_loader_worker_is_one_line_of_the_cli(tmp_path, capsys):
    """A worker's error carries the worker's traceback in its message; the CLI prints only the error."""
    from torch._utils import ExceptionWrapper

    from anomalib_faprompt.errors import exit_with

    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"not an image")
    try:
        read_image(damaged)
    except UnreadableFileError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(UnreadableFileError) as caught:
        wrapper.reraise()
    assert "Original Traceback" in str(caught.value)

    with pytest.raises(SystemExit) as exited:
        exit_with(caught.value, "anomalib test")
    assert exited.value.code == 2
    what, error = capsys.readouterr().err.splitlines()
    assert what == "anomalib test:"
    assert error.endswith(
        f"UnreadableFileError: Cannot read '{damaged}' (UnidentifiedImageError: cannot identify image "
        f"file '{damaged}'). Replace or remove the file, or set `skip_unreadable: true` on the data "
        "module to skip unreadable files and list them at the end."
    )
