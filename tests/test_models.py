"""The model zoo: published parameter counts at ImageNet size, output shapes for small images,
and a training step that lowers the loss in every family."""
import numpy as np
import pytest

import shendu
from shendu import models, nn, optim

# The published counts: the papers' and torchvision's model tables (1000 classes, 3×224×224),
# and for the CIFAR networks the ResNet paper's table 6 as reimplemented with option-A
# shortcuts (0.27M, 0.46M, 0.66M, 0.85M, 1.7M), 10 classes, 3×32×32.
IMAGENET = {"vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848,
            "vgg13_bn": 133_053_736, "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
            "vgg19": 143_667_240, "vgg19_bn": 143_678_248, "resnet18": 11_689_512,
            "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
            "resnet152": 60_192_808, "googlenet": 6_998_552}
CIFAR = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
         "resnet110": 1_727_962}


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_parameter_counts(name):
    shendu.manual_seed(0)
    model = models.get(name, num_classes=1000, input_shape=(3, 224, 224))
    assert model.num_parameters() == IMAGENET[name]


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_parameter_counts_and_plain_twins(name):
    residual = models.get(name, input_shape=(3, 32, 32))
    plain = models.get(name.replace("resnet", "plain"), input_shape=(3, 32, 32))
    assert residual.num_parameters() == plain.num_parameters() == CIFAR[name]
    blocks = [m for m in residual.modules() if isinstance(m, nn.Residual)]
    assert len(blocks) == (int(name[6:]) - 2) // 2  # a shortcut around every pair of layers
    assert not any(isinstance(m, nn.Residual) for m in plain.modules())


def weight_layers(model):
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()
               if not _in_shortcut(model, m))


def _in_shortcut(model, module):
    return any(r.shortcut is not None and module in r.shortcut.modules()
               for r in model.modules() if isinstance(r, nn.Residual))


@pytest.mark.parametrize("name,layers", [("vgg16", 16), ("vgg19", 19), ("resnet18", 18),
                                         ("resnet50", 50), ("resnet152", 152),
                                         ("resnet56", 56), ("plain110", 110)])
def test_depth_is_the_number_in_the_name(name, layers):
    """Weight layers on the main path (projection shortcuts are not counted, as in the papers),
    at the size each was designed for (small VGGs have one fully connected layer, not three)."""
    shape = (3, 32, 32) if name[-2:] in ("56", "10") else (3, 224, 224)
    model = models.get(name, num_classes=1000, input_shape=shape, width=0.125)
    assert weight_layers(model) == layers


SMALL = sorted(set(models.names()) - {"deepconvnet"})


def test_bncnn_counts_and_shapes():
    """Deotte's network, counted by hand: convolutions without biases (BatchNorm follows),
    BatchNorm's γ and β, the classifier."""
    convs = 1 * 32 * 9 + 32 * 32 * 9 + 32 * 32 * 25 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 64 * 25 \
        + 64 * 128 * 16
    norms = 2 * (3 * 32 + 3 * 64 + 128)
    model = models.get("bncnn")
    assert model.num_parameters() == convs + norms + 128 * 10 + 10 == 325_994
    shapes, x = [], np.zeros((2, 1, 28, 28), np.float32)
    for layer in model.eval():
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            shapes.append(x.shape[2:])
    assert shapes == [(26, 26), (24, 24), (12, 12), (10, 10), (8, 8), (4, 4), (1, 1)]
    assert x.shape == (2, 10)
    with pytest.raises(shendu.ShenduError, match="25×25"):
        models.get("bncnn", input_shape=(1, 24, 24))


def test_fastnet_counts_and_shapes():
    convs = 1 * 16 * 25 + 16 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9  # no biases: BatchNorm follows
    norms = 2 * (16 + 32 + 64 + 64)
    model = models.get("fastnet")
    assert model.num_parameters() == convs + norms + 64 * 3 * 3 * 10 + 10 == 66_426
    shapes, x = [], np.zeros((2, 1, 28, 28), np.float32)
    for layer in model.eval():
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            shapes.append(x.shape[1:])
    assert shapes == [(16, 14, 14), (32, 14, 14), (32, 7, 7), (64, 7, 7), (64, 7, 7), (64, 3, 3)]
    assert x.shape == (2, 10)
    with pytest.raises(shendu.ShenduError, match="8×8"):
        models.get("fastnet", input_shape=(1, 6, 6))
    wide = 1 * 32 * 25 + 32 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9 + 2 * (32 + 64 + 128 + 128)
    assert models.get("fastnet", width=2).num_parameters() == wide + 128 * 9 * 10 + 10 == 252_650


