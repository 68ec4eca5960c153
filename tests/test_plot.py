"""The notebooks' figures: what each draws, counted from the figure (one box per layer, one
line per run, one image per filter or map)."""
import matplotlib
import numpy as np

import shendu
from shendu import models, nn, plot
from matplotlib.patches import FancyBboxPatch

matplotlib.use("Agg")


def labels(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def boxes(fig):
    return [p for ax in fig.axes for p in ax.patches if isinstance(p, FancyBboxPatch)]


def test_block_diagram_draws_every_layer_of_an_inception_block():
    fig = plot.block_diagram(models.inception(8, 4, 2, 4, 2, 3, 2), "block")
    text = labels(fig)
    assert len(boxes(fig)) == 2 + 4 + 4 + 3  # the branches' layers, each a box
    assert text.count("ReLU") == 6 and "max pool 3×3" in text and "concatenate" in text
    assert {"conv 1×1, 4", "conv 3×3, 4", "conv 5×5, 3", "conv 1×1, 2"} <= set(text)


def test_block_diagram_of_a_residual_block_shows_the_sum_and_projection():
    fig = plot.block_diagram(models.bottleneck_block(8, 2, stride=2))
    text = labels(fig)
    assert "⊕" in text and "conv 1×1, 8, /2" in text and "conv 3×3, 2, /2" in text
    assert len(boxes(fig)) == 3 + 3 + 2 + 2 + 1  # body: 3 conv, 3 BN, 2 ReLU; shortcut 2; ReLU
    identity = plot.block_diagram(models.basic_block(4, 4))
    assert len(boxes(identity)) == 5 + 1 and "⊕" in labels(identity)


def test_run_curves_one_line_per_run_and_probe():
    runs = {"plain20": {"step_losses": [2.3] * 40, "probe_errors": [(10, 0.5), (20, 0.4)]},
            "resnet20": {"step_losses": list(np.linspace(2.3, 0.5, 40)),
                         "probe_errors": [(10, 0.3), (20, 0.2)]}}
    fig = plot.run_curves(runs, smooth=10)
    loss_ax, error_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["plain20", "resnet20"]
    assert loss_ax.lines[0].get_linestyle() == "--" and loss_ax.lines[1].get_linestyle() == "-"
    assert loss_ax.lines[0].get_color() == loss_ax.lines[1].get_color()  # twins share a colour
    assert len(loss_ax.lines[1].get_xdata()) == 31  # moving average over 10 of 40 steps
    np.testing.assert_allclose(error_ax.lines[1].get_ydata(), [30, 20])
    no_probes = plot.run_curves({"resnet": {"step_losses": [1.0, 0.5]}})
    assert len(no_probes.axes) == 1


def test_filters_and_feature_maps():
    shendu.manual_seed(0)
    model = models.DeepConvNet()
    fig = plot.filters(model[0])
    assert sum(bool(ax.images) for ax in fig.axes) == 16
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), model[0].weight.data[3, 0])
    image = np.random.default_rng(0).random((28, 28), np.float32)
    fig = plot.feature_maps(model, image, depths=(1, 4), channels=4)
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 8
    with nn.no_grad():
        expected = model[1](model[0](image[None, None]))
    np.testing.assert_allclose(shown[2], expected[0, 2], rtol=1e-6)
    assert shown[4].shape == (14, 14)  # after the first pooling


def test_augmentations_draws_originals_then_draws_of_each_transform():
    import matplotlib.pyplot as plt
    from shendu import augment
    x = np.zeros((2, 1, 8, 8), np.uint8)
    x[:, 0, 2:6, 3] = 255
    fig = plot.augmentations(x, {"flip": augment.RandomHorizontalFlip(p=1),
                                 "erase all": augment.RandomErasing(p=1, scale=(1, 1),
                                                                    ratio=(1, 1))}, copies=3)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    assert len(shown) == 8 and fig.axes[0].get_ylabel() == "flip"
    np.testing.assert_array_equal(shown[0], x[0, 0] / 255)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(shown[k], x[0, 0, :, ::-1] / 255)
        assert not shown[4 + k].any()  # the whole image erased
    plt.close(fig)


def test_underflow_draws_a_histogram_bar_per_bin_and_two_bars_per_layer():
    entry = {"log2_bins": [13, 14, 15, 16], "log2_counts": [1, 1, 2],
             "layers": [{"layer": "0 Conv2d", "output": 0.5, "weight": 0.25},
                        {"layer": "3 Linear", "output": 0.0, "weight": 0.125}]}
    fig = plot.underflow({"a": entry, "b": entry})
    hist, bars = fig.axes
    heights = [p.get_height() for p in hist.patches if p.get_width() < 1][:3]
    np.testing.assert_allclose(heights, [25, 25, 50])  # percentages of the four values
    widths = sorted(p.get_width() for p in bars.patches)
    np.testing.assert_allclose(widths, sorted([50, 25, 0, 12.5] * 2))
    assert [t.get_text() for t in bars.get_yticklabels()] == ["Conv2d 0", "Linear 3"]
    (largest,) = hist.lines  # float16's largest value, inside the axes, not on their edge
    assert hist.get_xlim()[0] < largest.get_xdata()[0] < hist.get_xlim()[1] - 0.5


