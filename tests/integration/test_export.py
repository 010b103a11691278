"""Export through anomalib's ``Engine.export`` to ONNX and OpenVINO: parity with the torch module.

A tiny FAPrompt (and a tiny AnomalyCLIP) is trained for two steps and checkpointed; the checkpoint is exported (whole
AnomalibModule: pre-processor, model, post-processor) and the exported graphs are run with ONNX
Runtime and OpenVINO on the same images as the torch module's ``forward``: in f32 within 1e-4, and at OpenVINO's
default CPU precision and under a bf16 hint (bf16 on CPUs with bf16 instructions) within 1e-2.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from anomalib.data import InferenceBatch  # noqa: E402
from anomalib.data.utils import read_image  # noqa: E402
from anomalib.deploy import ExportType, OpenVINOInferencer  # noqa: E402

from anomalib_faprompt import FAPrompt  # noqa: E402
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset  # noqa: E402
from anomalib_faprompt.deploy import keep_f32, openvino_config, remove_f32_marks  # noqa: E402
from anomalib_faprompt.models.base import PromptLearningModule  # noqa: E402
from tests.helpers.commands import anomalib_cli  # noqa: E402
from tests.helpers.data import IMAGE_SIZES  # noqa: E402
from tests.helpers.engine import cpu_engine  # noqa: E402
from tests.helpers.models import MODEL_CLASSES, tiny_args  # noqa: E402

FP32_TOLERANCE = 1e-4
LOW_PRECISION_TOLERANCE = 1e-2
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
BF16 = {"INFERENCE_PRECISION_HINT": "bf16"}


@pytest.fixture(scope="module", params=MODEL_CLASSES, ids=lambda cls: cls.__name__)
def model_class(request: pytest.FixtureRequest) -> type[PromptLearningModule]:
    return request.param


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, model_class: type[PromptLearningModule]) -> Path:
    return tmp_path_factory.mktemp(f"export_{model_class.__name__}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return make_synthetic_dataset(root, image_size=64, n_train=1, n_good=2, n_defect=3)


@pytest.fixture(scope="module")
def checkpoint(workdir: Path, data_root: Path, model_class: type[PromptLearningModule]) -> Path:
    """Two training steps with anomalib's Engine, then a Lightning checkpoint."""
    torch.manual_seed(0)
    engine = cpu_engine(workdir / "train", max_steps=2, num_sanity_val_steps=0, limit_val_batches=0)
    datamodule = AuxiliaryDataModule(
        root=data_root, val_split_ratio=0.25, train_batch_size=4, eval_batch_size=4, num_workers=0
    )
    engine.fit(model_class(**tiny_args()), datamodule=datamodule)
    path = workdir / "tiny.ckpt"
    engine.trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def torch_model(checkpoint: Path, model_class: type[PromptLearningModule]) -> PromptLearningModule:
    """The reference: the checkpoint loaded through anomalib's ``weights_only`` path, in eval mode."""
    return model_class.load_from_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def exported(workdir: Path, checkpoint: Path, model_class: type[PromptLearningModule]) -> dict[str, Path]:
    """ONNX and OpenVINO exports of the checkpoint through ``Engine.export``."""
    paths = {}
    for export_type in (ExportType.ONNX, ExportType.OPENVINO):
        engine = cpu_engine(workdir / "export")
        paths[export_type.value] = engine.export(
            model=model_class(**tiny_args()),
            export_type=export_type,
            export_root=workdir / export_type.value,
            ckpt_path=checkpoint,
        )
    return paths


@pytest.fixture(scope="module")
def selection_free(
    workdir: Path,
    checkpoint: Path,
    exported: dict[str, Path],
    torch_model: PromptLearningModule,
    model_class: type[PromptLearningModule],
) -> tuple[PromptLearningModule, Path]:
    """The checkpoint without a top-k patch selection: the torch module and its OpenVINO IR (``to_openvino``).

    OpenVINO's bf16 errors of a few 1e-3 can reorder near-tied patches in FAPrompt's top-k selection, f32 marks or
    not, and the data-dependent prompts then move its outputs by up to 1e-1. FAPrompt with ``first_k`` selection
    keeps every other operation of the paper's model. AnomalyCLIP selects no patches: its export serves as it is.
    """
    if model_class is not FAPrompt:
        return torch_model, exported["openvino"]
    model = FAPrompt.load_from_checkpoint(checkpoint, patch_selection="first_k").eval()
    return model, model.to_openvino(workdir / "first_k")


