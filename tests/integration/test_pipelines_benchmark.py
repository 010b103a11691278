"""The zero-shot benchmark: trained checkpoints as zero-shot models, ``anomalib benchmark`` end to end, report.

The committed ``configs/benchmark_zero_shot.yaml`` runs with tiny random backbones: FAPrompt and AnomalyCLIP
from checkpoints trained (a few steps) on one synthetic dataset, tested on the categories of another one in
VisA's layout; WinClip with its open_clip weights swapped for a small random CLIP, and AnomalyVFM with random
weights instead of its Hugging Face download, one transformer block and 64 x 64 input (in this test only).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import re
from collections import Counter
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
import yaml
from anomalib import LearningType
from anomalib.cli.cli import AnomalibCLI
from anomalib.data import Visa
from anomalib.models.image.anomalyvfm import lightning_model as vfm_lightning
from anomalib.models.image.anomalyvfm import torch_model as vfm_torch
from anomalib.models.image.anomalyvfm.components import radio
from jsonargparse import Namespace
from matplotlib.image import imread

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components import load_open_clip
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.errors import exit_with
from anomalib_faprompt.pipelines import benchmark, checks
from anomalib_faprompt.report.benchmark import main as report_main
from anomalib_faprompt.report.summary import summary_lines
from tests.helpers.commands import REPO
from tests.helpers.data import METRICS
from tests.helpers.engine import cpu_engine
from tests.helpers.models import MODEL_CLASSES, TINY_MODEL_ARGS, tiny_args

CONFIG = REPO / "configs" / "benchmark_zero_shot.yaml"
MODELS = {"FAPrompt": FAPrompt, "AnomalyCLIP": AnomalyCLIP}
ANOMALIB_MODELS = ["WinClip", "AnomalyVFM"]
TARGET_CATEGORIES = ["gamma", "delta"]
# WinClip's CLIP for the test: 240 px input (WinClip's fixed pre-processing), 5 x 5 patches of 48 px.
WINCLIP_TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "layers": 2, "width": 32, "patch_size": 48, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _learned(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.model.named_parameters() if value.requires_grad}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """FAPrompt and AnomalyCLIP trained for one epoch on an auxiliary synthetic dataset."""
    root = tmp_path_factory.mktemp("auxiliary")
    data = make_synthetic_dataset(root / "data", n_good=4, n_defect=4)
    paths = {}
    for name, model_class in MODELS.items():
        torch.manual_seed(0)
        datamodule = AuxiliaryDataModule(data, val_split_ratio=0.25, train_batch_size=4, num_workers=0)
        engine = cpu_engine(root / name, max_epochs=1)
        engine.fit(model_class(**tiny_args()), datamodule=datamodule)
        paths[name] = engine.trainer.checkpoint_callback.best_model_path
    return paths


@pytest.fixture(scope="module")
def target_root(tmp_path_factory) -> Path:
    """A synthetic target dataset in VisA's processed layout (``<root>/visa_pytorch/<category>``)."""
    root = tmp_path_factory.mktemp("target")
    categories = ("alpha", "beta", *TARGET_CATEGORIES)  # other textures than the auxiliary alpha and beta
    make_synthetic_dataset(root / "visa_pytorch", categories=categories, n_good=4, n_defect=4, seed=1)
    return root


def _target(root: Path, category: str) -> Visa:
    return Visa(root=root, category=category, train_batch_size=4, eval_batch_size=4, num_workers=0)


# --- weights: a trained checkpoint makes a zero-shot model -----------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_weights_load_the_learned_parameters_and_make_the_model_zero_shot(name, checkpoints):
    model_class = MODELS[name]
    fresh = model_class(**tiny_args())
    assert fresh.learning_type == LearningType.ONE_CLASS
    loaded = model_class(**tiny_args(), weights=checkpoints[name])
    assert loaded.learning_type == LearningType.ZERO_SHOT
    state = torch.load(checkpoints[name], map_location="cpu", weights_only=False)["state_dict"]
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[f"model.{key}"]), key  # a random CLIP travels with the checkpoint


