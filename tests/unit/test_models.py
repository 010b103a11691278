"""What every model of the package gives alike: eval outputs that are probabilities, batched as image by image.

Each test runs once per model (``each_model``); a model's own formulas are tested in its file
(``test_faprompt_model.py``, ``test_anomalyclip.py``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers.models import TINY_MODEL_ARGS, each_model, tiny_args

S = TINY_MODEL_ARGS["image_size"]


def _torch_model(model_class: type) -> nn.Module:
    torch.manual_seed(0)
    return model_class(**tiny_args()).model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, S, S)


@each_model
def test_eval_outputs_are_probabilities(model_class, images):
    with torch.no_grad():
        output = _torch_model(model_class)(images * 3.0)
    assert output.pred_score.shape == (3,)
    assert output.anomaly_map.shape == (3, 1, S, S)
    for value in (output.pred_score, output.anomaly_map):
        assert 0.0 <= float(value.min()) <= float(value.max()) <= 1.0


@each_model
def test_batched_eval_equals_per_image(model_class, images):
    model = _torch_model(model_class)
    with torch.no_grad():
        batched = model(images)
        single = [model(image[None]) for image in images]
    torch.testing.assert_close(batched.pred_score, torch.cat([s.pred_score for s in single]), atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.anomaly_map, torch.cat([s.anomaly_map for s in single]), atol=1e-5, rtol=0)