@pytest.fixture(scope="module")
def cli_fp16_export(workdir: Path, checkpoint: Path, model_class: type[PromptLearningModule]) -> Path:
    """``anomalib export --model FAPrompt --ckpt_path ... --export_type openvino --compression_type FP16``."""
    config = workdir / "tiny.yaml"
    model = {"class_path": model_class.__name__, "init_args": tiny_args()}
    config.write_text(json.dumps({"model": model}))  # JSON is YAML
    root = workdir / "cli"
    anomalib_cli(
        "export", "--config", config, "--ckpt_path", checkpoint, "--export_type", "openvino",
        "--compression_type", "FP16", "--export_root", root,
    )  # fmt: skip
    return root / "weights" / "openvino" / "model.xml"


@pytest.fixture(scope="module")
def images(data_root: Path) -> torch.Tensor:
    """Four images in [0, 1]: a defect of each category, a second defect and a normal image."""
    files = [
        data_root / "alpha" / "test" / "defect" / "000.png",
        data_root / "beta" / "test" / "defect" / "001.png",
        data_root / "alpha" / "test" / "defect" / "002.png",
        data_root / "beta" / "test" / "good" / "000.png",
    ]
    return torch.stack([read_image(file, as_tensor=True) for file in files])


def run_onnx(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))


def run_openvino(path: Path, images: torch.Tensor, config: dict[str, str] | None = F32) -> dict[str, np.ndarray]:
    """Outputs of the IR compiled with ``config`` (``None``: OpenVINO's default CPU precision)."""
    compiled = ov.Core().compile_model(str(path), "CPU", config or {})
    return {key.get_any_name(): value for key, value in compiled(images.numpy()).items()}


def max_difference(actual: np.ndarray, expected: torch.Tensor) -> float:
    return float(np.abs(actual.astype(np.float64) - expected.double().numpy()).max())


def test_checkpoint_is_trained(
    exported: dict[str, Path],
    torch_model: PromptLearningModule,
    model_class: type[PromptLearningModule],
    images: torch.Tensor,
):
    """The export is of the trained checkpoint, not of the fresh model ``Engine.export`` was given: the exported
    graphs give the checkpoint's outputs, which the two training steps moved far beyond the parity bound."""
    torch.manual_seed(0)
    initial = model_class(**tiny_args()).eval()
    assert not torch.allclose(initial.model.normal_ctx, torch_model.model.normal_ctx)
    with torch.no_grad():
        trained, fresh = torch_model(images), initial(images)
    for outputs in (run_onnx(exported["onnx"], images), run_openvino(exported["openvino"], images)):
        assert max_difference(outputs["pred_score"], trained.pred_score) <= FP32_TOLERANCE
        assert max_difference(outputs["pred_score"], fresh.pred_score) > 100 * FP32_TOLERANCE
        assert max_difference(outputs["anomaly_map"], fresh.anomaly_map) > 100 * FP32_TOLERANCE


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("size", [(64, 64), (72, 96)])
def test_fp32_parity(
    backend: str,
    batch: int,
    size: tuple[int, int],
    exported: dict[str, Path],
    torch_model: PromptLearningModule,
    images: torch.Tensor,
):
    """Scores, maps, labels and masks of the exported graph equal the torch module's forward.

    ``(72, 96)`` runs the pre-processor's resize inside the graph (height and width are dynamic).
    """
    inputs = F.interpolate(images[:batch], size=size, mode="bilinear") if size != (64, 64) else images[:batch]
    with torch.no_grad():
        expected = torch_model(inputs)
    run = run_onnx if backend == "onnx" else run_openvino
    actual = run(exported[backend], inputs)

    assert actual["pred_score"].shape == (batch,)
    assert actual["anomaly_map"].shape == (batch, 1, 64, 64)
    assert max_difference(actual["pred_score"], expected.pred_score) <= FP32_TOLERANCE
    assert max_difference(actual["anomaly_map"], expected.anomaly_map) <= FP32_TOLERANCE
    # Labels and masks are thresholds at 0.5: equal wherever the value is not within the tolerance of it.
    for decision, value in (("pred_label", "pred_score"), ("pred_mask", "anomaly_map")):
        decided = (getattr(expected, value) - 0.5).abs().numpy() > FP32_TOLERANCE
        np.testing.assert_array_equal(actual[decision][decided], getattr(expected, decision).numpy()[decided])


