"""The application networks: FCN (segmentation) and the NIC captioner, checked by numerical
differentiation, against the classifier they are made from, and by exhaustive search."""
import itertools

import numpy as np
import pytest

import shendu
from gradcheck import check_module_gradients, rand
from shendu import models, nn


def _trained_like(model, seed=1):
    """Random nonzero weights everywhere (zero biases would sit on ReLU's kink)."""
    for i, p in enumerate(model.parameters()):
        p.data = (0.3 * rand(*p.shape, seed=seed + i)).astype(p.data.dtype)
    return model


def test_a_classifier_made_fully_convolutional_gives_the_same_logits():
    shendu.manual_seed(0)
    classifier = _trained_like(models.DeepConvNet()).eval()
    net = models.fully_convolutional(classifier)
    x = rand(3, 1, 28, 28, seed=2).astype(np.float32)
    kinds = [type(layer).__name__ for layer in net]
    assert "Flatten" not in kinds and "Linear" not in kinds
    assert [m.kernel_size for m in net if isinstance(m, nn.Conv2d)][-2:] == [4, 1]
    with nn.no_grad():
        np.testing.assert_allclose(net(x)[:, :, 0, 0], classifier(x), rtol=1e-4, atol=1e-5)
        wide = net(rand(1, 1, 44, 44, seed=3).astype(np.float32))
    assert wide.shape == (1, 10, 3, 3)  # windows 8 pixels apart: (44 − 28) / 8 + 1 per side
    assert classifier[-2].weight.shape == (10, 50)  # the classifier is left as it was


def test_fcn_gradients_match_numerical_differentiation():
    shendu.manual_seed(0)
    model = _trained_like(models.get("fcn", num_classes=4, input_shape=(1, 16, 16),
                                     dropout=0.3))
    # the head's bias adds into every pixel's scores: a step of 1e-6 leaves a rounding error of
    # 4e-6 in its numerical gradient, 1e-5 one of 4e-7 (larger steps cross ReLU kinks)
    check_module_gradients(model, rand(2, 1, 16, 16, seed=4), samples=30, eps=1e-5)


def test_fcn_keeps_the_classifier_scores_and_adds_a_background_class():
    shendu.manual_seed(0)
    classifier = _trained_like(models.DeepConvNet()).eval()
    fcn = models.FCN(classifier, num_classes=11)
    score = fcn.head[-1]
    assert score.out_channels == 11 and score.kernel_size == 1
    np.testing.assert_array_equal(score.weight.data[1:, :, 0, 0], classifier[-2].weight.data)
    np.testing.assert_array_equal(score.bias.data[1:], classifier[-2].bias.data)
    assert not score.weight.data[0].any() and score.bias.data[0] == 0
    assert not fcn.score1.weight.data.any() and not fcn.score2.weight.data.any()
    assert fcn.head[0].padding == 2 and not isinstance(fcn.head[-1], nn.Dropout)
    with nn.no_grad():
        assert fcn.eval()(rand(2, 1, 64, 40).astype(np.float32)).shape == (2, 11, 64, 40)


def test_fcn_upsampling_starts_bilinear_and_lands_on_the_pixels():
    """With the skips at zero, the output is the coarse scores upsampled three times; a score
    put at one coarse cell spreads symmetrically about the pixels that cell is centred on."""
    fcn = models.get("fcn", num_classes=2, input_shape=(1, 64, 64))
    s = np.zeros((1, 2, 9, 9), np.float32)
    s[0, 1, 4, 4] = 1
    up = fcn.up3(s)[:, :, 1:1 + 17, 1:1 + 17]  # the crops of FCN.forward
    up = fcn.up2(up)[:, :, 1:1 + 32, 1:1 + 32]
    y = fcn.up1(up)[0, 1]
    # coarse cell o is centred on pixel 8·o − 2.5 (see FCN): o = 4 on 29.5, between 29 and 30
    row = y.max(axis=1)
    assert row.argmax() in (29, 30) and np.allclose(row[:30], row[59:29:-1], atol=1e-6)


