"""Masks resize bilinearly, binarised at 0.5 (docs/faprompt.md, section 1); the export resizes images as the loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import ImageBatch
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torchvision.transforms.v2.functional import resize

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.models.pre_processor import BicubicResize


def test_masks_are_resized_bilinearly_and_binarised(tiny_model_args):
    pre_processor = FAPrompt(**tiny_model_args).pre_processor
    generator = torch.Generator().manual_seed(0)
    masks = F.avg_pool2d(torch.rand(3, 1, 45, 45, generator=generator), 5, stride=1, padding=2)[:, 0] > 0.5
    images = torch.rand(3, 3, 45, 45, generator=generator)
    batch = ImageBatch(image=images.clone(), gt_mask=masks.clone(), gt_label=torch.tensor([1, 1, 1]))

    pre_processor.on_test_batch_start(None, None, batch, 0)

    expected = F.interpolate(masks[:, None].float(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0] > 0.5
    nearest = resize(masks[:, None].float(), [64, 64], interpolation=0)[:, 0] > 0.5
    assert batch.gt_mask.shape == (3, 64, 64)
    assert torch.equal(batch.gt_mask.bool(), expected)
    assert not torch.equal(expected, nearest)  # the case tells the two rules apart
    torch.testing.assert_close(batch.image, pre_processor.transform(images))


@pytest.mark.parametrize("shape", [(2, 3, 211, 173), (1, 3, 500, 380), (1, 3, 40, 50), (1, 3, 64, 300), (3, 3, 64, 64)])
def test_the_export_resize_is_torchvisions_antialiased_bicubic(shape):
    """Larger, smaller, not square, the working size: what the exported graph computes is what the loops compute."""
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    expected = F.interpolate(images, size=(64, 48), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(BicubicResize((64, 48))(images), expected, rtol=0, atol=2e-6)
    if shape[-2:] == (64, 48):
        assert torch.equal(BicubicResize((64, 48))(images), images)


def test_the_models_forward_resizes_as_the_test_loop(tiny_model_args):
    pre_processor = FAPrompt(**tiny_model_args).pre_processor
    images = torch.rand(2, 3, 97, 150, generator=torch.Generator().manual_seed(2))
    batch = ImageBatch(image=images.clone(), gt_label=torch.tensor([0, 1]))
    pre_processor.on_predict_batch_start(None, None, batch, 0)
    torch.testing.assert_close(pre_processor(images), batch.image, rtol=0, atol=2e-6)
    without_antialiasing = get_exportable_transform(pre_processor.transform)(images)  # anomalib's export
    assert float((without_antialiasing - batch.image).abs().max()) > 1e-2
