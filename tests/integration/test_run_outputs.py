"""What a run leaves behind: heat-maps per category, the scores of `predict`, and no training run overwritten."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from lightning.pytorch import Callback

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule
from tests.helpers.commands import anomalib_cli
from tests.helpers.data import camera_photo, logged_warnings
from tests.helpers.engine import cpu_engine
from tests.helpers.models import as_if_trained, tiny_args
from tests.helpers.panels import below_title, read_panels, smooth_photo, source_panel

TARGETS = ("gamma", "delta")  # two of the target's categories: their images share their file names (000.png, ...)


@pytest.fixture
def source(synthetic_source) -> Path:
    return synthetic_source


@pytest.fixture
def target(synthetic_target) -> Path:
    return synthetic_target


@pytest.fixture
def trained(faprompt_checkpoint) -> Path:
    return faprompt_checkpoint


def _datamodule(source: Path, target: Path, **kwargs) -> AuxiliaryDataModule:
    return AuxiliaryDataModule(
        root=source,
        val_split_ratio=0.25,
        target_dataset="MVTecAD",
        target_root=target,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        **{"target_categories": list(TARGETS), **kwargs},
    )


def _target_images(target: Path, categories=TARGETS) -> dict[str, Path]:
    """``<category>/<label folder>/<file>`` -> source image, for every test image of the target categories."""
    return {
        f"{category}/{path.parent.name}/{path.name}": path
        for category in categories
        for path in sorted((target / category / "test").glob("*/*.png"))
    }


def _files(folder: Path) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


def _run_dir(results: Path) -> Path:
    """``<results>/FAPrompt/<source>_to_<target>/all``: the synthetic data sets are named after their folders."""
    (run,) = (results / "FAPrompt").glob("*_to_*")
    return run / "all"


def test_zero_shot_test_writes_one_heat_map_per_image_under_its_category(source, target, tmp_path):
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args())  # the default visualiser
    cpu_engine(tmp_path).test(model, datamodule=_datamodule(source, target))

    images = _run_dir(tmp_path) / "v0" / "images"
    expected = _target_images(target)
    written = _files(images)
    assert sorted(written) == sorted(expected)  # 12 files for 12 images: gamma/good/000.png, delta/good/000.png, ...
    for name, output in written.items():
        panels = read_panels(output)
        assert len(panels) == 4, name
        image = below_title(panels[0])
        assert np.array_equal(image, below_title(source_panel(expected[name]))), name  # its own image
        other = expected[name.replace("gamma", "delta") if name.startswith("gamma") else name.replace("delta", "gamma")]
        assert np.abs(image - below_title(source_panel(other))).mean() > 5.0, name  # not the other category's
        overlay = below_title(panels[2])  # the anomaly map blended over the image
        assert np.abs(overlay - image).mean() > 5.0, name
        assert np.corrcoef(overlay.mean(axis=2).ravel(), image.mean(axis=2).ravel())[0, 1] > 0.3, name


def test_plain_datamodule_heat_maps_go_under_its_category(target, tmp_path):
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args())
    datamodule = MVTecAD(root=target, category="delta", eval_batch_size=4, num_workers=0)
    cpu_engine(tmp_path).test(model, datamodule=datamodule)

    written = _files(tmp_path / "FAPrompt" / "MVTecAD" / "delta" / "v0" / "images")
    assert sorted(written) == sorted(_target_images(target, ("delta",)))


def _read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows
    assert list(rows[0]) == ["file", "score", "label"]
    return rows


@pytest.mark.parametrize("visualizer", [False, True])
def test_predict_with_weights_writes_the_scores(target, trained, tmp_path, caplog, visualizer):
    model = FAPrompt(**tiny_args(weights=str(trained)), visualizer=visualizer)
    folder = target / "gamma" / "test"
    with caplog.at_level("INFO"):
        engine = cpu_engine(tmp_path)
        predictions = engine.predict(model, data_path=folder)  # zero-shot: no validation data needed

    run = tmp_path / "FAPrompt" / "v0"
    rows = _read_scores(run / "predictions.csv")
    returned = {
        str(path): (float(score), bool(label))
        for batch in predictions
        for path, score, label in zip(
            batch.image_path, batch.pred_score.flatten(), batch.pred_label.flatten(), strict=True
        )
    }
    assert {row["file"]: (float(row["score"]), row["label"] == "1") for row in rows} == returned
    assert sorted(returned) == sorted(str(path) for path in folder.glob("*/*.png"))
    assert all(label == (score > 0.5) for score, label in returned.values())
    assert str(run / "predictions.csv") in caplog.text
    assert "ckpt_path is not provided" not in caplog.text
    if not visualizer:  # a second predict on the same engine writes into the same folder, replacing nothing
        engine.predict(model, data_path=folder)
        assert (run / "predictions_1.csv").read_bytes() == (run / "predictions.csv").read_bytes()
    images = _files(run / "images") if (run / "images").exists() else {}
    assert sorted(images) == (sorted(f"{p.parent.name}/{p.name}" for p in folder.glob("*/*.png")) if visualizer else [])


def test_engine_test_from_a_checkpoint_in_a_copied_folder_leaves_the_original_alone(source, target, trained, tmp_path):
    original = trained.parents[2].parent  # <root>/FAPrompt/synthetic_source_to_synthetic_target/all
    assert os.readlink(original / "latest") == trained.parents[2].name  # a relative link: latest -> v0
    before = _digests(original)
    copied = tmp_path / "copy"
    shutil.copytree(trained.parents[6], copied, symlinks=True)
    copied_ckpt = copied / trained.relative_to(trained.parents[6])

    torch.manual_seed(0)
    model = FAPrompt(**tiny_args())
    cpu_engine(copied).test(model, datamodule=_datamodule(source, target), ckpt_path=copied_ckpt)

    assert _digests(original) == before
    tested = copied_ckpt.parents[3] / "v1"
    assert (tested / "per_category_results.csv").is_file()
    assert os.readlink(copied_ckpt.parents[3] / "latest") == "v0"


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file (not following links), and the target of every link."""
    result = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            result[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            result[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


# --- the `anomalib` command line in a subprocess ---------------------------------------------------------------------


def _config(path: Path, **sections) -> Path:
    model = {"class_path": "FAPrompt", "init_args": tiny_args()}
    model["init_args"].update(sections.pop("model_args", {}))
    config = {
        "seed_everything": 111,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False},
        "model": model,
        **sections,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_failed_fit_leaves_latest_on_the_last_run_that_ended(source, target, tmp_path, monkeypatch):
    """``latest`` names the last training that ended: a failing fit that wrote nothing leaves no folder, nor link."""
    results = tmp_path / "results"

    def fit() -> None:
        torch.manual_seed(0)
        engine = cpu_engine(results, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
        engine.fit(FAPrompt(**tiny_args()), datamodule=_datamodule(source, target))

    def fail(*_args, **_kwargs):
        msg = "a training step that fails"
        raise RuntimeError(msg)

    with monkeypatch.context() as patch:
        patch.setattr(FAPrompt, "training_step", fail)
        with pytest.raises(RuntimeError, match="a training step that fails"):
            fit()
    assert not results.exists()  # no run has ended: no folder, no link, not even the results folder it made

    fit()
    runs = _run_dir(results)
    assert os.readlink(runs / "latest") == "v0"
    monkeypatch.setattr(FAPrompt, "training_step", fail)
    with pytest.raises(RuntimeError, match="a training step that fails"):
        fit()
    assert sorted(path.name for path in runs.iterdir()) == ["latest", "v0"]
    assert os.readlink(runs / "latest") == "v0"
    assert (runs / "latest" / "weights" / "lightning" / "model.ckpt").is_file()


class _CtrlC(Callback):
    """Ctrl-C at the start of the second test batch: the ``KeyboardInterrupt`` that Lightning receives then."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 1:
            raise KeyboardInterrupt


def test_a_run_stopped_by_ctrl_c_keeps_its_folder_marked_incomplete(source, target, trained, tmp_path):
    data = _datamodule(source, target, target_categories=["gamma"])  # 4 images a batch
    engine = cpu_engine(tmp_path / "results", callbacks=[_CtrlC()])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exited:  # what Lightning makes of a KeyboardInterrupt, as on the CLI
            engine.test(FAPrompt(**tiny_args()), datamodule=data, ckpt_path=trained)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C from then on
    assert exited.value.code == 1
    run = _run_dir(tmp_path / "results") / "v0"
    assert (run / "INCOMPLETE").read_text() == (
        "`test` stopped by Ctrl-C (KeyboardInterrupt): the files in this folder are partial.\n"
    )
    assert len(list((run / "images" / "gamma").rglob("*.png"))) == 4  # the first batch's heat-maps are kept
    assert not list(run.rglob("per_category_results.*"))


def test_testing_prompts_that_were_never_learned_warns(source, target, trained, tmp_path, caplog):
    untrained = "with prompts that were never trained"
    data = AuxiliaryDataModule(
        root=source, target_dataset="MVTecAD", target_root=target, target_categories=["gamma"], num_workers=0
    )
    torch.manual_seed(0)
    cpu_engine(tmp_path / "fresh").test(FAPrompt(**tiny_args()), datamodule=data)
    (message,) = logged_warnings(caplog, untrained)
    assert message.startswith(f"FAPrompt is tested {untrained}")
    assert "--ckpt_path" in message
    caplog.clear()
    cpu_engine(tmp_path / "predict").predict(FAPrompt(**tiny_args()), data_path=target / "gamma" / "test" / "good")
    (message,) = logged_warnings(caplog, untrained)
    assert message.startswith(f"FAPrompt is run by `predict` {untrained}")
    assert "its scores and maps are those of a random start" in message
    caplog.clear()
    cpu_engine(tmp_path / "checkpoint").test(FAPrompt(**tiny_args()), datamodule=data, ckpt_path=trained)
    cpu_engine(tmp_path / "loaded").test(FAPrompt.load_from_checkpoint(trained), datamodule=data)
    cpu_engine(tmp_path / "weights").test(FAPrompt(**tiny_args(weights=str(trained))), datamodule=data)
    engine = cpu_engine(tmp_path / "trained", max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    model = FAPrompt(**tiny_args())
    engine.fit(model, datamodule=_datamodule(source, target))
    engine.test(model, datamodule=data)
    assert not logged_warnings(caplog, untrained)


def test_unreadable_files_left_out_are_noted_in_their_categorys_row(source, target, trained, tmp_path, caplog):
    copy = tmp_path / "target"
    for category in ("gamma", "delta"):
        shutil.copytree(target / category, copy / category)
    damaged = copy / "gamma" / "test" / "defect" / "000.png"
    damaged.write_bytes(damaged.read_bytes()[:300])
    data = AuxiliaryDataModule(
        root=source,
        target_dataset="MVTecAD",
        target_root=copy,
        skip_unreadable=True,
        eval_batch_size=2,
        num_workers=1,
    )
    engine = cpu_engine(tmp_path / "results")
    engine.test(FAPrompt(**tiny_args()), datamodule=data, ckpt_path=trained)
    assert len(logged_warnings(caplog, "Skipped 1 unreadable file")) == 1
    (table,) = (tmp_path / "results").rglob("per_category_results.md")
    notes = [line for line in table.read_text().splitlines() if "unreadable" in line]
    assert len(notes) == 1
    assert "gamma: 1 unreadable file(s) left out (skip_unreadable)." in notes[0]


def test_cli_test_from_a_checkpoint_never_replaces_the_training_run(source, target, tmp_path):
    data = {
        "class_path": "anomalib_faprompt.data.AuxiliaryDataModule",
        "init_args": {
            "root": str(source),
            "val_split_ratio": 0.25,
            "target_dataset": "MVTecAD",
            "target_root": str(target),
            "train_batch_size": 4,
            "eval_batch_size": 4,
            "num_workers": 0,
        },
    }
    config = _config(tmp_path / "config.yaml", data=data)
    results = tmp_path / "results"
    anomalib_cli("train", "--config", config, "--default_root_dir", results, cwd=tmp_path)
    runs = _run_dir(results)
    training = _digests(runs / "v0")
    assert {"config.yaml", "per_category_results.csv", "weights/lightning/model.ckpt"} <= set(training)
    assert os.readlink(runs / "latest") == "v0"

    checkpoint = runs / "latest" / "weights" / "lightning" / "model.ckpt"
    output = anomalib_cli(
        "test",
        "--config",
        str(config),
        "--default_root_dir",
        str(results),
        "--ckpt_path",
        str(checkpoint),
        "--data.target_categories",
        "[gamma]",
        cwd=tmp_path,
    ).output

    assert _digests(runs / "v0") == training  # byte for byte, the same files
    assert os.readlink(runs / "latest") == "v0"
    with (runs / "v1" / "per_category_results.csv").open() as file:
        assert [row["category"] for row in csv.DictReader(file)] == ["gamma", "mean"]
    assert (runs / "v1" / "config.yaml").is_file()
    assert str(runs.resolve() / "v1") in output


def test_cli_predict_with_model_weights(target, trained, tmp_path):
    config = _config(tmp_path / "config.yaml", model_args={"weights": str(trained)})
    folder = target / "delta" / "test"
    output = anomalib_cli(
        "predict", "--config", config, "--data", folder, "--default_root_dir", tmp_path / "results", cwd=tmp_path
    ).output

    assert "ckpt_path is not provided" not in output
    assert "val_dataloader" not in output
    run = tmp_path / "results" / "FAPrompt" / "v0"
    assert str(run / "predictions.csv") in output
    rows = _read_scores(run / "predictions.csv")
    assert sorted(row["file"] for row in rows) == sorted(str(path) for path in folder.glob("*/*.png"))
    model = FAPrompt(**tiny_args(weights=str(trained))).eval()
    for row in rows:  # the scores of the model itself, on the pre-processed image
        image = model.pre_processor.transform(read_image(row["file"], as_tensor=True)[None])
        with torch.no_grad():
            score = float(model.model(image).pred_score)
        assert float(row["score"]) == pytest.approx(score, abs=1e-5), row
        assert row["label"] == str(int(score > 0.5))
    assert sorted(_files(run / "images")) == sorted(f"{p.parent.name}/{p.name}" for p in folder.glob("*/*.png"))


def test_cli_predict_names_a_damaged_image(target, trained, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(target / "delta" / "test" / "good", folder)
    damaged = folder / "damaged.png"
    damaged.write_bytes((folder / "000.png").read_bytes()[:300])
    config = _config(tmp_path / "config.yaml", model_args={"weights": str(trained)})
    output = anomalib_cli(
        "predict",
        "--config",
        config,
        "--data",
        folder,
        "--default_root_dir",
        tmp_path / "results",
        cwd=tmp_path,
        returncode=2,
    ).output

    *_, what, error = output.rstrip().splitlines()
    assert what == "anomalib predict:"
    assert error.startswith(f"UnreadableFileError: Cannot read '{damaged}' (OSError: ")
    assert error.endswith("Replace or remove the file, then predict again.")
    assert "Traceback" not in output
    # The scores written before the error are kept, in a file whose name says that it is incomplete.
    assert not list((tmp_path / "results").rglob("predictions.csv"))
    (incomplete,) = (tmp_path / "results").rglob("predictions.incomplete.csv")
    rows = incomplete.read_text().splitlines()
    assert rows[0] == "file,score,label"
    assert len(rows) > 1  # the images of the batches before the damaged one
    assert all(Path(row.split(",")[0]).parent == folder and "damaged" not in row for row in rows[1:])
    assert f"their scores are in {incomplete}" in output
    assert (incomplete.parent / "INCOMPLETE").read_text() == (  # the run's folder says so too
        f"`predict` stopped by an error ({error}): the files in this folder are partial.\n"
    )


def _cli_error(subcommand: str, config: Path, tmp_path: Path, *args: str) -> tuple[str, str]:
    """Run ``anomalib <subcommand> --config <config> <args>``, which must fail in one last line; that line and all."""
    command = [subcommand, "--config", str(config), *args, "--default_root_dir", str(tmp_path / "results")]
    output = anomalib_cli(*command, cwd=tmp_path, returncode=2).output
    *_, what, error = output.rstrip().splitlines()
    assert what == f"anomalib {subcommand}:"
    assert "Traceback" not in output
    return error, output


def test_cli_errors_about_a_checkpoint_or_the_data_are_one_last_line(source, target, trained, tmp_path):
    """Errors raised while the command runs (not while it builds the model) name the file or argument, briefly; the
    refused runs leave nothing in the results folder."""
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(trained.read_bytes()[:5000])
    folder = target / "delta" / "test" / "good"
    config = _config(tmp_path / "config.yaml")
    error, _ = _cli_error("predict", config, tmp_path, "--ckpt_path", str(damaged), "--data", str(folder))
    assert error.startswith(f"InvalidInputError: '{damaged}' (`ckpt_path`) is not a readable anomalib checkpoint")

    data = {
        "class_path": "anomalib_faprompt.data.AuxiliaryDataModule",
        "init_args": {"root": str(source), "target_dataset": "MVTecAD", "target_root": str(target), "num_workers": 0},
    }
    auxiliary = _config(tmp_path / "data.yaml", data=data)
    categories = ["--data.target_categories", "[gamma,nosuch]"]
    error, _ = _cli_error("test", auxiliary, tmp_path, "--ckpt_path", str(trained), *categories)
    assert error.startswith("InvalidInputError: Target categories ['nosuch'] (argument `target_categories`)")
    assert error.endswith("which has ['delta', 'epsilon', 'gamma'].")

    config = _config(tmp_path / "mvtec.yaml", data={"class_path": "MVTecAD", "init_args": {"root": str(target)}})
    error, output = _cli_error("test", config, tmp_path, "--ckpt_path", str(trained), "--data.category", "zeta")
    assert error == (
        f"MissingInputError: MVTecAD category 'zeta' is not under '{target}' (argument `data.init_args.root`), which "
        "holds delta, epsilon, gamma, and it is not downloaded there (only folders named `MVTecAD` are downloaded "
        "into): place the category there, or leave it out."
    )
    assert "Downloading" not in output

    error, _ = _cli_error("test", auxiliary, tmp_path, "--ckpt_path", str(trained), "--model.n_ctx", "6")
    assert error.startswith(f"InvalidInputError: '{trained}' was trained with other hyperparameters: n_ctx=5 (here: 6)")
    assert not (tmp_path / "results").exists()  # refused runs leave no folder (not even one with a config.yaml)


def test_a_second_test_or_predict_on_one_engine_replaces_nothing(source, target, trained, tmp_path, capsys):
    """Python: ``engine.test`` twice, then ``engine.predict`` of a folder, on one Engine (one run folder)."""
    engine = cpu_engine(tmp_path / "results")
    model = FAPrompt(**tiny_args(weights=str(trained)))
    engine.test(model, datamodule=_datamodule(source, target))
    run = Path(engine.trainer.default_root_dir)
    first = _digests(run)
    assert str(trained) in capsys.readouterr().out.splitlines()[-1]  # "...; weights: <file>", not "no checkpoint"
    engine.test(model, datamodule=_datamodule(source, target, target_categories=["delta"]))
    assert {name: digest for name, digest in _digests(run).items() if name in first} == first
    with (run / "per_category_results_1.csv").open() as file:
        assert [row["category"] for row in csv.DictReader(file)] == ["delta", "mean"]
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith(f"Results in {run.resolve()}: per_category_results_1.csv, per_category_results_1.md; weights: ")
    )
    folder = target / "gamma" / "test" / "defect"
    engine.predict(model, data_path=folder)
    assert {name: digest for name, digest in _digests(run).items() if name in first} == first
    written = {path.relative_to(run / "images") for path in (run / "images").rglob("*.png")} - {
        Path(name).relative_to("images") for name in first if name.startswith("images/")
    }
    assert written == {Path(path.name) for path in folder.glob("*.png")}  # no category folder: not under delta/


def test_fit_of_a_model_with_trained_weights_says_it_trains_nothing(source, target, trained, tmp_path, caplog):
    model = FAPrompt(**tiny_args(weights=str(trained)))
    engine = cpu_engine(tmp_path / "results", max_epochs=1)
    with caplog.at_level("WARNING", logger="anomalib_faprompt"):
        engine.fit(model, datamodule=_datamodule(source, target))
    assert f"FAPrompt was built with trained `weights` ({trained}), so it is a zero-shot model and `fit` trains " in (
        caplog.text
    )


def test_a_photo_tagged_with_its_orientation_is_scored_and_drawn_upright(tmp_path):
    """``predict`` on a camera's photos, each beside its upright copy: the same score and map, an upright heat-map."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for orientation in (6, 8):
        camera_photo(folder, f"turned{orientation}", smooth_photo(rng), orientation)
    torch.manual_seed(0)
    model = as_if_trained(FAPrompt(**tiny_args()))
    predictions = cpu_engine(tmp_path / "results").predict(model, data_path=folder)

    items = {Path(item.image_path).name: item for batch in predictions for item in batch}
    images = tmp_path / "results" / "FAPrompt" / "v0" / "images"
    for orientation in (6, 8):
        photo, upright = items[f"turned{orientation}.jpg"], items[f"turned{orientation}_upright.png"]
        torch.testing.assert_close(photo.pred_score, upright.pred_score, rtol=0, atol=1e-6)
        torch.testing.assert_close(photo.anomaly_map, upright.anomaly_map, rtol=0, atol=1e-6)
        visualizer = model.visualizer
        drawn_now = [np.asarray(visualizer.visualize(item), dtype=np.int16) for item in (photo, upright)]
        assert np.abs(drawn_now[0] - drawn_now[1]).max() <= 1  # float pixels back to 8 bits: rounding only
        drawn = read_panels(images / f"turned{orientation}.jpg")  # written as JPEG: a little compression noise
        expected = read_panels(images / f"turned{orientation}_upright.png")
        assert len(drawn) == len(expected) >= 2
        for panel, upright_panel in zip(drawn, expected, strict=True):
            assert np.abs(below_title(panel) - below_title(upright_panel)).mean() < 5.0, orientation
        sideways = source_panel(folder / f"turned{orientation}.jpg")  # anomalib's drawing: the pixels as stored
        assert np.abs(below_title(drawn[0]) - below_title(sideways)).mean() > 20.0, orientation
