"""Module, Parameter and Sequential: the bookkeeping every layer shares.

Like DeZero and PyTorch, assigning a Parameter or a Module to an attribute registers it, so
`parameters()` and `state_dict()` never need hard-coded layer indices.
"""
from contextlib import contextmanager

import numpy as np

from .. import kernels
from ..errors import ShenduError

# Whether forward passes keep what backward needs: on, except inside no_grad(). Independent of
# train()/eval(), as in PyTorch: a model in eval mode can still be differentiated.
_GRAD_MODE = [True]


@contextmanager
def no_grad():
    """Forward passes inside keep nothing for backward (inference: less memory, less work).
    `evaluate`, `predict_proba` and the command line's evaluate and predict run inside it."""
    _GRAD_MODE.append(False)
    try:
        yield
    finally:
        _GRAD_MODE.pop()


@contextmanager
def enable_grad():
    """Forward passes inside keep what backward needs again (within an enclosing no_grad())."""
    _GRAD_MODE.append(True)
    try:
        yield
    finally:
        _GRAD_MODE.pop()


FLOAT_DTYPES = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
                **kernels.narrow.DTYPES}


def float_dtype(dtype):
    """The NumPy dtype a model can be stored in, from its name ("float64", "float32",
    "float16", "bfloat16") or itself; ShenduError for any other."""
    try:
        found = FLOAT_DTYPES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    except (KeyError, TypeError):
        found = None
    if found is None or dtype is None or found not in FLOAT_DTYPES.values():
        raise ShenduError(f"a model is stored as one of {', '.join(FLOAT_DTYPES)}, not {dtype!r}")
    return found


