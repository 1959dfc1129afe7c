"""Training on crops (beyond the paper: the demo trains its convolutional models on windows of its
128-px tiles to fit 2 CPU cores): one window per sample at the same place in latents and masks, and
a mask encoder whose position embedding is cut where the window lies, so a crop-trained SD samples
whole tiles with the positions it learned."""

from __future__ import annotations

import torch

from discnb.data.augment import random_crop
from discnb.generative import ldm
from discnb.generative.ldm_training import ldm_batch_loss
from ldm_fixture import tiny_model


def test_crop_cuts_latents_and_masks_at_one_place():
    torch.manual_seed(0)
    z = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    mask = torch.arange(2 * 32 * 32).view(2, 32, 32) % 251
    out = random_crop({"z": z, "mask": mask, "slide": torch.zeros(2, 2)}, ("z", "mask"), 4, step=2)
    assert out["z"].shape == (2, 3, 4, 4) and out["mask"].shape == (2, 16, 16)
    for i, (y, x) in enumerate(out["crop_offset"].tolist()):
        assert y % 2 == 0 and x % 2 == 0 and 0 <= y <= 4 and 0 <= x <= 4
        assert torch.equal(out["z"][i], z[i, :, y:y + 4, x:x + 4])
        assert torch.equal(out["mask"][i], mask[i, 4 * y:4 * y + 16, 4 * x:4 * x + 16])
    assert torch.equal(out["slide"], torch.zeros(2, 2))


def test_no_crop_draws_no_random_numbers():
    b = {"x": torch.rand(3, 3, 16, 16)}
    for side in (0, 16, 32):
        torch.manual_seed(1)
        assert random_crop(b, ("x",), side) is b
        assert torch.equal(torch.rand(1), torch.manual_seed(1) and torch.rand(1))


def test_misaligned_crop_is_refused():
    import pytest
    with pytest.raises(ValueError, match="multiples of the offset step"):
        random_crop({"z": torch.zeros(1, 3, 8, 8)}, ("z",), 3, step=2)


def test_mask_encoder_takes_the_window_of_its_position_embedding():
    torch.manual_seed(0)
    tau = ldm.MaskEncoder(image_size=32, token_side=4)  # 8 px per token
    cond = ldm.make_condition(torch.randint(0, 4, (2, 16, 16)))
    offset = torch.tensor([[0, 8], [16, 0]])  # mask pixels, on token edges
    tokens = tau(cond, offset)
    content = tau.net(cond).flatten(2).transpose(1, 2)
    grid = tau.pos.view(4, 4, -1)
    assert torch.allclose(tokens[0] - content[0], grid[0:2, 1:3].reshape(4, -1), atol=1e-6)
    assert torch.allclose(tokens[1] - content[1], grid[2:4, 0:2].reshape(4, -1), atol=1e-6)
    full = ldm.make_condition(torch.randint(0, 4, (1, 32, 32)))
    assert tau(full).shape == (1, 16, tau.config.width)  # whole tiles: the whole embedding, no offset needed
    import pytest
    with pytest.raises(ValueError, match="needs its offset"):
        tau(cond)


def test_a_crop_trained_step_runs_and_samples_whole_tiles():
    torch.manual_seed(0)
    model = tiny_model(image_size=32, concat_mask=True)
    z, mask = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4, 32, 32), dtype=torch.uint8)
    batch = random_crop({"z": z, "mask": mask, "slide": torch.zeros(4, 2, dtype=torch.long)}, ("z", "mask"), 4, step=2)
    loss = ldm_batch_loss("pixel", ldm.noise_scheduler().alphas_cumprod)(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.tau.pos.grad.abs().sum() > 0
    eps = model(torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), ldm.make_condition(mask[:2]))
    assert eps.shape == (2, 3, 8, 8)
