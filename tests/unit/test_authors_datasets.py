"""Datasets indexed by the authors' ``meta.json`` (``MetaJson``, and ``dataset="MetaJson"`` in the protocol).

The index files are written here as the format describes them (AnomalyCLIP's ``generate_dataset_json`` layout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, MetaJson
from anomalib_faprompt.data.authors_index import meta_train_normals
from anomalib_faprompt.data.paths import path_problem
from anomalib_faprompt.errors import InvalidInputError, MissingInputError
from tests.helpers.commands import REPO
from tests.helpers.data import results_table
from tests.helpers.engine import cpu_engine
from tests.helpers.meta_json import emptied_index, read_index, write_meta
from tests.helpers.models import tiny_args


def test_meta_json_gives_the_per_category_table_of_the_mvtec_layout(synthetic_source, indexed_target, tmp_path):
    tables = {}
    for name, dataset in (("mvtec", "MVTecAD"), ("meta", "MetaJson")):
        datamodule = AuxiliaryDataModule(
            root=synthetic_source, target_dataset=dataset, target_root=indexed_target, num_workers=0, name="pair"
        )
        torch.manual_seed(0)
        model = FAPrompt(**tiny_args(visualizer=False))
        cpu_engine(tmp_path / name).test(model, datamodule=datamodule)
        tables[name] = results_table(tmp_path / name)
    assert set(tables["meta"]) >= {"gamma", "delta", "epsilon", "mean"}
    for category, row in tables["mvtec"].items():
        for metric in ("image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPRO"):
            assert tables["meta"][category][metric] == row[metric], (category, metric)


def test_meta_json_items_are_those_of_the_mvtec_layout(synthetic_source, indexed_target):
    def items(dataset: str) -> dict[str, list]:
        datamodule = AuxiliaryDataModule(
            root=synthetic_source, target_dataset=dataset, target_root=indexed_target, num_workers=0
        )
        datamodule.setup()
        return {
            data.category: sorted(
                zip(data.samples.image_path, data.samples.label_index, data.samples.mask_path, strict=True)
            )
            for data in datamodule.target_data
        }

    assert items("MetaJson") == items("MVTecAD")


def test_the_auxiliary_dataset_trains_on_the_test_part_of_its_index(indexed_target):
    datamodule = AuxiliaryDataModule(root=indexed_target, dataset="MetaJson", val_split_ratio=0, num_workers=0)
    datamodule.setup()
    meta = json.loads((indexed_target / "meta.json").read_text())
    expected = sorted(str(indexed_target / item["img_path"]) for items in meta["test"].values() for item in items)
    assert sorted(datamodule.train_data.samples.image_path) == expected
    assert datamodule.train_data[0].gt_mask is not None


def test_a_classification_only_index_gets_image_metrics_only(synthetic_target, tmp_path):
    root = tmp_path / "brain"
    shutil.copytree(synthetic_target, root)
    write_meta(root, mask_folders=True)
    datamodule = MetaJson(root=root, num_workers=0)
    datamodule.setup()
    assert [data.task for data in datamodule.target_data] == ["classification"] * 3
    torch.manual_seed(0)
    cpu_engine(tmp_path / "results").test(FAPrompt(**tiny_args(visualizer=False)), datamodule=datamodule)
    table = results_table(tmp_path / "results")
    assert float(table["gamma"]["image_AUROC"]) >= 0
    assert table["gamma"]["pixel_AUROC"] == ""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda item: item.update(img_path="gamma/test/good/999.png"), r"names an image that does not exist"),
        (lambda item: item.update(anomaly=2), r"has anomaly=2: it must be 0 or 1"),
        (lambda item: item.pop("cls_name"), r"has no field 'cls_name'"),
        (lambda item: item.update(cls_name=7), r"has cls_name=7: it must be a non-empty string"),
    ],
)
def test_a_bad_item_is_named_before_any_work(indexed_target, tmp_path, change, expected):
    root = tmp_path / "copy"
    shutil.copytree(indexed_target, root)
    index = read_index(root)
    change(index["test"]["gamma"][1])
    (root / "meta.json").write_text(json.dumps(index))
    with pytest.raises(
        InvalidInputError, match=rf"'{root.resolve() / 'meta.json'}': 'test' item 1 of 'gamma'.*{expected}"
    ):
        MetaJson(root=root, num_workers=0)


def test_missing_index_mixed_masks_and_unknown_categories_are_named(indexed_target, tmp_path):
    with pytest.raises(MissingInputError, match=r"meta.json' does not exist \(argument `root`\)"):
        MetaJson(root=tmp_path, num_workers=0)
    root = tmp_path / "copy"
    shutil.copytree(indexed_target, root)
    index = read_index(root)
    defect = next(item for item in index["test"]["delta"] if item["anomaly"])
    defect["mask_path"] = ""
    (root / "meta.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match=rf"defect image '{defect['img_path']}' of 'delta' has no mask file"):
        MetaJson(root=root, num_workers=0).setup()
    with pytest.raises(
        InvalidInputError, match=r"Categories \['zeta'\] \(argument `categories`\) are not in '.*meta.json'"
    ):
        MetaJson(root=indexed_target, categories=["zeta"], num_workers=0)


# --- an index that tries to leave its folder --------------------------------------------------------------------------
# The indexes below are built as the authors' generator builds them (zqhang/AnomalyCLIP generate_dataset_json/mvtec.py):
# `info = dict(train={}, test={})` (line 17), per phase (line 22) one item per image,
# `dict(img_path=f'{cls_name}/{phase}/{specie}/{img_name}', mask_path=..., cls_name=cls_name, specie_name=specie,
# anomaly=...)` (lines 32-38), the category's list in `info[phase][cls_name]` (line 45), the file written with
# `json.dumps(info, indent=4) + "\n"` (line 47). The authors' reader (mala-lab/FAPrompt dataset.py) takes
# `meta_info[mode]` and extends one list with every category's items (lines 65-71), then opens
# `os.path.join(self.root, img_path)` and the mask likewise (lines 82-90): an absolute path replaces the root and `..`
# climbs out of it, and their visualization.py writes heat-maps into a folder named after `cls_name`.


def _authors_item(img_path: str, mask_path: str, cls_name: str, specie_name: str, anomaly: int) -> dict:
    """One item, with the fields and in the order of the generator (mvtec.py lines 32-38)."""
    return {
        "img_path": img_path,
        "mask_path": mask_path,
        "cls_name": cls_name,
        "specie_name": specie_name,
        "anomaly": anomaly,
    }


def _write_index(root: Path, index: dict) -> None:
    """``meta.json`` as the generator writes it (mvtec.py line 47)."""
    (root / "meta.json").write_text(json.dumps(index, indent=4) + "\n")


def _copy(indexed_target: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "copy"
    shutil.copytree(indexed_target, root)
    return root, read_index(root)


def _meta_file(root: Path) -> str:
    return re.escape(str(root.resolve() / "meta.json"))


@pytest.mark.parametrize("name", ["../../../../outside/x", "..", "gamma\\defect", "C:gamma", "gam\nma"])
def test_a_category_that_is_not_one_folder_name_is_refused(indexed_target, tmp_path, name):
    root, index = _copy(indexed_target, tmp_path)
    index["test"][name] = [
        _authors_item(item["img_path"], item["mask_path"], name, item["specie_name"], item["anomaly"])
        for item in index["test"].pop("gamma")
    ]
    _write_index(root, index)
    with pytest.raises(InvalidInputError) as caught:
        MetaJson(root=root, num_workers=0)
    message = str(caught.value)
    assert re.match(
        rf"'{_meta_file(root)}': 'test' item 0 of {re.escape(repr(name))} \(gamma/test/\w+/\w+\.png\) has "
        rf"cls_name={re.escape(repr(name))}: a category name becomes the name of its heat-maps' folder, and this one ",
        message,
    ), message
    assert message.endswith("Rename the category in the index to one folder name (no '/', '\\', ':' or '..').")
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("field", ["img_path", "mask_path"])
@pytest.mark.parametrize(
    ("form", "problem"),
    [("absolute", "is absolute"), ("../outside/x.png", "holds '..'"), ("gamma/../../outside/x.png", "holds '..'")],
)
def test_an_item_path_that_leaves_the_index_folder_is_refused(indexed_target, tmp_path, field, form, problem):
    root, index = _copy(indexed_target, tmp_path)
    position, item = next((i, item) for i, item in enumerate(index["test"]["gamma"]) if item["anomaly"])
    (tmp_path / "outside").mkdir()
    shutil.copy(root / item[field], tmp_path / "outside" / "x.png")
    path = str(tmp_path / "outside" / "x.png") if form == "absolute" else form
    assert os.path.isfile(os.path.join(root, path))  # the authors' reader (dataset.py line 82 or 90) opens it
    item[field] = path
    _write_index(root, index)
    with pytest.raises(InvalidInputError) as caught:
        MetaJson(root=root, num_workers=0)
    expected = (
        f"'{root.resolve() / 'meta.json'}': 'test' item {position} of 'gamma' ({item['img_path']}) has "
        f"{field}={path!r}: a path of the index must stay inside the index's folder, and this one {problem}"
    )
    assert str(caught.value).startswith(expected), str(caught.value)
    assert str(caught.value).endswith(f"Give the path relative to '{root.resolve()}', without '..'.")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("gamma/test/good/000.png", None),
        ("gamma/./test/good/000.png", None),
        ("gamma\\test\\good\\000.png", None),
        ("/data/000.png", "is absolute"),
        ("C:\\data\\000.png", "starts with 'C:\\\\', a drive or root"),
        ("C:000.png", "starts with 'C:', a drive or root"),
        ("\\\\server\\share\\000.png", "starts with '\\\\\\\\server\\\\share\\\\', a drive or root"),
        ("..\\outside\\000.png", "holds '..', which may lead out of it"),
        ("gamma/../000.png", "holds '..', which may lead out of it"),
    ],
)
def test_which_index_paths_stay_inside_the_index_folder(path, problem):
    """The rule is the same on every system: Windows' separators, drives and shares count too."""
    assert path_problem(path) == problem


