"""The authors' ``meta.json`` index of a dataset (AnomalyCLIP's ``generate_dataset_json`` layout), written and read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


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


def read_index(root: Path) -> dict:
    """The index of the dataset at ``root``, as a dict."""
    return json.loads((root / "meta.json").read_text())


def emptied_index(indexed_target: Path, folder: Path, *categories: str) -> Path:
    """A copy of the index whose ``categories`` are listed in its ``test`` part with no items."""
    shutil.copytree(indexed_target, folder)
    index = read_index(folder)
    index["test"].update({category: [] for category in categories})
    (folder / "meta.json").write_text(json.dumps(index))
    return folder