def test_weights_errors_name_the_file_and_the_fix(checkpoints, tmp_path):
    args = tiny_args()
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt.*argument `weights`.*anomalib train"):
        AnomalyCLIP(**args, weights=str(tmp_path / "missing.ckpt"))
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.ckpt' \(argument `weights`\) is not a readable anomalib checkpoint"):
        AnomalyCLIP(**args, weights=str(text))
    with pytest.raises(ValueError, match=r"is a checkpoint of FAPrompt, not of AnomalyCLIP: use it with FAPrompt"):
        AnomalyCLIP(**args, weights=checkpoints["FAPrompt"])
    with pytest.raises(ValueError, match=r"is a checkpoint of AnomalyCLIP, not of FAPrompt: use it with AnomalyCLIP"):
        FAPrompt(**args, weights=checkpoints["AnomalyCLIP"])
    unnamed = torch.load(checkpoints["AnomalyCLIP"], weights_only=False)
    del unnamed["anomalib_faprompt_model"]  # e.g. written by other code: told apart by its parameters
    torch.save(unnamed, tmp_path / "unnamed.ckpt")
    with pytest.raises(ValueError, match=r"not a checkpoint of FAPrompt: it lacks \['prior_net"):
        FAPrompt(**args, weights=str(tmp_path / "unnamed.ckpt"))
    with pytest.raises(ValueError, match=r"trained with other hyperparameters: n_ctx=12 \(here: 5\)"):
        AnomalyCLIP(**args, n_ctx=5, weights=checkpoints["AnomalyCLIP"])
    checkpoint = torch.load(checkpoints["AnomalyCLIP"], weights_only=False)
    del checkpoint["hyper_parameters"]  # a checkpoint that does not say: its tensors' sizes still do
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(ValueError, match=r"other sizes \(normal_ctx is \(12, 32\) there, \(5, 32\) here"):
        AnomalyCLIP(**args, n_ctx=5, weights=str(bare))


def test_weights_with_pretrained_clip_load_the_prompts_and_check_the_clip(tmp_path):
    clip_file, other_file = tmp_path / "clip.pt", tmp_path / "other.pt"
    for seed, path in ((1, clip_file), (2, other_file)):
        torch.manual_seed(seed)
        torch.save(load_open_clip("tiny", None, TINY_MODEL_ARGS["backbone_config"]).state_dict(), path)
    args = {**tiny_args(), "pretrained": str(clip_file)}
    data = make_synthetic_dataset(tmp_path / "data", categories=("alpha",), n_good=2, n_defect=4)
    engine = cpu_engine(tmp_path, max_epochs=1)
    trained = AnomalyCLIP(**args)
    engine.fit(trained, datamodule=AuxiliaryDataModule(data, val_split_ratio=0.3, num_workers=0))
    path = engine.trainer.checkpoint_callback.best_model_path
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(key.startswith("model.backbone.clip.") for key in state)  # prompts only

    loaded = AnomalyCLIP(**args, weights=path)  # CLIP comes from the file
    assert _learned(loaded).keys() == _learned(trained).keys()
    for name, value in _learned(trained).items():
        assert torch.equal(_learned(loaded)[name], value), name
    with pytest.raises(ValueError, match="other CLIP weights"):
        AnomalyCLIP(**{**args, "pretrained": str(other_file)}, weights=path)