def test_batch_axis_is_dynamic(exported: dict[str, Path]):
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    model = ov.Core().read_model(str(exported["openvino"]))
    assert model.input(0).partial_shape[0].is_dynamic


def cpu_runs_bf16() -> bool:
    """Whether the CPU plugin honours a bf16 hint (natively, or emulated on AVX-512 CPUs without bf16)."""
    parameter = ov.opset13.parameter([1, 4], np.float32)
    model = ov.Model([ov.opset13.relu(parameter)], [parameter])
    compiled = ov.Core().compile_model(model, "CPU", BF16)
    return compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def operations(xml: Path) -> list[ov.Node]:
    """The IR's operations: every node but parameters, results and constants."""
    model = ov.Core().read_model(str(xml))
    return [op for op in model.get_ops() if op.get_type_name() not in {"Parameter", "Result", "Constant"}]


def is_marked(operation: ov.Node) -> bool:
    """Whether the operation carries ``keep_f32``'s mark (OpenVINO reads it as DisablePrecisionConversion)."""
    return "DisablePrecisionConversion_0" in operation.get_rt_info()


def test_every_operation_is_kept_in_f32(exported: dict[str, Path]):
    """``to_openvino`` marked every operation of the exported IR to stay in f32."""
    exported_operations = operations(exported["openvino"])
    assert len(exported_operations) > 100
    assert all(map(is_marked, exported_operations))


def test_f32_marks_can_be_removed(exported: dict[str, Path], tmp_path: Path):
    """``remove_f32_marks`` leaves no operation marked, and ``keep_f32`` marks them all again."""
    xml = tmp_path / "model.xml"
    shutil.copy(exported["openvino"], xml)
    shutil.copy(exported["openvino"].with_suffix(".bin"), xml.with_suffix(".bin"))
    assert not any(map(is_marked, operations(remove_f32_marks(xml))))
    assert all(map(is_marked, operations(keep_f32(xml))))


@pytest.mark.parametrize("config", [None, BF16], ids=["default", "bf16"])
def test_low_precision_stays_close_to_torch(
    config: dict[str, str] | None,
    selection_free: tuple[PromptLearningModule, Path],
    images: torch.Tensor,
):
    """At OpenVINO's default CPU precision (bf16 on CPUs with bf16 instructions) and under a bf16 hint: within 1e-2.

    Without the f32 marks, bf16 errors of the image encoder alone move the outputs further (docs/export.md, Precision).
    """
    if config == BF16 and not cpu_runs_bf16():
        pytest.skip("this CPU's OpenVINO plugin does not run bf16 (no AVX-512)")
    model, xml = selection_free
    with torch.no_grad():
        expected = model(images)
    actual = run_openvino(xml, images, config)
    assert np.isfinite(actual["pred_score"]).all()
    assert np.isfinite(actual["anomaly_map"]).all()
    assert max_difference(actual["pred_score"], expected.pred_score) <= LOW_PRECISION_TOLERANCE
    assert max_difference(actual["anomaly_map"], expected.anomaly_map) <= LOW_PRECISION_TOLERANCE


