"""The checkpoints that training through anomalib's Engine writes (the session's trained checkpoints)."""

from __future__ import annotations

import torch

from tests.helpers.models import each_model, tiny_args


@each_model
def test_trained_checkpoint_loads_the_same_by_load_from_checkpoint_and_by_weights(model_class, request):
    """The checkpoint training writes: both ways of loading it give one model, the trained one."""
    checkpoint = request.getfixturevalue(f"{model_class.__name__.lower()}_checkpoint")
    loaded = model_class.load_from_checkpoint(checkpoint).model.eval()
    built = model_class(**tiny_args(weights=str(checkpoint))).model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = loaded(images), built(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)

    torch.manual_seed(0)  # as before training: the same random CLIP and the same initial prompts
    initial = dict(model_class(**tiny_args()).model.named_parameters())
    for name, value in loaded.named_parameters():
        assert torch.equal(value, initial[name]) is not value.requires_grad, name  # training moved the prompts only