def test_a_train_item_that_leaves_the_index_folder_is_refused(indexed_target, tmp_path):
    root, index = _copy(indexed_target, tmp_path)
    normals = sorted(path.name for path in (root / "gamma" / "train" / "good").glob("*.png"))
    index["train"]["gamma"] = [_authors_item(f"gamma/train/good/{name}", "", "gamma", "good", 0) for name in normals]
    _write_index(root, index)
    expected = [root.resolve() / "gamma" / "train" / "good" / name for name in normals]
    assert meta_train_normals(root, "gamma") == expected

    index["train"]["gamma"].append(_authors_item("../../outside/x.png", "", "gamma", "good", 0))
    _write_index(root, index)
    with pytest.raises(InvalidInputError) as caught:
        meta_train_normals(root, "gamma")
    assert str(caught.value).startswith(
        f"'{root.resolve() / 'meta.json'}': 'train' item {len(normals)} of 'gamma' (../../outside/x.png) has "
        "img_path='../../outside/x.png': a path of the index must stay inside the index's folder, and this one holds "
        "'..'"
    ), str(caught.value)


def test_a_repeated_item_is_scored_as_listed_and_named_in_one_warning_line(indexed_target, tmp_path, caplog):
    root, index = _copy(indexed_target, tmp_path)
    items = index["test"]["gamma"]
    items += [dict(items[0]), dict(items[0]), dict(items[3])]
    _write_index(root, index)
    with caplog.at_level("WARNING", logger="anomalib_faprompt"):
        datamodule = MetaJson(root=root, num_workers=0)
        datamodule.setup()
    records = [record for record in caplog.records if record.name.startswith("anomalib_faprompt")]
    assert [record.getMessage() for record in records] == [
        (
            f"'{root.resolve() / 'meta.json'}': 3 'test' item(s) repeat an earlier item of their category, e.g. item "
            f"{len(items) - 3} of 'gamma' ({items[0]['img_path']}) repeats item 0: each is scored and counted in the "
            "metrics as often as it is listed, as by the authors' test.py. Remove the repeats to count each image once."
        )
    ]
    paths = list(datamodule.target_data[datamodule.test_categories.index("gamma")].samples.image_path)
    assert len(paths) == len(items)
    assert paths.count(str(root.resolve() / items[0]["img_path"])) == 3