def test_ilsvrc_draws_a_bar_per_row_and_the_human_line():
    rows = models.ILSVRC_TOP5
    fig = plot.ilsvrc(rows, models.ILSVRC_HUMAN_TOP5)
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [r["top5_error"] for r in rows])
    xs = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    assert all(abs(x - r["year"]) < 0.4 for x, r in zip(xs, rows))
    assert xs == sorted(xs) and len(set(xs)) == len(rows)  # same-year rows side by side
    (line,) = ax.lines
    assert line.get_linestyle() == "--" and line.get_ydata()[0] == 5.1
    assert "VGG\n7.3%" in labels(fig)


def test_transfer_draws_a_dot_per_run_and_a_bar_per_way():
    runs = {"100": {"runs": [{"way": w, "seed": s, "test_acc": a + s / 100}
                             for w, a in (("probe", 0.5), ("scratch", 0.7)) for s in (0, 1, 2)]},
            "1000": {"runs": [{"way": "probe", "seed": 0, "test_acc": 0.9}]}}
    fig = plot.transfer(runs, labels={"probe": "linear probe"})
    first, second = fig.axes
    np.testing.assert_allclose([p.get_height() for p in first.patches], [51, 71])
    assert [len(line.get_ydata()) for line in first.lines] == [3, 3]
    assert [t.get_text() for t in first.get_xticklabels()] == ["linear probe", "scratch"]
    assert len(second.patches) == 1 and second.get_title() == "1,000 labelled digits"


def test_depth_and_data_draws_a_dot_per_run_and_a_line_of_medians():
    import matplotlib.pyplot as plt
    networks = {"deep": {"weight_layers": 6, "parameters": 100},
                "shallow": {"weight_layers": 2, "parameters": 101}}
    runs = {str(n): {"train_images": n,
                     "runs": [{"network": name, "seed": s, "test_acc": acc + s / 100}
                              for name, acc in (("deep", 0.9), ("shallow", 0.8))
                              for s in range(3 if n < 1000 else 1)],
                     "median_test_acc": {"deep": 0.91, "shallow": 0.81}}
            for n in (500, 1000)}
    fig = plot.depth_and_data({"networks": networks, "runs": runs})
    accuracy, error = fig.axes
    for ax, (deep, shallow) in ((accuracy, (91, 81)), (error, (9, 19))):
        lines = {line.get_label(): line for line in ax.lines}
        medians = [line for label, line in lines.items() if "median" in label]
        assert len(medians) == 2 and "6 weight layers, 100 weights" in medians[0].get_label()
        np.testing.assert_allclose(medians[0].get_ydata(), [deep, deep])
        np.testing.assert_allclose(medians[1].get_ydata(), [shallow, shallow])
        np.testing.assert_allclose(medians[0].get_xdata(), [500, 1000])
        dots = [line for line in ax.lines if line.get_marker() == "o"]
        assert [len(d.get_xdata()) for d in dots] == [4, 4]  # three seeds, then one
        assert dots[0].get_xdata()[0] < 500 < dots[1].get_xdata()[0]  # shifted apart
        assert ax.get_xscale() == "log"
    np.testing.assert_allclose(accuracy.lines[3].get_ydata(), [80, 81, 82, 80])
    np.testing.assert_allclose(error.lines[3].get_ydata(), [20, 19, 18, 20])
    assert error.get_yscale() == "log"
    plt.close(fig)


def test_accuracy_by_epoch_draws_a_line_per_run_coloured_by_group():
    import matplotlib.pyplot as plt
    runs = {"float32": [{"seed": s, "test_acc_by_epoch": [0.9, 0.95, 0.97 + s / 100]}
                        for s in (0, 1)],
            "mixed": [{"seed": 1, "test_acc_by_epoch": [0.91, 0.96, 0.99]}]}
    fig = plot.accuracy_by_epoch(runs, first=2)
    (ax,) = fig.axes
    assert [list(line.get_xdata()) for line in ax.lines] == [[2, 3]] * 3
    np.testing.assert_allclose([line.get_ydata() for line in ax.lines],
                               [[95, 97], [95, 98], [96, 99]])
    colours = [line.get_color() for line in ax.lines]
    assert colours[0] == colours[1] != colours[2]
    assert ax.lines[1].get_linestyle() == ax.lines[2].get_linestyle()  # seed 1 both times
    assert ax.get_legend_handles_labels()[1][2] == "mixed, seed 1"
    plt.close(fig)
