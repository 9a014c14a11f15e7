"""Blocks (v2 Table 5 parameter counts), embeddings and heads."""

import math

import pytest
import torch

from noprop import build_method
from noprop.config import make_config
from noprop.errors import ConfigError
from noprop.models import build_dt_block, build_embedding, build_head, count_parameters
from noprop.models.embeddings import prototype_init

TABLE5_DT = {  # (in_shape, m): (one-hot, learned-20, prototype) in millions, v2 Table 5
    ((1, 28, 28), 10): (0.92, 0.92, 1.40),
    ((3, 32, 32), 10): (1.22, 1.22, 1.99),
    ((3, 32, 32), 100): (1.25, 1.23, 2.00),
}


@pytest.mark.parametrize("key", list(TABLE5_DT))
def test_dt_block_parameter_counts_match_table5(key):
    shape, m = key
    for d, expected in zip((m, 20, math.prod(shape)), TABLE5_DT[key], strict=True):
        n = count_parameters(build_dt_block("conv", shape, d, m))
        assert round(n / 1e6, 2) == expected, (shape, m, d, n)


@pytest.mark.parametrize("embedding", ["one-hot", "learned", "prototype"])
def test_params_per_block_via_method(embedding):
    x = torch.randn(40, 1, 28, 28)
    y = torch.arange(40) % 10
    cfg = make_config(embedding=embedding, T=2)
    method = build_method(cfg, (1, 28, 28), 10, x, y)
    expected = dict(
        zip(("one-hot", "learned", "prototype"), TABLE5_DT[((1, 28, 28), 10)], strict=True)
    )
    assert round(method.params_per_block() / 1e6, 2) == expected[embedding]


@pytest.mark.parametrize("shape,m", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_conv_block_shapes(shape, m):
    block = build_dt_block("conv", shape, m, m)
    out = block(torch.randn(3, *shape), torch.randn(3, m))
    assert out.shape == (3, m)
    proto = build_dt_block("conv", shape, math.prod(shape), m)
    assert proto(torch.randn(3, *shape), torch.randn(3, math.prod(shape))).shape == (3, m)


def test_block_auto_picks_mlp_for_tiny_images():
    assert type(build_dt_block("auto", (1, 8, 8), 10, 10)).__name__ == "MLPBlock"
    assert type(build_dt_block("auto", (1, 28, 28), 10, 10)).__name__ == "ConvBlock"
    with pytest.raises(ConfigError):
        build_dt_block("conv", (1, 8, 8), 10, 10)


def test_one_hot_is_fixed_identity():
    e = build_embedding("one-hot", 5)
    assert not e.learnable and torch.equal(e.weight, torch.eye(5))


def test_learned_orthogonal_when_possible_random_otherwise():
    e = build_embedding("learned", 10, embed_dim=20)
    assert e.learnable
    torch.testing.assert_close(e.weight @ e.weight.T, torch.eye(10), atol=1e-5, rtol=0)
    r = build_embedding("learned", 100, embed_dim=20)
    assert r.weight.shape == (100, 20)
    assert (r.weight @ r.weight.T - torch.eye(100)).abs().max() > 0.1  # cannot be orthonormal


def test_prototype_is_the_median_medoid():
    # class 0: points 0, 1, 2, 10 on a line -> medoid under median distance is 1 or 2 (1: med(1,1,9)=1)
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [5.0], [6.0], [100.0]])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    w = prototype_init(x, y, 2)
    assert w[0].item() == 1.0 and w[1].item() in (5.0, 6.0)
    # the prototype is an actual training image of its class
    xi = torch.randn(30, 1, 4, 4)
    yi = torch.arange(30) % 3
    e = build_embedding("prototype", 3, train_x=xi, train_y=yi)
    for k in range(3):
        assert any(torch.equal(e.weight[k], xi[j].flatten()) for j in range(30) if yi[j] == k)


def test_prototype_subsamples_large_classes():
    x = torch.randn(3000, 5)
    y = torch.zeros(3000, dtype=torch.long)
    w = prototype_init(x, y, 1, max_per_class=100)
    assert w.shape == (1, 5)


def test_heads():
    W = torch.eye(4)
    z = torch.randn(6, 4)
    head = build_head("softmax", W)
    assert head(z, W).shape == (6, 4)
    assert (head(W, W).argmax(-1) == torch.arange(4)).all()  # init = nearest-embedding read-out
    post = build_head("posterior", W, sigma=0.5)
    logits = post(z, W)
    assert logits.shape == (6, 4) and (logits <= 0).all()
    # Eq. 16: logit_y = -||softmax(f(z)) W - u_y||^2 / (2σ²)
    y_tilde = post.f_out(z).softmax(-1) @ W
    torch.testing.assert_close(logits[:, 2], -((y_tilde - W[2]) ** 2).sum(-1) / 0.5)
    with pytest.raises(ConfigError):
        build_head("nope", W)


def test_fast_dropout_keep_rate_is_uniform_over_positions():
    from noprop.models.dropout import FastDropout

    torch.manual_seed(0)
    drop = FastDropout(0.2)
    x = torch.ones(400, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    out = drop(x)
    kept = (out != 0).float()
    assert kept.mean().item() == pytest.approx(0.8, abs=0.005)
    # every position in the memory layout (mod 4 catches a reused or sign-extended random word)
    flat = kept.permute(0, 2, 3, 1).reshape(-1)
    for r in range(4):
        assert flat[r::4].mean().item() == pytest.approx(0.8, abs=0.01)
    assert out.sum().item() / x.sum().item() == pytest.approx(1.0, abs=0.01)  # unbiased
    drop.eval()
    assert torch.equal(drop(x), x)
