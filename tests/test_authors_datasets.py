"""Datasets indexed by the authors' ``meta.json`` (``MetaJson``, and ``dataset="MetaJson"`` in the protocol).

The index files are written here as the format describes them (AnomalyCLIP's ``generate_dataset_json`` layout).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.engine import Engine
from conftest import anomalib_cli, tiny_args
from test_authors_checkpoints import authors_faprompt_file

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, MetaJson
from anomalib_faprompt.errors import InvalidInputError, MissingInputError

REPO = Path(__file__).resolve().parents[1]


def write_meta(root: Path, mask_folders: bool = False) -> Path:
    """``meta.json`` for a dataset in the MVTec AD layout, as the authors' generator writes it.

    With ``mask_folders`` every defect item's ``mask_path`` is its mask folder, as classification-only datasets have.
    """
    index: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for category in sorted(path.name for path in root.iterdir() if (path / "test").is_dir()):
        items = []
        for specie in sorted(path.name for path in (root / category / "test").iterdir()):
            for image in sorted((root / category / "test" / specie).glob("*.png")):
                anomaly = int(specie != "good")
                mask = f"{category}/ground_truth/{specie}" + ("" if mask_folders else f"/{image.stem}_mask.png")
                items.append(
                    {
                        "img_path": f"{category}/test/{specie}/{image.name}",
                        "mask_path": mask if anomaly else "",
                        "cls_name": category,
                        "specie_name": specie,
                        "anomaly": anomaly,
                    }
                )
        index["test"][category] = items
    (root / "meta.json").write_text(json.dumps(index, indent=4))
    return root


@pytest.fixture(scope="module")
def indexed_target(synthetic_target, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("indexed") / "target"
    shutil.copytree(synthetic_target, root)
    return write_meta(root)


def _engine(root: Path) -> Engine:
    return Engine(accelerator="cpu", default_root_dir=root, logger=False, enable_progress_bar=False)


def _table(root: Path) -> dict[str, dict[str, str]]:
    (table,) = root.rglob("per_category_results.csv")
    with table.open() as file:
        return {row["category"]: row for row in csv.DictReader(file)}


def test_meta_json_gives_the_per_category_table_of_the_mvtec_layout(synthetic_source, indexed_target, tmp_path):
    tables = {}
    for name, dataset in (("mvtec", "MVTecAD"), ("meta", "MetaJson")):
        datamodule = AuxiliaryDataModule(
            root=synthetic_source, target_dataset=dataset, target_root=indexed_target, num_workers=0, name="pair"
        )
        torch.manual_seed(0)
        model = FAPrompt(**tiny_args(visualizer=False))
        _engine(tmp_path / name).test(model, datamodule=datamodule)
        tables[name] = _table(tmp_path / name)
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
    _engine(tmp_path / "results").test(FAPrompt(**tiny_args(visualizer=False)), datamodule=datamodule)
    table = _table(tmp_path / "results")
    assert float(table["gamma"]["image_AUROC"]) >= 0
    assert table["gamma"]["pixel_AUROC"] == ""


def _index(root: Path) -> dict:
    return json.loads((root / "meta.json").read_text())


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
    index = _index(root)
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
    index = _index(root)
    defect = next(item for item in index["test"]["delta"] if item["anomaly"])
    defect["mask_path"] = ""
    (root / "meta.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match=rf"defect image '{defect['img_path']}' of 'delta' has no mask file"):
        MetaJson(root=root, num_workers=0).setup()
    with pytest.raises(
        InvalidInputError, match=r"Categories \['zeta'\] \(argument `categories`\) are not in '.*meta.json'"
    ):
        MetaJson(root=indexed_target, categories=["zeta"], num_workers=0)


def _emptied(indexed_target: Path, folder: Path, *categories: str) -> Path:
    """A copy of the index whose ``categories`` are listed in its ``test`` part with no items."""
    shutil.copytree(indexed_target, folder)
    index = _index(folder)
    index["test"].update(dict.fromkeys(categories, []))
    (folder / "meta.json").write_text(json.dumps(index))
    return folder


def test_a_category_with_no_test_items_is_named_where_it_is_read(indexed_target, tmp_path):
    root = _emptied(indexed_target, tmp_path / "copy", "delta")
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
    assert [len(data) for data in others.target_data] == [len(_index(root)["test"]["gamma"])] * 2


@pytest.mark.slow  # anomalib's command line (in this process)
def test_cli_test_on_an_index_without_test_items_names_its_category(indexed_target, tmp_path, capsys):
    from anomalib.cli.cli import AnomalibCLI

    root = _emptied(indexed_target, tmp_path / "copy", "gamma", "delta", "epsilon")
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "model": {"class_path": "FAPrompt", "init_args": tiny_args(visualizer=False)},
        "data": {"class_path": "anomalib_faprompt.data.MetaJson", "init_args": {"root": str(root), "num_workers": 0}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exited:
        AnomalibCLI(["test", "--config", str(tmp_path / "config.yaml"), "--default_root_dir", str(tmp_path / "r")])
    assert exited.value.code == 2
    *_, what, error = capsys.readouterr().err.strip().splitlines()
    assert what == "anomalib test:"
    assert error.startswith(f"InvalidInputError: '{root.resolve() / 'meta.json'}': category 'delta' has no items in")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # the `anomalib` command line
def test_cli_test_with_an_authors_file_on_a_meta_json_dataset(indexed_target, tmp_path):
    """The advice about settings unlike the authors' test is logged once, also where Python's warnings are off."""
    torch.manual_seed(0)
    clip = FAPrompt(**tiny_args()).model.backbone.clip
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = FAPrompt(**tiny_args(pretrained=str(tmp_path / "clip.pt")))
    weights = authors_faprompt_file(model, tmp_path / "epoch_7.pth")
    config = {
        "seed_everything": 111,
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "model": {
            "class_path": "FAPrompt",
            "init_args": tiny_args(pretrained=str(tmp_path / "clip.pt"), weights=str(weights), visualizer=False),
        },
        "data": {"class_path": "anomalib_faprompt.data.MetaJson", "init_args": {"root": str(indexed_target)}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    process = anomalib_cli(
        "test",
        "--config",
        tmp_path / "config.yaml",
        "--default_root_dir",
        tmp_path / "r",
        cwd=tmp_path,
        env={"PYTHONWARNINGS": "ignore"},
    )
    assert process.output.count("other settings than their test") == 1
    table = _table(tmp_path / "r")
    assert set(table) == {"gamma", "delta", "epsilon", "mean"}
    released = FAPrompt(
        **tiny_args(
            pretrained=str(tmp_path / "clip.pt"),
            patch_selection="first_k",
            local_score="released",
            weights=str(weights),
            visualizer=False,
        )
    )
    _engine(tmp_path / "direct").test(released, datamodule=MetaJson(root=indexed_target, num_workers=0))
    assert _table(tmp_path / "direct") == table


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
