"""BatchAugment: the uint8-batch augmentation of the Fashion-MNIST training path."""
import random

import torch

from botnet.data.transforms import BatchAugment, fashion_mnist_transforms


def _batch(b=16, h=28, w=28):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, 1, h, w), generator=g, dtype=torch.uint8)


def test_without_augmentation_it_is_the_evaluation_transform():
    x = _batch()
    ref = torch.stack([fashion_mnist_transforms(28, train=False, mean=(0.3,), std=(0.4,))(xi) for xi in x])
    out = BatchAugment(28, (0.3,), (0.4,), padding=0, hflip=0.0)(x)
    assert out.dtype == torch.float32 and out.shape == (16, 1, 28, 28)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_every_sample_is_one_crop_of_its_zero_padded_image_maybe_flipped():
    x, p = _batch(64), 2
    torch.manual_seed(1)
    out = BatchAugment(28, (0.0,), (1.0,), padding=p, hflip=0.5)(x)
    padded = torch.nn.functional.pad(x.float() / 255.0, (p, p, p, p))
    seen_offsets, flips = set(), 0
    for i in range(len(x)):
        found = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for f in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 28, dx:dx + 28]))]
        assert found, f"sample {i} is not a crop of its padded image"
        seen_offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(seen_offsets) > 5 and 10 < flips < 54  # offsets and flips really vary


def test_draws_from_the_global_rng_so_resume_repeats_it():
    x, aug = _batch(), BatchAugment(28, (0.5,), (0.5,), padding=2, hflip=0.5, re_prob=0.5)
    torch.manual_seed(3), random.seed(3)  # timm's random erasing draws from Python's RNG
    a = aug(x)
    torch.manual_seed(3), random.seed(3)
    assert torch.equal(a, aug(x))
    assert not torch.equal(a, aug(x))


def test_resizes_to_the_training_size():
    out = BatchAugment(40, (0.5,), (0.5,), padding=4)(_batch())
    assert out.shape == (16, 1, 40, 40)
