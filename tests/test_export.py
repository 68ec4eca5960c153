"""Export to ONNX (shendu.export), checked by running the files in onnxruntime: every model of the
zoo computes the same logits there as in shendu; trained DeepConvNet, ResNet-20 and VGG-11-BN
predict the same class for all 10,000 MNIST test digits, their logits within 1e-4; and the
command line writes the file, or says in one line why not."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import shendu
from shendu import datasets, export, models, nn, optim

ort = pytest.importorskip("onnxruntime", reason="pip install -e '.[dev]'")
onnx = pytest.importorskip("onnx", reason="pip install -e '.[dev]'")


def run_onnx(path, images, optimized=True):
    """The logits ONNX Runtime computes, with its graph optimizations (what a deployment runs:
    for a QDQ model, integer kernels of its own) or without (the graph as written)."""
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"images": images[i:i + 500]})[0]
                           for i in range(0, len(images), 500)])


def logits(model, images):
    with nn.no_grad():
        return np.concatenate([model(images[i:i + 500]) for i in range(0, len(images), 500)])


@pytest.mark.parametrize("name", models.names())
def test_every_model_computes_the_same_logits_in_onnxruntime(name, tmp_path):
    options = {"width": 0.25} if "width" in inspect.signature(models._REGISTRY[name]).parameters \
        else {}  # the large ones at a quarter of their width: the same layers, fewer weights
    shendu.manual_seed(0)
    model = models.get(name, input_shape=(1, 28, 28), **options)
    rng = np.random.default_rng(0)
    model.train()  # BatchNorm's running statistics away from (0, 1), as after training
    for _ in range(3):
        model(rng.random((8, 1, 28, 28), dtype=np.float32))
    model.eval()
    proto = export.onnx(model, tmp_path / "model.onnx")
    assert proto.opset_import[0].version == export.OPSET
    images = rng.random((4, 1, 28, 28), dtype=np.float32)
    expected = logits(model, images)
    np.testing.assert_allclose(run_onnx(tmp_path / "model.onnx", images), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope="module")
def mnist():
    (x, t), (x_test, t_test) = datasets.load_mnist()
    return (x[:3000], t[:3000]), (x_test.astype(np.float32) / 255, t_test)


@pytest.mark.parametrize("name, options", [("deepconvnet", {}), ("resnet20", {}),
                                           ("vgg11_bn", {"width": 0.25})])
def test_trained_models_predict_the_same_digits_in_onnxruntime(name, options, mnist, tmp_path):
    (x, t), (x_test, t_test) = mnist
    shendu.manual_seed(0)
    model = models.get(name, input_shape=(1, 28, 28), **options)
    shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=100, progress=False).fit(
        (x, t), (x_test[:500], t_test[:500]))
    model.eval()
    export.onnx(model, tmp_path / "model.onnx")
    ours, theirs = logits(model, x_test), run_onnx(tmp_path / "model.onnx", x_test)
    assert np.mean(ours.argmax(1) == t_test) > 0.3  # trained (chance: 0.1): logits mean something
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    assert np.abs(ours - theirs).max() <= 1e-4


class Unknown(nn.Module):
    def forward(self, x):
        return x


def test_a_layer_onnx_does_not_know_is_refused_by_name(tmp_path):
    model = nn.Sequential(nn.Flatten(), Unknown(), nn.Linear(784, 10))
    with pytest.raises(shendu.ShenduError, match="cannot export a Unknown to ONNX"):
        export.onnx(model, tmp_path / "model.onnx", input_shape=(1, 28, 28))
    with pytest.raises(shendu.ShenduError, match="give input_shape"):
        export.onnx(nn.Sequential(nn.Flatten()), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_the_command_line_exports_a_run(tmp_path):
    shendu.manual_seed(0)
    model = models.get("resnet20", input_shape=(1, 28, 28))
    shendu.save(model, tmp_path / "run")
    out = tmp_path / "resnet20.onnx"
    out.write_bytes(b"an older export")
    result = subprocess.run([sys.executable, "-m", "shendu", "export", tmp_path / "run", out],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} (ONNX opset {export.OPSET})" in result.stdout
    images = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(out, images), logits(shendu.load(tmp_path / "run"), images),
                               rtol=1e-4, atol=1e-4)

    no_onnx = tmp_path / "no_onnx"
    (no_onnx / "onnx").mkdir(parents=True)
    (no_onnx / "onnx" / "__init__.py").write_text("raise ImportError('No module named onnx')")
    before = out.read_bytes()
    result = subprocess.run([sys.executable, "-m", "shendu", "export", tmp_path / "run", out],
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{no_onnx}{os.pathsep}"
                                                             f"{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 2
    assert result.stderr == ("shendu: error: exporting to ONNX needs the onnx package: pip "
                             "install onnx\n")
    assert out.read_bytes() == before  # nothing already written is lost


def test_int8_and_binary_models_export_and_agree_with_onnxruntime(mnist, tmp_path):
    """The int8 model in QDQ form, run as written, computes what shendu's does (the same int8
    inputs and weights; a sum in float32 instead of int32 may put a value on the other side of
    a rounding to int8 now and then); optimized, ONNX Runtime fuses it into integer kernels that
    also round each output to int8, and reaches about the same accuracy."""
    (x, t), (x_test, t_test) = mnist
    shendu.manual_seed(0)
    model = models.get("deepconvnet")
    shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=100, progress=False).fit(
        (x, t), (x_test[:500], t_test[:500]))
    model.eval()
    for name, low in (("int8", shendu.quantize(model, x[:300])), ("binary", shendu.binarize(model))):
        proto = export.onnx(low, tmp_path / f"{name}.onnx")
        if name == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
        path, images = tmp_path / f"{name}.onnx", x_test[:2000]
        ours, theirs = logits(low, images), run_onnx(path, images, optimized=False)
        assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.995, name
        assert np.abs(ours - theirs).max() <= (0.05 if name == "int8" else 1e-4) * np.abs(
            ours).max(), name
        deployed = run_onnx(path, images).argmax(1)
        assert abs(np.mean(deployed == t_test[:2000]) - np.mean(ours.argmax(1) == t_test[:2000])) \
            <= 0.02, name
