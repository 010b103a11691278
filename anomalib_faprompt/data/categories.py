"""The category of each test or predict dataloader: the per-category table's rows and the heat-maps' folders."""

from __future__ import annotations

from typing import Any

__all__ = ["category_labels", "dataloader_categories"]


def dataloader_categories(datamodule: Any, count: int) -> list[str | None]:  # noqa: ANN401
    """One category name per dataloader, ``None`` where the datamodule names none.

    Args:
        datamodule: The trainer's datamodule, or ``None`` (dataloaders passed without one).
        count: Number of dataloaders of the running stage.

    Returns:
        The datamodule's ``test_categories`` when it names one per dataloader (e.g.
        :class:`anomalib_faprompt.data.AuxiliaryDataModule` on a target dataset); else, for a single
        dataloader, its ``category`` (anomalib's datamodules); else ``None`` for each.
    """
    names = getattr(datamodule, "test_categories", None)
    if names is not None and len(names) == count:
        return [str(name) for name in names]
    category = getattr(datamodule, "category", None)
    if count == 1 and category:
        return [str(category)]
    return [None] * count


def category_labels(datamodule: Any, count: int) -> list[str]:  # noqa: ANN401
    """:func:`dataloader_categories`, with ``all`` (one dataloader) or ``dataloader_<i>`` where none is named."""
    names = dataloader_categories(datamodule, count)
    return [name or ("all" if count == 1 else f"dataloader_{index}") for index, name in enumerate(names)]
