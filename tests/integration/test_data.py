"""The data layer through anomalib's Engine, DataLoader worker processes and the dataset generator's command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.data.images import UnreadableFileError, read_image
from tests.helpers.data import N_DEFECT, N_GOOD, logged_warnings, small_dataset, snapshot, truncate
from tests.helpers.engine import cpu_engine


class _ValidationCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        del args, kwargs
        self.batches += 1


def test_engine_train_with_no_validation_set_fits_and_tests(
    synthetic_source, synthetic_target, tmp_path, tiny_model_args
):
    """``anomalib train`` is ``Engine.train``: fit (no validation runs) then test on the target."""
    datamodule = AuxiliaryDataModule(
        root=synthetic_source,
        categories=["alpha"],
        val_split_ratio=0,
        target_dataset="MVTecAD",
        target_root=synthetic_target,
        train_batch_size=4,
        num_workers=0,
    )
    model = FAPrompt(**tiny_model_args)
    before = {name: value.clone() for name, value in model.named_parameters() if value.requires_grad}
    counter = _ValidationCounter()
    engine = cpu_engine(tmp_path / "results", max_epochs=1, callbacks=[counter])
    engine.train(model=model, datamodule=datamodule)
    assert counter.batches == 0
    assert engine.trainer.global_step == (N_GOOD + N_DEFECT) // 4  # batch 4, all of alpha's test split
    assert any(not torch.equal(value, before[name]) for name, value in model.named_parameters() if name in before)
    (table,) = (tmp_path / "results").rglob("per_category_results.csv")
    assert [line.split(",")[0] for line in table.read_text().splitlines()[1:]] == ["delta", "epsilon", "gamma", "mean"]
    assert table.parts[-4] == "synthetic_source_to_synthetic_target"
    assert len(list((tmp_path / "results").rglob("*.ckpt"))) == 1


def test_truncated_image_is_named_or_skipped_and_listed(tmp_path, caplog):
    root = small_dataset(tmp_path / "data", categories=("alpha",))
    damaged = root / "alpha" / "test" / "good" / "001.png"
    truncate(damaged)
    with pytest.raises(UnreadableFileError, match=r"001\.png.*truncated.*skip_unreadable"):
        read_image(damaged)

    for workers in (0, 1):
        strict = AuxiliaryDataModule(root=root, val_split_ratio=0, train_batch_size=1, num_workers=workers)
        strict.setup()
        with pytest.raises(UnreadableFileError, match=r"Cannot read '.*001\.png' \(OSError: image file is truncated"):
            list(strict.train_dataloader())

    datamodule = AuxiliaryDataModule(
        root=root, val_split_ratio=0.5, skip_unreadable=True, train_batch_size=1, eval_batch_size=1, num_workers=0
    )
    datamodule.setup()
    paths = [path for batch in datamodule.train_dataloader() for path in batch.image_path]
    held_out = [path for batch in datamodule.val_dataloader() for path in batch.image_path]
    assert [path for batch in datamodule.test_dataloader() for path in batch.image_path] == held_out
    assert datamodule.test_data.skip_unreadable
    paths += held_out
    assert sorted(paths) == sorted(str(path) for path in root.rglob("test/*/*.png") if path != damaged)
    assert list(datamodule.skipped_files) == [str(damaged)]
    assert "truncated" in datamodule.skipped_files[str(damaged)]
    datamodule.teardown("fit")
    (message,) = logged_warnings(caplog, "Skipped 1 unreadable file")
    assert message.endswith(f"{damaged} ({datamodule.skipped_files[str(damaged)]})")


def test_generator_refuses_a_non_empty_folder_unless_told_to_overwrite(tmp_path):
    root = small_dataset(tmp_path / "data", categories=("alpha", "beta"))
    own = root / "notes.txt"
    own.write_text("mine")
    before = (root / "alpha" / "test" / "good" / "000.png").read_bytes()
    with pytest.raises(FileExistsError, match=r"is not empty.*overwrite"):
        make_synthetic_dataset(root, categories=("alpha",), seed=5)
    assert (root / "alpha" / "test" / "good" / "000.png").read_bytes() == before

    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "anomalib_faprompt.data.synthetic", str(root)]
    refused = subprocess.run([*command, "--categories", "alpha"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].endswith("to replace its category folders.")
    assert str(root) in refused.stderr
    assert (root / "alpha" / "test" / "good" / "000.png").read_bytes() == before

    done = subprocess.run(
        [*command, "--categories", "alpha", "--seed", "5", "--n-defect", "1", "--overwrite"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
    assert (root / "alpha" / "test" / "good" / "000.png").read_bytes() != before
    assert len(list((root / "alpha" / "test" / "defect").iterdir())) == 1  # the folder was replaced, not merged
    assert own.read_text() == "mine"
    assert (root / "beta").is_dir()

    fresh = subprocess.run([*command[:-1], str(tmp_path / "new")], capture_output=True, text=True, check=False)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stderr == ""


def test_generator_command_run_twice_keeps_the_dataset(tmp_path):
    """README step 1 runs the generator on every run: a second run with the same arguments succeeds."""
    root = tmp_path / "synthetic_target"
    command = [sys.executable, "-m", "anomalib_faprompt.data.synthetic", str(root), "--categories", "gamma", "delta"]
    first = subprocess.run([*command, "--seed", "1"], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    before = snapshot(root)
    again = subprocess.run([*command, "--seed", "1"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"'{root}' already holds this synthetic dataset; kept\n"
    assert snapshot(root) == before
    other = subprocess.run([*command, "--seed", "2"], capture_output=True, text=True, check=False)
    assert other.returncode == 2
    assert "(seed 1, not 2)" in other.stderr.strip().splitlines()[-1]
    assert snapshot(root) == before