def inferencer_outputs(xml: Path, config: dict[str, str] | None, images: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Scores ``(B,)`` and maps ``(B, 1, H, W)`` of anomalib's ``OpenVINOInferencer`` (cache: ``./openvino_cache``)."""
    result = OpenVINOInferencer(xml, device="CPU", config=config).predict(images)
    return result.pred_score.reshape(-1), result.anomaly_map.reshape(images.shape[0], 1, *images.shape[-2:])


def assert_close(outputs: tuple[np.ndarray, ...], expected: InferenceBatch, tolerance: float) -> None:
    score, anomaly_map = outputs
    assert np.isfinite(score).all()
    assert np.isfinite(anomaly_map).all()
    assert max_difference(score, expected.pred_score) <= tolerance
    assert max_difference(anomaly_map, expected.anomaly_map) <= tolerance


def test_precision_changes_between_runs_in_one_folder(
    selection_free: tuple[PromptLearningModule, Path],
    images: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """``OpenVINOInferencer`` in f32, at the default, then with ``openvino_config("f32")``, in one folder.

    anomalib's inferencer caches compiled models in ``./openvino_cache``, and OpenVINO names a cached blob after the
    model and the CPU, not the precision: the default run loads the f32 run's blob (on a bf16 CPU, an unmarked
    model gave NaN or crashed there). ``openvino_config`` gives each precision a cache folder of its own.
    """
    monkeypatch.chdir(tmp_path)
    model, xml = selection_free
    with torch.no_grad():
        expected = model(images)
    assert_close(inferencer_outputs(xml, F32, images), expected, FP32_TOLERANCE)
    assert list((tmp_path / "openvino_cache").glob("*.blob")), "the f32 run left no cached blob to load"
    assert_close(inferencer_outputs(xml, None, images), expected, LOW_PRECISION_TOLERANCE)
    assert_close(inferencer_outputs(xml, openvino_config("f32"), images), expected, FP32_TOLERANCE)
    assert list((tmp_path / "openvino_cache" / "f32").glob("*.blob"))


def test_bf16_run_after_f32_run_in_one_folder(
    selection_free: tuple[PromptLearningModule, Path],
    images: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """An f32 run, then a bf16 run of ``OpenVINOInferencer`` sharing ``./openvino_cache``: finite, within 1e-2.

    The bf16 run loads the blob the f32 run compiled; for an IR without the f32 marks that gave NaN scores and maps.
    """
    if not cpu_runs_bf16():
        pytest.skip("this CPU's OpenVINO plugin does not run bf16 (no AVX-512)")
    monkeypatch.chdir(tmp_path)
    model, xml = selection_free
    with torch.no_grad():
        expected = model(images)
    inferencer_outputs(xml, F32, images)
    assert_close(inferencer_outputs(xml, BF16, images), expected, LOW_PRECISION_TOLERANCE)


def test_openvino_config_names_a_bad_precision():
    assert openvino_config("bf16", "cache") == {"INFERENCE_PRECISION_HINT": "bf16", "CACHE_DIR": "cache/bf16"}
    with pytest.raises(ValueError, match=r"precision='fp32'.*'f32'"):
        openvino_config("fp32")


def _scope_outputs(model: onnx.ModelProto, scopes: list[str]) -> list[str]:
    """Name of the last value computed inside each module scope (the module's output, in topological order)."""
    found = {}
    for node in model.graph.node:
        metadata = {prop.key: prop.value for prop in node.metadata_props}
        node_scopes = ast.literal_eval(metadata.get("pkg.torch.onnx.name_scopes", "[]"))
        for scope in scopes:
            if scope in node_scopes:
                found[scope] = node.output[0]
    assert set(found) == set(scopes), f"scopes not in the exported graph: {set(scopes) - set(found)}"
    return [found[scope] for scope in scopes]


@pytest.mark.parametrize("model_class", [FAPrompt], indirect=True, ids=["FAPrompt"])
def test_dap_prompts_are_computed_in_the_graph(
    workdir: Path,
    exported: dict[str, Path],
    torch_model: PromptLearningModule,
    images: torch.Tensor,
):
    """Two images with different defects get different DAP priors and DAP text tokens, in the graph as in torch.

    The prior network's output ``Omega_x`` and the text encoder's final layer norm (the B*K data-dependent
    prompts; in eval mode the static prompts are cached, so the encoder runs only for DAP) are exposed as
    extra outputs of the exported graph and compared with the same tensors captured in torch.
    """
    pair = images[:2]
    model = torch_model.model
    captured = {}
    hooks = [
        model.prior_net.register_forward_hook(lambda _m, _i, out: captured.__setitem__("prior", out)),
        model.backbone.clip.ln_final.register_forward_hook(lambda _m, _i, out: captured.__setitem__("text", out)),
    ]
    with torch.no_grad():
        torch_model(pair)
    for hook in hooks:
        hook.remove()

    graph = onnx.load(str(exported["onnx"]))
    names = _scope_outputs(graph, ["model.prior_net", "model.backbone.clip.ln_final"])
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    path = workdir / "dap_outputs.onnx"
    onnx.save(graph, str(path))
    outputs = run_onnx(path, pair)
    prior, text = outputs[names[0]], outputs[names[1]]

    n_prompts = model.abnormal_ctx.shape[0]
    assert prior.shape == tuple(captured["prior"].shape) == (2, model.backbone.text_width)
    assert text.shape == tuple(captured["text"].shape)
    assert text.shape[0] == 2 * n_prompts
    assert max_difference(prior, captured["prior"]) <= FP32_TOLERANCE
    assert max_difference(text, captured["text"]) <= FP32_TOLERANCE
    # The two images' prompts differ, far beyond the export tolerance.
    eos = model.abnormal_template.eos_index
    assert np.abs(prior[0] - prior[1]).max() > 100 * FP32_TOLERANCE
    assert np.abs(text[:n_prompts, eos] - text[n_prompts:, eos]).max() > 100 * FP32_TOLERANCE


@pytest.mark.parametrize("model_class", [FAPrompt], indirect=True, ids=["FAPrompt"])
def test_fp16_compression_from_the_cli(
    cli_fp16_export: Path,
    exported: dict[str, Path],
    torch_model: PromptLearningModule,
    images: torch.Tensor,
):
    """The CLI's FP16 export stores fp16 weights (half the file) and stays close to the torch module."""
    model = ov.Core().read_model(str(cli_fp16_export))
    constants = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert "f16" in {op.get_output_element_type(0).get_type_name() for op in constants}
    fp16_size = cli_fp16_export.with_suffix(".bin").stat().st_size
    assert fp16_size < 0.6 * exported["openvino"].with_suffix(".bin").stat().st_size
    with torch.no_grad():
        expected = torch_model(images)
    actual = run_openvino(cli_fp16_export, images)
    assert actual["anomaly_map"].shape == (4, 1, 64, 64)
    assert max_difference(actual["pred_score"], expected.pred_score) < 0.1
    assert max_difference(actual["anomaly_map"], expected.anomaly_map) < 0.1


@pytest.mark.parametrize("model_class", [FAPrompt], indirect=True, ids=["FAPrompt"])
def test_openvino_inferencer_and_predict_on_a_folder(
    data_root: Path,
    checkpoint: Path,
    exported: dict[str, Path],
    model_class: type[PromptLearningModule],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """``OpenVINOInferencer`` on the exported IR and ``Engine.predict`` on the checkpoint agree on a folder.

    The folder holds images larger and smaller than the working size and not square: the exported graph resizes
    them as anomalib's loops do (antialiased bicubic).
    """
    monkeypatch.chdir(tmp_path)  # the inferencer writes an ``openvino_cache`` folder into the working directory
    folder = tmp_path / "images"
    folder.mkdir()
    for file, size in zip(sorted((data_root / "beta" / "test" / "defect").glob("*.png")), IMAGE_SIZES, strict=False):
        Image.open(file).resize(size, Image.Resampling.BICUBIC).save(folder / file.name)
    files = sorted(folder.glob("*.png"))
    inferencer = OpenVINOInferencer(exported["openvino"], device="CPU", config=openvino_config("f32"))
    deployed = {file.name: inferencer.predict(file) for file in files}

    engine = cpu_engine(data_root.parent / "predict")
    predictions = engine.predict(model=model_class(**tiny_args()), ckpt_path=checkpoint, data_path=folder)
    predicted = {
        Path(path).name: (batch.pred_score[i], batch.anomaly_map[i])
        for batch in predictions
        for i, path in enumerate(batch.image_path)
    }

    assert set(predicted) == set(deployed)
    for name, result in deployed.items():
        score, anomaly_map = predicted[name]
        assert result.anomaly_map.shape[-2:] == (64, 64)
        assert abs(float(result.pred_score.reshape(-1)[0]) - float(score)) <= FP32_TOLERANCE
        assert np.abs(result.anomaly_map.reshape(64, 64) - anomaly_map.reshape(64, 64).numpy()).max() <= FP32_TOLERANCE
