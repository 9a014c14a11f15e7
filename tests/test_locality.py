"""What NoProp back-propagates: inside block t, into the head and W_Embed — and nothing else."""

import pytest
import torch

from noprop.training.trainer import Trainer

from .problems import tiny_method


@pytest.mark.parametrize("embedding", ["one-hot", "learned"])
@pytest.mark.parametrize("unit", [0, 1, 2])
def test_step_of_block_t_leaves_other_blocks_untouched(embedding, unit):
    method, cfg, (x, y) = tiny_method(embedding=embedding)
    trainer = Trainer(method, cfg, torch.device("cpu"), progress=False)
    # warm up every block once so every block has optimiser state and nonzero moments
    for u in range(method.num_units):
        trainer.step(x, y, u)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    for p in method.parameters():
        p.grad = None
    trainer.step(x, y, unit)
    for t, block in enumerate(method.blocks):
        for name, p in block.named_parameters():
            if t != unit:
                assert p.grad is None, f"block {t + 1} got a gradient from block {unit + 1}'s loss"
            else:
                assert p.grad is not None, f"block {t + 1}.{name} got no gradient"
        for name, v in block.state_dict().items():  # parameters and BN running stats, bit for bit
            changed = not torch.equal(v, before[f"blocks.{t}.{name}"])
            if t != unit:
                assert not changed, f"block {t + 1}.{name} changed during block {unit + 1}'s step"
    # the block being trained and the head did change
    assert not torch.equal(
        method.blocks[unit].fusion[-1].weight, before[f"blocks.{unit}.fusion.6.weight"]
    )
    assert not torch.equal(method.head.f_out.weight, before["head.f_out.weight"])
    if embedding == "learned":
        assert method.embedding.weight.grad is not None


def test_block_loss_graph_contains_only_block_t():
    """The autograd graph of block t's loss reaches no parameter of another block."""
    method, _, (x, y) = tiny_method()
    loss, _ = method.loss(x, y, 1)
    others = [p for t, b in enumerate(method.blocks) if t != 1 for p in b.parameters()]
    grads = torch.autograd.grad(loss, others, allow_unused=True)
    assert all(g is None for g in grads)


def test_backprop_twin_does_couple_blocks():
    """Control: the end-to-end twin sends gradient into every block (the test above can fail)."""
    method, _, (x, y) = tiny_method(method="backprop")
    loss, _ = method.loss(x, y, 0)
    grads = torch.autograd.grad(loss, [b.fusion[0].weight for b in method.blocks])
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_offload_blocks_trains_identically():
    """--offload-blocks only moves blocks between devices; on CPU it must change nothing."""
    from noprop.parallel import build_trainer
    from noprop.training.offload import BlockOffloader

    results = []
    for offload in (False, True):
        method, cfg, (x, y) = tiny_method(offload_blocks=offload, epochs=1, seed=1)
        trainer = build_trainer(method, cfg, torch.device("cpu"), None, progress=False)
        trainer.train_epoch(x, y, 0)
        offloaders = [c for c in trainer.callbacks if isinstance(c, BlockOffloader)]
        assert len(offloaders) == int(offload)
        if offload:
            assert offloaders[0].active == method.num_units - 1
        results.append({k: v.clone() for k, v in method.state_dict().items()})
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_offload_needs_block_order():
    from noprop.config import make_config
    from noprop.errors import ConfigError

    with pytest.raises(ConfigError, match="offload"):
        make_config(offload_blocks=True, order="interleaved")


def test_perturbing_earlier_blocks_changes_the_backprop_loss():
    """Control for the conformance suite's forward-locality check (tests/test_conformance.py): the
    back-prop twin reads every block in its forward pass, so perturbing block 1 changes its loss —
    the check can fail, and NoProp-DT passes it."""
    for name, changes in (("backprop", True), ("dt", False)):
        method, _, (x, y) = tiny_method(method=name)
        unit = method.num_units - 1  # the last unit (the only one for backprop)
        torch.manual_seed(0)
        before = method.loss(x, y, unit)[0]
        with torch.no_grad():
            for p in method.blocks[0].parameters():
                p.add_(1.0)
        torch.manual_seed(0)
        after = method.loss(x, y, unit)[0]
        assert (not torch.equal(before, after)) == changes, name


def test_ct_built_directly_defaults_to_the_cli_sampler():
    """One default in one place: NoPropCT(...) and --method ct both use CTConfig's solver."""
    from noprop.methods import CTConfig, NoPropCT

    method, _, _ = tiny_method(method="ct")
    direct = NoPropCT(method.block, method.embedding, method.head, method.schedule)
    assert direct.solver == method.solver == CTConfig().solver == "ancestral"
    assert direct.t_samples == method.t_samples == CTConfig().t_samples