# --- anomalib benchmark end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_run(checkpoints, target_root, tmp_path_factory):
    """``anomalib benchmark --config`` on the committed config, with tiny backbones and the synthetic target."""
    workdir = tmp_path_factory.mktemp("benchmark")
    config = yaml.safe_load(CONFIG.read_text())
    models = config["benchmark"]["model"]["grid"]
    assert [model["class_path"] for model in models] == ["FAPrompt", "AnomalyCLIP", *ANOMALIB_MODELS]
    for model in models[:2]:
        model["init_args"] = {**tiny_args(), "weights": checkpoints[model["class_path"]]}
    data = config["benchmark"]["data"]
    assert data["class_path"] == "Visa"
    data["init_args"].update(
        root=str(target_root),
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        category={"grid": TARGET_CATEGORIES},
    )
    config["accelerator"] = "cpu"
    config_path = workdir / "benchmark_tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))

    created = []
    reads = Counter()

    def recording_get_model(model_config):
        model = get_model(model_config)
        created.append(model)
        return model

    def counting_load(file, *args, **kwargs):
        reads[str(file)] += 1
        return load(file, *args, **kwargs)

    def random_clip(*args, **kwargs):
        return open_clip.CLIP(**copy.deepcopy(WINCLIP_TINY_CLIP)).eval(), None, None

    get_model, load = benchmark.get_model, torch.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", counting_load)
        patch.chdir(workdir)  # anomalib writes runs/benchmark/<time>/results.csv and runs/pipeline.log here
        patch.setattr(benchmark, "get_model", recording_get_model)
        patch.setattr(open_clip, "create_model_and_transforms", random_clip)
        patch.setattr(vfm_torch, "_HAS_HF_DEPS", True)
        patch.setattr(vfm_torch, "hf_hub_download", lambda **kwargs: "offline", raising=False)
        patch.setattr(vfm_torch, "load_file", lambda path: {}, raising=False)
        patch.setattr(vfm_torch.AnomalyVFMModel, "load_state_dict", lambda self, state: None)  # random weights
        patch.setattr(radio, "VisionTransformer", functools.partial(radio.VisionTransformer, depth=1))
        patch.setattr(vfm_lightning, "DEFAULT_IMAGE_SIZE", 64)
        AnomalibCLI(["benchmark", "--config", str(config_path)])  # serial runner: jobs run in this process
    log = workdir / "runs" / "pipeline.log"
    results = sorted((workdir / "runs" / "benchmark").glob("*/results.csv"))
    failure = log.read_text() if log.exists() else "no pipeline log"
    assert len(results) == 1, failure
    rows = len(pd.read_csv(results[0])) if results[0].stat().st_size > 1 else 0  # all jobs failed: empty file
    assert rows == 4 * len(TARGET_CATEGORIES), failure
    return results[0], created, reads


def test_console_summary_fits_80_columns_and_shows_the_results(benchmark_run):
    results, *_ = benchmark_run
    frame = pd.read_csv(results)
    lines = summary_lines(frame)
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("category"))
    assert header.split() == ["category", "FAPrompt", "AnomalyCLIP", *ANOMALIB_MODELS]
    metric_start = lines.index("image_AUROC (%)")
    rows = {line.split()[0]: line.split()[1:] for line in lines[metric_start + 2 : metric_start + 5]}
    for column, model in enumerate(["FAPrompt", "AnomalyCLIP", *ANOMALIB_MODELS]):
        values = frame[frame["model.class_path"] == model].set_index("data.init_args.category")["image_AUROC"]
        for category in TARGET_CATEGORIES:
            assert rows[category][column] == f"{100 * values[category]:.1f}"
        assert rows["mean"][column] == f"{100 * values.mean():.1f}"


def test_the_benchmark_reads_each_weights_file_once(benchmark_run, checkpoints):
    """Its config check and the model of each of its jobs (one per category) use one read of the file."""
    _, created, reads = benchmark_run
    for name, path in checkpoints.items():
        assert sum(type(model).__name__ == name for model in created) == len(TARGET_CATEGORIES)
        assert reads[str(path)] == 1, name


def test_unusable_weights_are_named_before_any_job(checkpoints, tmp_path):
    """Unreadable, of the other model, or trained with other structural hyperparameters than the job's model."""
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    tiny = tiny_args()
    grid = [
        {"class_path": "FAPrompt", "init_args": {**tiny, "weights": checkpoints["FAPrompt"]}},
        {"class_path": "FAPrompt", "init_args": {**tiny, "weights": checkpoints["FAPrompt"], "n_prior_patches": 3}},
        {"class_path": "AnomalyCLIP", "init_args": {**tiny, "weights": checkpoints["FAPrompt"]}},
        {"class_path": "AnomalyCLIP", "init_args": {"weights": str(text)}},
        {"class_path": "FAPrompt", "init_args": {"weights": str(tmp_path / "missing.ckpt")}},  # missing_files' job
        {"class_path": "FAPrompt", "init_args": {"weights": checkpoints["FAPrompt"], "n_ctx": 6}},
    ]
    config = {
        "benchmark": {
            "seed": 1,
            "model": {"grid": grid},
            "data": {"class_path": "MVTecAD", "init_args": {"category": {"grid": ["a", "b"]}}},
        }
    }
    problems = checks.unusable_weights(config)
    assert len(problems) == 4  # once per model, file and configuration, not per category
    here = f"'{checkpoints['FAPrompt']}' (FAPrompt.weights) was trained with other hyperparameters: "
    assert problems[0].startswith(here + "n_prior_patches=10 (here: 3).")
    assert problems[1].startswith(f"'{checkpoints['FAPrompt']}' (AnomalyCLIP.weights) is a checkpoint of FAPrompt")
    assert problems[2].startswith(f"'{text}' (AnomalyCLIP.weights) is not a readable anomalib checkpoint")
    assert problems[3].startswith(here + f"backbone_config={TINY_MODEL_ARGS['backbone_config']!r} (here: None), ")
    assert "n_ctx=5 (here: 6)" in problems[3]
    with pytest.raises(ValueError, match="trained with other hyperparameters") as error:  # building the job's model
        FAPrompt(**grid[1]["init_args"])
    assert str(error.value) == problems[0].replace("(FAPrompt.weights)", "(argument `weights`)")
    config["benchmark"]["model"]["grid"] = grid[:1]
    assert checks.unusable_weights(config) == []


