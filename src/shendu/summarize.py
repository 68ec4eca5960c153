"""`shendu.summary(model)`: a table of the layers, what each outputs, how many parameters it has and
how many multiply-adds one image costs in it.

    >>> print(shendu.summary(shendu.models.get("deepconvnet")))

The shapes are measured, not computed: one zero image goes through the model in eval mode, layer
by layer (Sequential containers are opened up; any other container is one row).
"""
import numpy as np

from .errors import ShenduError
from .nn import Conv2d, Linear, Sequential
from .train import inference

__all__ = ["summary", "Summary"]


class Summary(list):
    """The rows, each a dict (name, type, output_shape, parameters, macs); printed as a table."""

    def __init__(self, rows, input_shape):
        super().__init__(rows)
        self.input_shape = tuple(input_shape)
        self.total_parameters = sum(row["parameters"] for row in rows)
        self.total_macs = sum(row["macs"] for row in rows)

    def __str__(self):
        def shape(s):
            return "x".join(map(str, s))
        table = [("Layer", "Type", "Output shape", "Parameters", "Multiply-adds"),
                 ("input", "", shape(self.input_shape), "", "")]
        table += [(r["name"], r["type"], shape(r["output_shape"]), f"{r['parameters']:,}",
                   f"{r['macs']:,}") for r in self]
        widths = [max(len(row[i]) for row in table) for i in range(5)]

        def line(row):
            return "  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths)),
                              *(c.rjust(w) for c, w in zip(row[3:], widths[3:]))]).rstrip()
        rule = "-" * len(line(table[0]))
        return "\n".join([line(table[0]), rule, *map(line, table[1:]), rule,
                          f"Total parameters: {self.total_parameters:,}",
                          f"Multiply-adds per image: {self.total_macs:,}"])

    __repr__ = __str__  # a notebook cell ending in summary(...) shows the table


def summary(model, input_shape=None):
    """Walk one zero image of `input_shape` (C, H, W; default: the model's config) through the
    model and return a Summary: a row per layer, shown as a table."""
    if input_shape is None:
        input_shape = getattr(model, "config", {}).get("input_shape")
        if input_shape is None:
            raise ShenduError("summary needs input_shape (C, H, W) for a model without a config")
    rows = []
    with inference(model):
        _walk(model, np.zeros((1, *input_shape), np.float32), "", rows)
    return Summary(rows, input_shape)


def _walk(module, x, name, rows):
    if isinstance(module, Sequential):
        for child_name, child in module._modules.items():
            x = _walk(child, x, f"{name}.{child_name}" if name else child_name, rows)
        return x
    y = module(x)
    rows.append({"name": name or type(module).__name__, "type": type(module).__name__,
                 "output_shape": tuple(y.shape[1:]), "parameters": module.num_parameters(),
                 "macs": _multiply_adds(module, y)})
    return y


def _multiply_adds(layer, y):
    """Multiply-adds for one image: each output of a convolution sums in·k² products, each
    output of an affine layer in_features; other layers' arithmetic is negligible beside them."""
    if isinstance(layer, Conv2d):
        return y[0].size * layer.in_channels * layer.kernel_size ** 2
    if isinstance(layer, Linear):
        return layer.in_features * layer.out_features
    return 0
