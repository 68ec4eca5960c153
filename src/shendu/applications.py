"""The trained scene networks at work, on a batch of images (N, 1, H, W), uint8 or float in
[0, 1], light ink on dark (`images.load_scene` makes them from files): `segment` labels each
pixel, `caption` writes the digits, `detect` finds them. The command line, the experiment
`applications` and chapter 7 all call these."""
import numpy as np

from . import kernels
from .detection import RCNN, decode
from .train import _as_input, _positive_int, device_of, inference


def _batches(model, images, batch_size):
    """The model's inputs, batch by batch: float32 on its device."""
    K = device_of(model)
    for i in range(0, len(images), _positive_int("batch_size", batch_size)):
        yield K.array(_as_input(np.asarray(images[i:i + batch_size])))


def segment(model, images, batch_size=100):
    """Each pixel's likeliest class (0 background, d + 1 digit d): uint8 (N, H, W)."""
    with inference(model):
        return np.concatenate([kernels.to_host(model(x)).argmax(axis=1).astype(np.uint8)
                               for x in _batches(model, images, batch_size)])


def caption(model, images, beam=1, batch_size=100):
    """Each image's caption (see Captioner.caption: greedy, or a beam search of width beam)."""
    with inference(model):
        return [text for x in _batches(model, images, batch_size)
                for text in model.caption(x, beam=beam)]


def detect(detector, images, batch_size=100):
    """What a detector finds in each image: a list of detection.Detections. `detector` is an
    R-CNN (detection.RCNN) or a grid detector network (its outputs decoded by
    detection.decode)."""
    if isinstance(detector, RCNN):
        return detector.detect(_as_input(np.asarray(images))[:, 0])
    with inference(detector):
        return [found for x in _batches(detector, images, batch_size)
                for found in decode(detector(x))]
