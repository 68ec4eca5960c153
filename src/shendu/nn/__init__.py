"""Layers with hand-written backward passes, named as in PyTorch."""
from .layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormReLU2d, Conv2d, ConvReLU2d,
                     ConvTranspose2d, Dropout, Embedding, Flatten, GlobalAvgPool2d, Identity, Linear,
                     LeakyReLU, LSTM, MaxPool2d, ReLU, Sigmoid, Tanh, Upsample)
from .graph import Concat, Residual, ResidualReLU
from .fuse import fuse
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, log_softmax, softmax
from .module import (Module, Parameter, Sequential, data_backward, device_of, enable_grad,
                     no_grad)

__all__ = ["Module", "Parameter", "Sequential", "Residual", "ResidualReLU", "Concat", "no_grad",
           "enable_grad", "data_backward", "device_of", "fuse", "Linear", "Conv2d", "ConvReLU2d",
           "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Upsample", "Flatten",
           "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout", "BatchNorm1d", "BatchNorm2d",
           "BatchNormReLU2d", "Embedding", "LSTM", "CrossEntropyLoss", "BCEWithLogitsLoss",
           "HuberLoss", "softmax", "log_softmax"]
