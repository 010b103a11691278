"""The zero-shot benchmark's rows, summary and failed jobs, without running a job to its end.

tests/integration/test_pipelines_benchmark.py runs the benchmark end to end.
"""

from __future__ import annotations

import pandas as pd
import yaml
from anomalib.pipelines import Benchmark as AnomalibBenchmark
from jsonargparse import Namespace

from anomalib_faprompt.pipelines import benchmark
from anomalib_faprompt.report.summary import summary_lines
from tests.helpers.models import tiny_args


def test_a_failed_job_gets_a_row_saying_why_and_marks_the_means(tmp_path):
    """A job whose data cannot be read: its settings, status "no result" and its error; the mean says so."""
    config = {
        "accelerator": "cpu",
        "benchmark": {
            "seed": 1,
            "model": {"class_path": "FAPrompt", "init_args": tiny_args()},
            "data": {"class_path": "MVTecAD", "init_args": {"root": str(tmp_path / "MVTecAD"), "category": "zeta"}},
        },
    }
    (job,) = benchmark.ZeroShotBenchmarkJobGenerator("cpu").generate_jobs(config["benchmark"], None)
    job.datamodule.prepare_data = lambda: (_ for _ in ()).throw(FileNotFoundError("no folder zeta"))
    failed = job.run()
    assert failed["status"] == "no result"
    assert failed["error"] == "FileNotFoundError: no folder zeta"
    assert failed["model.class_path"] == "FAPrompt"
    ran = {**failed, "data.init_args.category": "gamma", "image_AUROC": 0.9, "pixel_AUROC": 0.8}
    del ran["status"], ran["error"]
    frame = benchmark.collect([ran, failed])
    assert frame["data.init_args.category"].tolist() == ["gamma", "zeta"]
    assert pd.isna(frame["status"][0])
    assert pd.isna(frame["image_AUROC"][1])
    lines = summary_lines(frame)
    assert [line.split() for line in lines[:5]] == [
        ["image_AUROC", "(%)"],
        ["category", "FAPrompt"],
        ["gamma", "90.0"],
        ["zeta", "-"],
        ["mean", "90.0*"],
    ]
    config["benchmark"]["data"]["init_args"]["category"] = {"grid": ["gamma", "zeta"]}
    assert benchmark.failed_jobs(config, frame) == ["FAPrompt/zeta (FileNotFoundError: no folder zeta)"]


def test_a_model_that_cannot_be_built_gets_a_row_saying_why():
    config = {
        "seed": 1,
        "model": {"class_path": "FAPrompt", "init_args": {"image_size": 0}},
        "data": {"class_path": "MVTecAD"},
    }
    (job,) = benchmark.ZeroShotBenchmarkJobGenerator("cpu").generate_jobs(config, None)
    row = job.run()
    assert row["status"] == "no result"
    assert row["error"] == "ValueError: image_size=0 must be an integer of at least 1."


def _wrapped(cause: Exception) -> Exception:
    """``cause`` as anomalib wraps it: raised from another error."""
    try:
        try:
            raise cause
        except Exception as error:
            msg = "Error occurred while executing run"
            raise RuntimeError(msg) from error
    except RuntimeError as wrapper:
        return wrapper


def test_the_reason_of_a_wrapped_error_is_its_cause():
    assert benchmark._reason(_wrapped(FileNotFoundError("no folder zeta"))) == "FileNotFoundError: no folder zeta"


def test_summary_has_a_column_per_configuration_of_one_model_class():
    rows = [
        {"model.class_path": "FAPrompt", "model.init_args.weights": weights, "data.init_args.category": "a",
         "image_AUROC": value}
        for weights, value in (("one.ckpt", 0.9), ("two.ckpt", 0.5))
    ]  # fmt: skip
    lines = summary_lines(pd.DataFrame(rows))
    assert "FAPrompt (weights=one.ckpt)" in lines[1]
    assert "FAPrompt (weights=two.ckpt)" in lines[1]
    assert lines[2].split() == ["a", "90.0", "50.0"]


def test_summary_shows_the_mean_of_repeated_jobs_and_names_them():
    rows = [
        {"model.class_path": "FAPrompt", "data.init_args.category": category, "seed": seed, "image_AUROC": value}
        for category, seed, value in (("a", 1, 0.9), ("a", 2, 0.5), ("b", 1, 0.6))
    ]
    lines = summary_lines(pd.DataFrame(rows))
    assert lines[2].split() == ["a", "70.0"]  # (0.9 + 0.5) / 2, not the first job's 90.0
    assert lines[3].split() == ["b", "60.0"]
    assert lines[4].split() == ["mean", "65.0"]
    assert "image_AUROC: FAPrompt, a: mean of 2 runs (seeds 1, 2)." in lines


def test_a_config_of_anomalib_models_alone_runs_anomalib_pipeline(tmp_path, monkeypatch):
    config = tmp_path / "padim.yaml"
    config.write_text(yaml.safe_dump({"accelerator": "cpu", "benchmark": {"seed": 1, "model": {"class_path": "Padim"},
                                      "data": {"class_path": "MVTecAD"}}}))  # fmt: skip
    ran = []
    monkeypatch.setattr(AnomalibBenchmark, "run", lambda self, args: ran.append((type(self), args)))
    args = Namespace(config=str(config))
    benchmark.Benchmark().run(args)
    assert ran == [(AnomalibBenchmark, args)]


def test_failed_jobs_are_named():
    config = {
        "benchmark": {
            "seed": 1,
            "model": {"grid": [{"class_path": "FAPrompt"}, {"class_path": "WinClip"}]},
            "data": {"class_path": "Visa", "init_args": {"category": {"grid": ["a", "b"]}}},
        }
    }
    collected = pd.DataFrame(
        {
            "model.class_path": ["FAPrompt", "FAPrompt", "WinClip", "WinClip"],
            "data.init_args.category": ["a", "b", "a", "b"],
            "status": [None, None, None, "no result"],
            "error": [None, None, None, "ValueError: bad"],
        }
    )
    assert benchmark.failed_jobs(config, collected) == ["WinClip/b (ValueError: bad)"]
    assert benchmark.failed_jobs(config, collected[:3].drop(columns=["status", "error"])) == ["WinClip/b (did not run)"]
    assert benchmark.failed_jobs(config, None) == [
        f"{model}/{category} (did not run)" for model in ("FAPrompt", "WinClip") for category in "ab"
    ]