class Parameter:
    """A learnable array and the gradient of the last backward pass."""

    def __init__(self, data):
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: subclasses define `forward(x)` and `backward(dy)` and may cache between them."""

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise ShenduError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        kind = (self._params if isinstance(value, Parameter)
                else self._modules if isinstance(value, Module) else None)
        for registry in (self._params, self._modules):
            if registry is not kind:
                registry.pop(name, None)
        if kind is not None:
            self._buffers.pop(name, None)
            kind[name] = value  # a module replaced (nn.fuse) keeps its place, as in PyTorch
        object.__setattr__(self, name, value)  # a buffer given a new array stays a buffer

    def register_buffer(self, name, array):
        """State that is saved but not learned (BatchNorm's running statistics)."""
        object.__setattr__(self, name, array)
        self._buffers[name] = None

    # -- calling ------------------------------------------------------------------------------
    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    # Models trained by teacher forcing (a captioner): the Trainer passes them the targets too,
    # model(x, t), to read the words before each one it predicts.
    teacher_forced = False

    # Layers whose backward takes `input_grad=False` to skip dL/dx (see `data_backward`).
    accepts_input_grad = False

    # Mixed precision (shendu.mixed.computing): the 16-bit type the module computes in while
    # its parameters stay as they are; None: the parameters' own type.
    compute = None

    @property
    def keeps_cache(self):
        """Whether this forward pass must keep what backward needs (not inside no_grad())."""
        return _GRAD_MODE[-1]

    def _cached(self, value):
        if value is None:
            raise ShenduError(f"{type(self).__name__}.backward needs a forward pass first, "
                              "outside shendu.nn.no_grad()")
        return value

    # -- structure ----------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self):
        return [(f"{prefix}.{name}" if prefix else name, p)
                for prefix, m in self.named_modules() for name, p in m._params.items()]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        return [(f"{prefix}.{name}" if prefix else name, getattr(m, name))
                for prefix, m in self.named_modules() for name in m._buffers]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            kernels.of(p.grad).fill(p.grad, 0)

    # -- modes --------------------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move every parameter (data and gradient) and buffer to `device`, "cpu" or "cuda"
        (numba.cuda device arrays, float32 or float16), and/or store them as `dtype` ("float64",
        "float32", "float16", "bfloat16", or a NumPy dtype: see `astype`), in place; returns the
        module. As in PyTorch, .to("cuda") raises where there is no GPU: `shendu.cuda_available()`
        tells first. A type alone may come first, as in PyTorch's .to(torch.float16):
        .to("float16"), .to(np.float64). A cast happens where the CPU holds the arrays when it can
        (after a move there, before a move to CUDA), so .to("cpu", dtype="float64") takes a model
        off CUDA."""
        if dtype is None and (not isinstance(device, (str, type(None))) or device in FLOAT_DTYPES):
            device, dtype = None, device
        K = None if device is None else kernels.device(device)
        dtype = None if dtype is None else float_dtype(dtype)
        to_cuda = K is not None and K is not kernels.cpu
        if to_cuda:  # refused before anything changes
            if dtype is not None:
                kernels.narrow.check_cuda_dtype(dtype)
            else:
                for name, a in self._arrays():
                    kernels.narrow.check_cuda_dtype(a.dtype, f" ({name}): call .float() first")
        if K is kernels.cpu:
            self._move(K)
        if dtype is not None:
            self.astype(dtype)
        if to_cuda:
            self._move(K)
        return self

    def _move(self, K):
        for m in self.modules():
            for p in m._params.values():
                p.data, p.grad = K.array(p.data), K.array(p.grad)
            for name in m._buffers:
                object.__setattr__(m, name, K.array(getattr(m, name)))

    def _arrays(self):
        return self.named_buffers() + [(name, p.data) for name, p in self.named_parameters()]

    def astype(self, dtype):
        """Store every parameter and buffer as `dtype`: float64 (gradient checks), float32 (the
        default), or in 16 bits, float16 or bfloat16 (see kernels.narrow: 16-bit storage,
        float32 arithmetic inside each kernel). Names as in `float_dtype`. On CUDA: float32 or
        float16, cast where the arrays are."""
        dtype = float_dtype(dtype)
        on_cuda = any(kernels.of(a).DEVICE != "cpu" for _, a in self._arrays())
        if on_cuda:
            kernels.narrow.check_cuda_dtype(dtype, ": move it to the CPU first (.to('cpu'))")
        for m in self.modules():
            for p in m._params.values():
                p.data = _as(p.data, dtype)
                p.grad = kernels.of(p.data).zeros(p.data.shape, dtype)
            for name in m._buffers:
                object.__setattr__(m, name, _as(getattr(m, name), dtype))
        return self

    def double(self):
        return self.astype("float64")

    def float(self):
        return self.astype("float32")

    def half(self):
        return self.astype("float16")

    def bfloat16(self):
        return self.astype("bfloat16")

    # -- state --------------------------------------------------------------------------------
    def state_dict(self):
        """Parameters and buffers by dotted name, in the canonical layout: NumPy copies, wherever
        the model is."""
        state = {name: kernels.host_copy(p.data) for name, p in self.named_parameters()}
        state.update({name: kernels.host_copy(b) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state, strict=True):
        """Set weights from a name → array mapping; names and shapes are checked first. The
        values go where the model is (its device, its dtype)."""
        targets = {name: (m, attr) for prefix, m in self.named_modules()
                   for attr in [*m._params, *m._buffers]
                   for name in [f"{prefix}.{attr}" if prefix else attr]}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        problems = []
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        for name in sorted(set(targets) & set(state)):
            want = _current(*targets[name]).shape
            got = np.shape(state[name])
            if tuple(got) != tuple(want):
                problems.append(f"{name}: shape {tuple(got)} in the file, {tuple(want)} in the model")
        if problems:
            raise ShenduError("state dict does not fit the model (" + "; ".join(problems) + ")")
        for name in set(targets) & set(state):
            m, attr = targets[name]
            old = _current(m, attr)
            value = kernels.of(old).array(np.array(kernels.to_host(state[name]), dtype=old.dtype))
            if attr in m._params:
                m._params[attr].data = value
            else:
                object.__setattr__(m, attr, value)
        return self

    # -- printing -----------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _as(a, dtype):
    """a stored as dtype: on CUDA by kernels.cuda.cast (float32 and float16), else by NumPy."""
    return a.astype(dtype) if kernels.of(a).DEVICE == "cpu" else kernels.narrow.cast(a, dtype)


def _current(module, attr):
    return module._params[attr].data if attr in module._params else getattr(module, attr)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse (the chain rule)."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        layers, i = list(self), 0
        while i < len(layers):
            after = layers[i + 1] if i + 1 < len(layers) else None
            if _folds(layers[i], after):  # the convolution applies the BatchNorm after it
                x, i = layers[i].forward_folded(x, after), i + 2
            else:
                x, i = layers[i](x), i + 1
        return x

    accepts_input_grad = True

    def backward(self, dy, input_grad=True):
        """dL/dx from dL/dy, through every layer in reverse. With input_grad=False (the input is
        data, as in training) the first layer skips dL/dx where it can, and None is returned."""
        first, *rest = self._modules.values()
        for layer in reversed(rest):
            dy = layer.backward(dy)
        return first.backward(dy) if input_grad else data_backward(first, dy)


def _folds(layer, after):
    """Whether `layer` computes `after` with it: in inference (eval mode, inside no_grad()) a
    BatchNorm2d is a fixed scale and shift per channel, which the weights and bias of a Conv2d
    just before it absorb (Conv2d.forward_folded): one pass over memory instead of two, or three
    with a ReLU (BatchNormReLU2d). Training and differentiation run the layers one by one."""
    return (getattr(layer, "forward_folded", None) is not None
            and getattr(after, "folds_into_conv", False)
            and not (_GRAD_MODE[-1] or layer.training or after.training))


def device_of(model):
    """The kernel module where the model's parameters live (kernels.cpu for a model without any):
    its input goes there."""
    params = model.parameters()
    return kernels.of(params[0].data) if params else kernels.cpu


def data_backward(module, dy):
    """Backward through a module whose input is data (a network's input in training): its
    parameters' gradients, without dL/dx, which nobody needs. A module whose backward can skip
    that product (accepts_input_grad: Conv2d, Linear, Sequential) skips it; another computes it
    and it is dropped. Returns None. The one place that decides it."""
    if module.accepts_input_grad:
        module.backward(dy, input_grad=False)
    else:
        module.backward(dy)
