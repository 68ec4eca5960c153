"""The trained scene networks at work, on a batch of images (N, 1, H, W), uint8 or float in
[0, 1], light ink on dark (`images.load_scene` makes them from files): `segment` labels each
pixel, `caption` writes the digits, `detect` finds them; `measure` scores a network at its task
on scenes with their truths. The command line, the experiment `applications` and chapter 7 all
call these."""
import time

import numpy as np

from . import kernels, metrics
from .detection import RCNN, decode
from .train import _as_input, device_batches, inference


def segment(model, images, batch_size=100):
    """Each pixel's likeliest class (0 background, d + 1 digit d): uint8 (N, H, W)."""
    with inference(model):
        return np.concatenate([kernels.to_host(model(x)).argmax(axis=1).astype(np.uint8)
                               for x in device_batches(model, images, batch_size)])


def caption(model, images, beam=1, batch_size=100):
    """Each image's caption (see Captioner.caption: greedy, or a beam search of width beam)."""
    with inference(model):
        return [text for x in device_batches(model, images, batch_size)
                for text in model.caption(x, beam=beam)]


def detect(detector, images, batch_size=100):
    """What a detector finds in each image: a list of detection.Detections. `detector` is an
    R-CNN (detection.RCNN) or a grid detector network (its outputs decoded by
    detection.decode)."""
    if isinstance(detector, RCNN):
        return detector.detect(_as_input(np.asarray(images))[:, 0])
    with inference(detector):
        return [found for x in device_batches(detector, images, batch_size)
                for found in decode(detector(x))]


def measure(task, model, scenes):
    """How well a model trained for `task` (a recipe's: segment, caption, detect, or regions,
    whose classifier works inside an R-CNN) does it on `scenes` (datasets.mnist_scenes).
    Returns (figures, predicted). figures: segment, the mean IoU over the 11 classes, per class
    and the pixel accuracy; caption, the exact captions and BLEU-4, greedy and with a beam of 3;
    detect and regions, the mean average precision (VOC, IoU 0.5) and per class; and for each
    the milliseconds per scene of its predictions (greedy for captions). predicted: the label
    maps, the beam's captions, or the Detections."""
    began = time.perf_counter()
    if task == "segment":
        predicted = segment(model, scenes.images)
    elif task == "caption":
        predicted = caption(model, scenes.images)
    else:
        predicted = detect(RCNN(model) if task == "regions" else model, scenes.images)
    per_scene_ms = round(1000 * (time.perf_counter() - began) / len(scenes.images), 2)
    if task == "segment":
        miou, per_class = metrics.segmentation_iou(predicted, scenes.masks, 11)
        figures = {"miou": miou, "per_class_iou": per_class,
                   "pixel_accuracy": float(np.mean(predicted == scenes.masks))}
    elif task == "caption":
        greedy, predicted = predicted, caption(model, scenes.images, beam=3)
        figures = {"exact_greedy": metrics.exact(greedy, scenes.captions),
                   "bleu4_greedy": metrics.bleu(greedy, scenes.captions),
                   "exact_beam3": metrics.exact(predicted, scenes.captions),
                   "bleu4_beam3": metrics.bleu(predicted, scenes.captions)}
    else:
        mean_ap, per_class = metrics.mean_average_precision(
            predicted, list(zip(scenes.boxes, scenes.classes)), 10)
        figures = {"map": mean_ap, "per_class_ap": per_class}
    return {**figures, "time_per_scene_ms": per_scene_ms}, predicted