def test_deep_narrow_and_shallow_wide_counts_and_shapes():
    """The experiment depth_and_data's pair, counted by hand: six weight layers against two,
    the same weights and multiply-adds within 5%."""
    deep = models.get("deepnarrow")
    convs = 1 * 8 * 9 + 8 + 8 * 16 * 9 + 16 + 16 * 32 * 9 + 32 + 2 * (32 * 32 * 9 + 32)
    assert deep.num_parameters() == convs + 32 * 3 * 3 * 10 + 10 == 27_274
    shallow = models.get("shallowwide")
    assert shallow.num_parameters() == 45 * 121 + 45 + 45 * 7 * 7 * 10 + 10 == 27_550
    assert shendu.summary(deep).total_macs == 4_123_584
    assert shendu.summary(shallow).total_macs == 4_290_930
    for model, expected in ((deep, [(8, 28, 28), (16, 28, 28), (16, 14, 14), (32, 14, 14),
                                    (32, 14, 14), (32, 7, 7), (32, 7, 7), (32, 3, 3)]),
                            (shallow, [(45, 28, 28), (45, 7, 7)])):
        shapes, x = [], np.zeros((2, 1, 28, 28), np.float32)
        for layer in model.eval():
            x = layer(x)
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                shapes.append(x.shape[1:])
        assert shapes == expected and x.shape == (2, 10)
    assert weight_layers(deep) == 6 and weight_layers(shallow) == 2
    with pytest.raises(shendu.ShenduError, match="8×8"):
        models.get("deepnarrow", input_shape=(1, 7, 7))
    with pytest.raises(shendu.ShenduError, match="4×4"):
        models.get("shallowwide", input_shape=(1, 3, 3))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", SMALL)
def test_small_images(name, shape):
    shendu.manual_seed(0)
    model = models.get(name, input_shape=shape, width=0.25)
    x = np.random.default_rng(0).random((2, *shape), np.float32)
    y = model(x)
    assert y.shape == (2, 10) and np.isfinite(y).all()
    assert model.backward(np.ones_like(y)).shape == x.shape
    assert model.config["input_shape"] == list(shape)


def test_width_scales_the_channels():
    narrow = models.get("vgg11", width=0.25)
    convs = [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64, 64, 128, 128, 128, 128]


def test_cifar_depth_must_be_6n_plus_2():
    with pytest.raises(shendu.ShenduError, match="6n \\+ 2"):
        models.CifarResNet(depth=21)


FAMILIES = {"vgg11_bn": {"width": 0.25}, "googlenet": {"width": 0.125},
            "resnet18": {"width": 0.125}, "resnet20": {}, "plain20": {}}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_training_step_lowers_the_loss(name):
    shendu.manual_seed(0)
    model = models.get(name, **FAMILIES[name])
    rng = np.random.default_rng(1)
    x, t = rng.random((16, 1, 28, 28), np.float32), rng.integers(0, 10, 16)
    loss_fn, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3)
    model.eval()  # the same function before and after the step (no dropout, fixed BatchNorm)
    before = loss_fn(model(x), t)
    model.backward(loss_fn.backward())
    opt.step()
    assert loss_fn(model(x), t) < before


@pytest.mark.parametrize("name", ["vgg11", "googlenet", "resnet50"])
def test_imagenet_forward(name):
    """The ImageNet stems and classifiers run (narrow, to stay quick): 224×224 in, 1000 out."""
    model = models.get(name, num_classes=1000, input_shape=(3, 224, 224), width=0.125).eval()
    y = model(np.random.default_rng(0).random((1, 3, 224, 224), np.float32))
    assert y.shape == (1, 1000) and np.isfinite(y).all()


def test_an_option_the_model_does_not_take_is_named():
    with pytest.raises(shendu.ShenduError, match="model 'deepconvnet' has no option 'width'; "
                                                 "its options: num_classes, input_shape, dropout"):
        models.get("deepconvnet", width=2)
    with pytest.raises(shendu.ShenduError, match="model 'vgg16' has no option 'depth'"):
        models.get("vgg16", depth=11)  # the depth is the name's


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    shendu.manual_seed(0)
    model = models.get("resnet20", zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, nn.Residual)]
    assert len(blocks) == 9 and all(not b.body[-1].weight.data.any() for b in blocks)
    x = np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(blocks[0](x), np.maximum(x, 0))  # identity shortcut, then ReLU
    plain = models.get("resnet20")
    assert all(b.body[-1].weight.data.all() for b in plain.modules()
               if isinstance(b, nn.Residual))