def test_unknown_arguments_and_unusable_data_are_named_before_any_job(target_root, tmp_path):
    def config(data_args: dict, model_args: dict | None = None) -> dict:
        models = [{"class_path": "FAPrompt", "init_args": model_args or {}}, {"class_path": "WinClip"}]
        data = {"class_path": "MVTecAD", "init_args": {"category": {"grid": ["gamma", "delta"]}, **data_args}}
        return {"benchmark": {"seed": 1, "model": {"grid": models}, "data": data}}

    synthetic = make_synthetic_dataset(tmp_path / "target", categories=("gamma", "delta"), n_good=1, n_defect=1)
    assert checks.unknown_arguments(config({"root": str(synthetic)})) == []
    assert checks.unusable_data(config({"root": str(synthetic)})) == []
    assert checks.unusable_data(config({"root": str(tmp_path / "MVTecAD")})) == []  # anomalib downloads there
    problems = checks.unknown_arguments(config({"root": str(synthetic), "rot": 1}, {"n_ctxx": 3}))
    assert problems[0].startswith("FAPrompt has no argument 'n_ctxx' (model.init_args); its arguments are ")
    assert problems[1].startswith("MVTecAD has no argument 'rot' (data.init_args); its arguments are root, ")
    assert len(problems) == 2  # once each, not once per category
    typo = tmp_path / "targt"
    (problem,) = checks.unusable_data(config({"root": str(typo)}))
    assert problem.startswith(f"Dataset folder '{typo}' (argument `data.init_args.root`) does not exist.")
    extra = config({"root": str(synthetic)})
    extra["benchmark"]["data"]["init_args"]["category"]["grid"].append("zeta")
    assert checks.unusable_data(extra) == [
        (
            f"MVTecAD category 'zeta' is not under '{synthetic}' (argument `data.init_args.root`), which holds delta, "
            "gamma, and it is not downloaded there (only folders named `MVTecAD` are downloaded into): place the "
            "category there, or leave it out."
        )
    ]
    (problem,) = checks.unusable_data(config({"root": str(synthetic / "gamma")}))
    assert f"pass its parent '{synthetic}' as `data.init_args.root`" in problem
    assert not typo.exists()


