import torch

from anomalib_faprompt import FAPrompt


def test_eval_outputs_are_probabilities(tiny_model_args):
    model = FAPrompt(**tiny_model_args).model.eval()
    with torch.no_grad():
        output = model(torch.randn(3, 3, 64, 64))
    assert output.pred_score.shape == (3,)
    assert output.anomaly_map.shape == (3, 1, 64, 64)
    for value in (output.pred_score, output.anomaly_map):
        assert float(value.min()) >= 0.0
        assert float(value.max()) <= 1.0
