"""Every registered generator is a :class:`discnb.generative.protocol.Generator`, with the values its
consumers read: the registry's name, the device it samples on, whether it needs slide labels, and an
``nfe`` that counts the U-Net evaluations of a ``generate`` call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discnb.generative import generators
from discnb.generative.protocol import Generator
from ldm_fixture import trained_generators
from test_tilesets import ColourGen

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*sampled latents are far out of range")]
STEPS = 2


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    """A tiny LDM trained as notebook 01 trains it (with the Fig. 7 ablation models); SD-DISC and
    SD-DISC-CoTrain stand in as SD fine-tuned for 0 steps."""
    return trained_generators(tmp_path_factory.mktemp("generators"))


@pytest.mark.parametrize("name", generators.available())
def test_every_registered_generator_is_a_generator(ldm_dir, name):
    ctx = generators.GeneratorContext(ldm_dir=ldm_dir, image_size=32, steps=STEPS, batch_size=2)
    gen, _ = generators.build_generator(name, ctx)
    assert isinstance(gen, Generator), name
    assert gen.name == name
    assert gen.device == torch.device("cpu")
    assert gen.needs_slide_labels is (name == "SD-tile+slide")
    assert gen.nfe == 0
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[1, :, 16:] = 2  # one tile with one label, one with two
    labels = {"slide_labels": np.array([[1, 1], [2, 1]])} if gen.needs_slide_labels else {}
    tiles = gen.generate(masks, [0, 1], **labels)
    assert tiles.dtype == np.uint8 and tiles.shape == (2, 32, 32, 3)
    branches = 1 + 2 if name == "SD-SC" else 2  # SC denoises once per label of each tile (Eq. 2)
    assert gen.nfe == STEPS * branches * gen.evals_per_step


def test_the_protocol_refuses_what_lacks_a_member():
    """The tile-set fake is a Generator; the same without ``needs_slide_labels`` (or ``device``) is not."""
    assert isinstance(ColourGen(), Generator)

    class NoLabels:
        name, device, nfe = "x", torch.device("cpu"), 0

        def generate(self, masks, seeds, slide_labels=None):
            return np.zeros((len(masks), 1, 1, 3), np.uint8)

    assert not isinstance(NoLabels(), Generator)
    NoLabels.needs_slide_labels = False
    assert isinstance(NoLabels(), Generator)
    del NoLabels.device
    assert not isinstance(NoLabels(), Generator)
