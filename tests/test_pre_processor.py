"""Masks follow the images bilinearly and are binarised at 0.5 (docs/faprompt.md, section 1), not nearest neighbour."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import ImageBatch
from torchvision.transforms.v2.functional import resize

from anomalib_faprompt import FAPrompt


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
