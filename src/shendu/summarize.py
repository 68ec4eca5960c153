"""`shendu.summary(model)`: a table of the layers, what each outputs, how many parameters it has and
how many multiply-adds one image costs in it.

    >>> print(shendu.summary(shendu.models.get("deepconvnet")))

The shapes are measured, not computed: one zero image goes through the model in eval mode, layer
by layer. Containers are opened up: a Sequential into its layers, a Residual into its body's then
its shortcut's layers and a row for their sum, a Concat into each branch's layers and a row for
the concatenation; any other container is one row. The receptive field of each feature map (field
size and effective stride, in input pixels) comes from `shendu.receptive`.
"""
import math

import numpy as np

from . import receptive
from .errors import ShenduError
from .nn import Concat, Conv2d, Linear, Residual, Sequential, device_of
from .train import inference

__all__ = ["summary", "Summary"]


class Summary(list):
    """The rows, each a dict (name, type, output_shape, parameters, macs); printed as a table.
    `fields[i]` is row i's receptive field (size, effective stride), None where the output is no
    longer a feature map."""

    def __init__(self, rows, fields, input_shape):
        super().__init__(rows)
        self.fields = list(fields)
        self.input_shape = tuple(input_shape)
        self.total_parameters = sum(row["parameters"] for row in rows)
        self.total_macs = sum(row["macs"] for row in rows)

    def __str__(self):
        def shape(s):
            return "x".join(map(str, s))
        def field(f):
            return "" if f is None else f"{f[0]}x{f[0]} /{f[1]}"
        table = [("Layer", "Type", "Output shape", "Field /stride", "Parameters", "Multiply-adds"),
                 ("input", "", shape(self.input_shape), "1x1 /1", "", "")]
        table += [(r["name"], r["type"], shape(r["output_shape"]), field(f),
                   f"{r['parameters']:,}", f"{r['macs']:,}") for r, f in zip(self, self.fields)]
        widths = [max(len(row[i]) for row in table) for i in range(6)]

        def line(row):
            return "  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths)),
                              *(c.rjust(w) for c, w in zip(row[4:], widths[4:]))]).rstrip()
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
    rows, fields = [], []
    with inference(model):
        image = device_of(model).array(np.zeros((1, *input_shape), np.float32))
        _walk(model, image, (1, 1, 0), "", rows, fields)
    return Summary(rows, fields, input_shape)


def _walk(module, x, field, name, rows, fields):
    """Add the rows of `module` on input x, whose units see `field` = (size, stride, padding);
    return its output and the output's field (None once the output is not a feature map)."""
    def walk(key, sub, x=x, field=field):
        return _walk(sub, x, field, f"{name}.{key}" if name else key, rows, fields)

    if isinstance(module, Sequential):
        for key, sub in module._modules.items():
            x, field = walk(key, sub, x, field)
        return x, field
    if isinstance(module, (Residual, Concat)):
        if isinstance(module, Residual):
            paths = [walk("body", module.body), (x, field) if module.shortcut is None
                     else walk("shortcut", module.shortcut)]
        else:
            paths = [walk(key, sub) for key, sub in module._modules.items()]
        # the block joins its paths' outputs (sum or concatenation) and checks their shapes;
        # its parameters and multiply-adds are in the paths' rows
        y = module.join([out for out, _ in paths])
        joined = [f for _, f in paths]
        field = None if None in joined else max(joined, key=lambda f: f[0])  # the widest path
        return _row(name, module, y, field, parameters=0, macs=0, rows=rows, fields=fields)
    y = module(x)
    return _row(name, module, y, _grown(field, module, y), parameters=module.num_parameters(),
                macs=_multiply_adds(module, y), rows=rows, fields=fields)


def _grown(field, layer, y):
    if field is None or y.ndim != 4:
        return None
    try:
        spec = receptive.layer_of(layer)
    except ShenduError:  # a layer of unknown geometry: what its units see is unknown too
        return None
    return field if spec is None else receptive.grow(field, spec)


def _row(name, module, y, field, parameters, macs, rows, fields):
    rows.append({"name": name or type(module).__name__, "type": type(module).__name__,
                 "output_shape": tuple(y.shape[1:]), "parameters": parameters, "macs": macs})
    fields.append(None if field is None else field[:2])
    return y, field


def _multiply_adds(layer, y):
    """Multiply-adds for one image: each output of a convolution sums in·k² products, each
    output of an affine layer in_features; other layers' arithmetic is negligible beside them."""
    if isinstance(layer, Conv2d):
        return math.prod(y.shape[1:]) * layer.in_channels * layer.kernel_size ** 2
    if isinstance(layer, Linear):
        return layer.in_features * layer.out_features
    return 0