def test_a_repeated_image_with_other_fields_is_refused(indexed_target, tmp_path):
    root, index = _copy(indexed_target, tmp_path)
    items = index["test"]["gamma"]
    normal = next(item for item in items if not item["anomaly"])
    defect = next(item for item in items if item["anomaly"])
    items.append(_authors_item(normal["img_path"], defect["mask_path"], "gamma", defect["specie_name"], 1))
    _write_index(root, index)
    with pytest.raises(InvalidInputError) as caught:
        MetaJson(root=root, num_workers=0)
    assert str(caught.value) == (
        f"'{root.resolve() / 'meta.json'}': 'test' item {len(items) - 1} of 'gamma' ({normal['img_path']}) names "
        f"the image of item {items.index(normal)} with other fields (mask_path, specie_name, anomaly): an image has "
        "one label. Keep one of the two items."
    )


def test_a_category_with_no_test_items_is_named_where_it_is_read(indexed_target, tmp_path):
    root = emptied_index(indexed_target, tmp_path / "copy", "delta")
    expected = rf"^'{root.resolve() / 'meta.json'}': category 'delta' has no items in the 'test' part, .*`categories`"
    for datamodule in (
        MetaJson(root=root, num_workers=0),
        MetaJson(root=root, categories=["delta"], num_workers=0),
        AuxiliaryDataModule(root=root, dataset="MetaJson", val_split_ratio=0, num_workers=0),
        AuxiliaryDataModule(
            root=indexed_target, val_split_ratio=0, target_dataset="MetaJson", target_root=root, num_workers=0
        ),
    ):
        assert "delta" in datamodule.test_categories or datamodule.target_dataset is None
        with pytest.raises(InvalidInputError, match=expected):
            datamodule.setup("test")
    others = MetaJson(root=root, categories=["gamma", "epsilon"], num_workers=0)
    others.setup("test")
    assert [len(data) for data in others.target_data] == [len(read_index(root)["test"]["gamma"])] * 2


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("authors_*.yaml")), ids=lambda path: path.stem)
def test_the_authors_test_configs_name_real_arguments(config):
    import inspect

    from anomalib_faprompt import AnomalyCLIP

    content = yaml.safe_load(config.read_text())
    model_class = {"anomalib_faprompt.FAPrompt": FAPrompt, "anomalib_faprompt.AnomalyCLIP": AnomalyCLIP}[
        content["model"]["class_path"]
    ]
    model_args = content["model"]["init_args"]
    assert set(model_args) <= set(inspect.signature(model_class.__init__).parameters)
    assert Path(model_args["weights"]).name in {"epoch_7.pth", "epoch_15.pth"}
    assert model_args["evaluator"]["init_args"]["aupro"] == ["exact", "paper"]
    assert content["data"]["class_path"] == "anomalib_faprompt.data.MetaJson"
    assert set(content["data"]["init_args"]) <= set(inspect.signature(MetaJson.__init__).parameters)
    assert config.stem.split("_")[1] == model_class.__name__.lower()
