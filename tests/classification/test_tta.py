"""Test-time augmentation (data.eval_tta / --tta): the flip average, checked against a direct formula."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import botnet
from botnet.classification import evaluate
from botnet.classification.task import log_probs


class LeftRight(nn.Module):
    """Logits (2 x left-half mean, right-half mean, 0.5): a mirror image gets other logits."""

    def forward(self, x):
        w = x.shape[-1] // 2
        left, right = x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))
        return torch.stack([2 * left, right, torch.full_like(left, 0.5)], 1)


def test_hflip_log_probs_are_the_mean_of_both_views_probabilities():
    torch.manual_seed(0)
    model = botnet.create_model("botnet_mini", num_classes=10, in_chans=1, widths=[4, 8, 8, 16], stem_width=8).eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation, whose zero-init blocks barely see the input
            p.add_(0.3 * torch.randn_like(p))
        got = log_probs(model, x, "hflip").double().exp()
        mirrored = x[..., torch.arange(27, -1, -1)]  # the mirror image, column by column
        want = (model(x).double().softmax(1) + model(mirrored).double().softmax(1)) / 2
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.allclose(got.sum(1), torch.ones(5, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(log_probs(model, x, "none").exp().double(), model(x).double().softmax(1), atol=1e-6)
        assert not torch.allclose(got, model(x).double().softmax(1), atol=1e-3)  # the flip does change this model


def test_evaluate_with_hflip_matches_the_direct_formula():
    a = torch.tensor([2.0, -1.0, -3.0, 0.5, 1.0])  # left-half values
    b = torch.tensor([1.0, -2.0, 1.0, -4.0, 1.5])  # right-half values
    x = torch.cat([a.view(-1, 1, 1, 1).expand(-1, 1, 4, 2), b.view(-1, 1, 1, 1).expand(-1, 1, 4, 2)], dim=3)
    y = torch.tensor([0, 2, 1, 0, 1])
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    plain = evaluate(LeftRight(), loader, torch.device("cpu"), 3)
    tta = evaluate(LeftRight(), loader, torch.device("cpu"), 3, tta="hflip")
    half = torch.full_like(a, 0.5)
    view, mirror = torch.stack([2 * a, b, half], 1).double(), torch.stack([2 * b, a, half], 1).double()
    avg = (view.softmax(1) + mirror.softmax(1)) / 2
    top2 = avg.topk(2, 1).values
    assert ((top2[:, 0] - top2[:, 1]) > 1e-3).all()  # no near-ties: the expected argmax is unambiguous
    want_top1 = 100.0 * float((avg.argmax(1) == y).double().mean())
    want_loss = float(-avg[torch.arange(len(y)), y].log().mean())
    assert plain["top1"] == 100.0 * float((view.argmax(1) == y).double().mean())
    assert tta["top1"] == want_top1 != plain["top1"]  # the mirror view is really used
    assert abs(tta["loss"] - want_loss) < 1e-5 and tta["confusion"].sum() == len(y)


def test_unknown_tta_is_refused():
    import pytest

    with pytest.raises(ValueError, match="hflip"):
        log_probs(LeftRight(), torch.zeros(1, 1, 2, 2), "vflip")
