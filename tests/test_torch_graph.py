"""A ResNet block and an Inception block against the same blocks built in PyTorch."""
import numpy as np
import pytest

import shendu
from gradcheck import assert_matches_torch, rand
from shendu import bench_worker, models

torch = pytest.importorskip("torch")
T = torch.nn


BLOCKS = bench_worker.torch_blocks()


def torch_basic_block(c_in, c_out, stride):
    """torchvision's BasicBlock, written out with the module names shendu uses."""
    body = T.Sequential(*BLOCKS.conv_bn_relu(c_in, c_out, 3, stride),
                        T.Conv2d(c_out, c_out, 3, padding=1, bias=False), T.BatchNorm2d(c_out))
    shortcut = T.Sequential(T.Conv2d(c_in, c_out, 1, stride, bias=False), T.BatchNorm2d(c_out))
    return T.Sequential(BLOCKS.Residual(body, shortcut), T.ReLU())


ORACLE = {
    "basic_block": (lambda: models.basic_block(4, 6, stride=2), lambda: torch_basic_block(4, 6, 2)),
    "inception": (lambda: models.inception(4, 3, 2, 4, 2, 3, 2),
                  lambda: BLOCKS.inception(4, 3, 2, 4, 2, 3, 2)),
}


@pytest.mark.parametrize("name", ORACLE)
def test_blocks_match_pytorch(name):
    make, make_torch = ORACLE[name]
    shendu.manual_seed(0)
    block, reference = make(), make_torch()
    state = block.state_dict()  # the same dotted names in both
    assert set(state) == {k for k in reference.state_dict() if "num_batches" not in k}
    reference.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=False)
    assert_matches_torch(block, reference, rand(3, 4, 9, 7, seed=1).astype(np.float32), seed=2)




@pytest.mark.parametrize("name", bench_worker.NETWORKS)
def test_the_benchmarks_pytorch_twins_are_the_zoos_networks(name):
    """`python -m shendu bench` times each network against a twin written in PyTorch: with
    shendu's weights loaded, the twin computes the same outputs and gradients. In float64: in
    float32 the engines' rounding differs enough to flip a max-pooling window's winner between
    two near-equal values, and with it where the gradient goes."""
    options = bench_worker.NETWORKS[name]["options"]
    shendu.manual_seed(0)
    net, twin = models.get(name, **options), bench_worker.torch_twin(name, **options)
    state = net.state_dict()
    assert set(state) == {k for k in twin.state_dict() if "num_batches" not in k}
    twin.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=False)
    for module in net.modules():
        for key in module._buffers:
            setattr(module, key, getattr(module, key).astype(np.float64))
    for p in net.parameters():
        p.data = p.data.astype(np.float64)
    net.eval(), twin.double().eval()  # dropout off in both; BatchNorm on running statistics
    assert_matches_torch(net, twin, rand(3, 1, 28, 28, seed=1), seed=2)
