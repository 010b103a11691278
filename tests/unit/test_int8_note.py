"""The predict command's line for a quantised model on a CPU without int8 dot products (VNNI, AMX)."""

from __future__ import annotations

import logging

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from anomalib_faprompt.inference import exported_model


def _model(quantised: bool) -> ov.Model:
    """A one-operation graph: a FakeQuantize (what INT8_PTQ inserts) or a ReLU."""
    images = ops.parameter([1, 3, 4, 4], np.float32, name="input")
    if quantised:
        low, high = ops.constant(np.float32(0)), ops.constant(np.float32(1))
        node = ops.fake_quantize(images, low, high, low, high, 256)
    else:
        node = ops.relu(images)
    return ov.Model([node], [images], "graph")


@pytest.mark.parametrize(
    ("quantised", "instruction_sets", "noted"),
    [(True, ("avx2",), True), (True, ("avx2", "avx_vnni"), False), (False, ("avx2",), False)],
)
def test_a_quantised_model_is_noted_where_the_cpu_lacks_int8_dot_products(
    monkeypatch, caplog, quantised, instruction_sets, noted
):
    monkeypatch.setattr(exported_model, "cpu_instruction_sets", lambda: instruction_sets)
    with caplog.at_level(logging.WARNING, logger=exported_model.__name__):
        exported_model.compile_for_throughput(_model(quantised), threads=1)
    lines = [record.getMessage() for record in caplog.records if "int8 dot-product" in record.getMessage()]
    assert len(lines) == int(noted)
