"""`applications.measure`: each task's figures, for stand-in networks whose answers are known
(every scene's truth, or background everywhere), worked out here with plain NumPy."""
import numpy as np
import pytest

from shendu import applications, datasets, nn


@pytest.fixture(scope="module")
def scenes():
    return datasets.mnist_scenes("test", 40)


class Oracle(nn.Module):
    """Answers each scene it is shown with the truth: the one-hot logits of its label map, or
    its caption (the scene found by its pixels)."""

    def __init__(self, scenes):
        super().__init__()
        self.scenes = scenes

    def _index(self, images):
        flat = self.scenes.images.reshape(len(self.scenes.images), -1).astype(np.float32) / 255
        return [int(np.argmin(np.abs(flat - x.reshape(-1)).sum(axis=1))) for x in images]

    def forward(self, images):
        masks = self.scenes.masks[self._index(images)]
        return np.moveaxis(np.eye(11, dtype=np.float32)[masks], -1, 1)

    def caption(self, images, beam=1):
        return [self.scenes.captions[i] for i in self._index(images)]


class Background(nn.Module):
    def forward(self, images):
        logits = np.zeros((len(images), 11, *images.shape[2:]), np.float32)
        logits[:, 0] = 1
        return logits


def test_a_perfect_segmenter_and_captioner_score_one(scenes):
    figures, predicted = applications.measure("segment", Oracle(scenes), scenes)
    assert (predicted == scenes.masks).all()
    assert figures["miou"] == 1 and figures["pixel_accuracy"] == 1
    assert figures["per_class_iou"] == [1.0] * 11 and figures["time_per_scene_ms"] > 0
    figures, predicted = applications.measure("caption", Oracle(scenes), scenes)
    assert predicted == scenes.captions
    for key in ("exact_greedy", "bleu4_greedy", "exact_beam3", "bleu4_beam3"):
        assert figures[key] == 1


def test_background_everywhere_scores_the_background_share(scenes):
    figures, _ = applications.measure("segment", Background(), scenes)
    share = np.mean(scenes.masks == 0)  # background IoU: its pixels over all pixels
    assert figures["pixel_accuracy"] == pytest.approx(share)
    assert figures["per_class_iou"][0] == pytest.approx(share)
    assert figures["per_class_iou"][1:] == [0.0] * 10  # every digit is somewhere, never found
    assert figures["miou"] == pytest.approx(share / 11)