def test_fcn_refuses_sizes_that_are_not_multiples_of_eight():
    fcn = models.get("fcn", num_classes=11, input_shape=(1, 64, 64))
    with pytest.raises(shendu.ShenduError, match="multiples of 8"):
        fcn(np.zeros((1, 1, 60, 64), np.float32))
    with pytest.raises(shendu.ShenduError, match="multiples of 8"):
        models.get("fcn", num_classes=11, input_shape=(1, 28, 28))


# -- captioning --------------------------------------------------------------------------------
def _captioner(seed=0, max_words=2):
    shendu.manual_seed(seed)
    return models.get("captioner", input_shape=(1, 16, 16), max_words=max_words, embedding=6,
                      hidden=5)


class TeacherForced(nn.Module):
    """The captioner with fixed targets, as a one-input module for the gradient check."""

    def __init__(self, model, targets):
        super().__init__()
        self.model, self.t = model, targets

    def forward(self, x):
        return self.model(x, self.t)

    def backward(self, dy):
        return self.model.backward(dy)


def test_captioner_gradients_match_numerical_differentiation():
    model = _captioner(max_words=3)
    t = model.targets(["one two", "nine", "three three three"])
    check_module_gradients(TeacherForced(model, t), rand(3, 1, 16, 16, seed=5), samples=25)


def test_targets_code_the_words_then_end_then_padding():
    model = _captioner(max_words=3)
    np.testing.assert_array_equal(model.targets(["one two", "nine", ""]),
                                  [[3, 4, 1, -100], [11, 1, -100, -100], [1, -100, -100, -100]])
    assert model.words([3, 4, 1, 5]) == "one two" and model.words([11, 11]) == "nine nine"
    for bad in ("one two three four", "one ten"):
        with pytest.raises(shendu.ShenduError, match="at most 3 digit names"):
            model.targets([bad])


def _log_probability(model, x, tokens):
    """log p(tokens | x) by teacher forcing: the sum of each token's log-softmax."""
    t = np.full((1, model.max_words + 1), -100, np.int64)
    t[0, :len(tokens)] = tokens
    with nn.no_grad():
        logp = nn.log_softmax(np.moveaxis(model.eval()(x, t), 1, -1)[0].astype(np.float64))
    return sum(logp[i, token] for i, token in enumerate(tokens))


def test_beam_search_finds_the_likeliest_caption_and_width_one_is_greedy():
    """Every token sequence that ends (END within max_words + 1 tokens) scored exhaustively:
    a beam as wide as the vocabulary finds the likeliest, and a beam of width 1 is greedy."""
    for seed in range(3):
        model = _captioner(seed)
        x = rand(1, 1, 16, 16, seed=10 + seed).astype(np.float32)
        words = [w for w in range(12) if w != model.END]
        ended = [list(body) + [model.END] for k in range(model.max_words + 1)
                 for body in itertools.product(words, repeat=k)]
        best = max(ended, key=lambda tokens: _log_probability(model, x, tokens))
        assert model.caption(x, beam=12) == [model.words(best)]
        assert model.caption(x, beam=1) == model.caption(x)
        greedy = model.eval()(x).argmax(axis=1)[0]
        assert model.caption(x) == [model.words(greedy)]


def test_greedy_decoding_reads_its_own_words():
    """The logits of greedy decoding at step i are those of teacher forcing on its own first i
    words: the model reads back what it wrote."""
    model = _captioner(2, max_words=3).eval()
    x = rand(2, 1, 16, 16, seed=7).astype(np.float32)
    with nn.no_grad():
        greedy = model(x)
        forced = model(x, greedy.argmax(axis=1))
    np.testing.assert_allclose(greedy, forced, rtol=1e-5, atol=1e-6)
