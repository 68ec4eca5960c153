"""Layers with hand-written backward passes, named as in PyTorch."""
from .layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     GlobalAvgPool2d, Linear, MaxPool2d, ReLU, Sigmoid, Tanh)
from .graph import Concat, Residual
from .loss import CrossEntropyLoss, log_softmax, softmax
from .module import Module, Parameter, Sequential, enable_grad, no_grad

__all__ = ["Module", "Parameter", "Sequential", "Residual", "Concat", "no_grad", "enable_grad", "Linear", "Conv2d",
           "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten", "ReLU", "Sigmoid", "Tanh",
           "Dropout", "BatchNorm1d", "BatchNorm2d", "CrossEntropyLoss", "softmax", "log_softmax"]