def test_a_benchmark_with_a_failed_job_writes_its_row_and_exits_with_1(tmp_path, monkeypatch, capsys):
    """The pipeline end to end with one job whose model cannot be built: results.csv, the summary, exit status 1."""
    root = make_synthetic_dataset(tmp_path / "MVTecAD", categories=("gamma",), n_good=1, n_defect=1)
    model = {"class_path": "FAPrompt", "init_args": {**tiny_args(), "image_size": 0}}
    data = {"class_path": "MVTecAD", "init_args": {"root": str(root), "category": "gamma"}}
    config = tmp_path / "benchmark.yaml"
    config.write_text(yaml.safe_dump({"accelerator": "cpu", "benchmark": {"seed": 1, "model": model, "data": data}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(benchmark.JobsFailedError) as failed:
        benchmark.Benchmark().run(Namespace(config=str(config)))
    reason = "ValueError: image_size=0 must be an integer of at least 1."
    assert str(failed.value) == (
        f"benchmark: 1 of 1 jobs failed or did not run: FAPrompt/gamma ({reason}) (details in runs/pipeline.log)"
    )
    (results,) = (tmp_path / "runs" / "benchmark").glob("*/results.csv")
    row = pd.read_csv(results).iloc[0]
    assert (row["status"], row["error"], row["data.init_args.category"]) == ("no result", reason, "gamma")
    assert f"All metrics: {results.relative_to(tmp_path)}; report: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        exit_with(failed.value, "anomalib benchmark")
    assert exited.value.code == 1


def test_benchmark_writes_a_row_per_model_and_category(benchmark_run):
    results, *_ = benchmark_run
    frame = pd.read_csv(results)
    assert sorted(zip(frame["model.class_path"], frame["data.init_args.category"], strict=True)) == sorted(
        (model, category) for model in [*MODELS, *ANOMALIB_MODELS] for category in TARGET_CATEGORIES
    )
    ours = frame[frame["model.class_path"].isin(list(MODELS))]
    others = frame[frame["model.class_path"].isin(ANOMALIB_MODELS)]
    for metric in METRICS:
        assert ours[metric].between(0.0, 1.0).all(), metric
    for metric in ("image_AUPR", "pixel_AUPRO"):  # anomalib's default evaluator has no such metric
        assert others[metric].isna().all(), metric
    for metric in ("image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score"):
        assert others[metric].between(0.0, 1.0).all(), metric
    assert others["model.init_args.weights"].isna().all()
    assert "status" not in frame  # every job has its result: no gap row


def test_pipeline_log_has_each_record_once_with_time_logger_and_level(benchmark_run):
    results, *_ = benchmark_run
    log = results.parents[2] / "pipeline.log"  # runs/pipeline.log
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - [\w.]+ - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - ")
    records = [line for line in log.read_text().splitlines() if record.match(line)]
    jobs = (len(MODELS) + len(ANOMALIB_MODELS)) * len(TARGET_CATEGORIES)
    assert sum("Seed set to" in line for line in records) == jobs  # one seed per job
    repeated = [first for first, second in itertools.pairwise(records) if first == second]
    assert not repeated, repeated[:3]
    assert "trains nothing" not in log.read_text()  # a benchmark fits its zero-shot models on purpose
    handlers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    files = [h for named in handlers if isinstance(named, logging.Logger) for h in named.handlers]
    assert not [h for h in files if isinstance(h, logging.FileHandler) and h.baseFilename == str(log.resolve())]


def test_benchmark_never_trains_the_prompt_models(benchmark_run, checkpoints):
    _, created, _ = benchmark_run
    ours = [model for model in created if isinstance(model, MODEL_CLASSES)]
    assert len(ours) == 2 * len(TARGET_CATEGORIES)
    for model in ours:
        expected = _learned(type(model)(**tiny_args(), weights=checkpoints[model.name]))
        for name, value in _learned(model).items():
            assert torch.equal(value, expected[name]), f"{model.name}.{name} changed during the benchmark"


def test_benchmark_results_equal_a_plain_test_of_the_loaded_model(benchmark_run, checkpoints, target_root, tmp_path):
    results, *_ = benchmark_run
    frame = pd.read_csv(results)
    for (name, model_class), category in zip(MODELS.items(), TARGET_CATEGORIES, strict=True):
        model = model_class(**tiny_args(), weights=checkpoints[name])
        engine = cpu_engine(tmp_path)
        plain = engine.test(model, datamodule=_target(target_root, category), verbose=False)[0]
        row = frame[(frame["model.class_path"] == name) & (frame["data.init_args.category"] == category)].iloc[0]
        for metric in METRICS:
            assert math.isclose(row[metric], plain[metric], abs_tol=1e-6), (name, category, metric)


def test_report_of_the_benchmark_results(benchmark_run, tmp_path):
    results, *_ = benchmark_run
    report_main([str(results), "--output", str(tmp_path)])
    markdown = (tmp_path / "comparison.md").read_text()
    models = [f"| {model} |" for model in [*MODELS, *ANOMALIB_MODELS]]
    for text in ["## image_AUROC", "## pixel_AUPRO", "gamma", *models]:
        assert text in markdown
    # Every metric at least two models report gets a chart: ours, and the F1 scores of WinClip and AnomalyVFM.
    for metric in [*METRICS, "image_F1Score", "pixel_F1Score"]:
        image = imread(tmp_path / f"{metric}.png")
        assert image.ndim == 3
        assert image.shape[0] > 300
        assert image.shape[1] > 500
