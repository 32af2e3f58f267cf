"""mIoU of the unified protocol against hand computations."""
import math

import numpy as np
import pytest
import torch

from tcl.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

# 5 classes. Class 3 is predicted once but never in the ground truth; class 4 is only predicted on an
# ignored pixel, so it is absent everywhere that counts.
TARGET = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 2]])
PREDICTION = np.array([[0, 1, 1, 1],
                       [0, 4, 2, 3]])
# counted (target, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (0,0) (1,2) (2,3); the (255,4) pixel is ignored
EXPECTED_MATRIX = np.array([[2, 1, 0, 0, 0],
                            [0, 2, 1, 0, 0],
                            [0, 0, 0, 1, 0],
                            [0, 0, 0, 0, 0],
                            [0, 0, 0, 0, 0]])


def test_confusion_matrix_counts_by_hand():
    matrix = confusion_matrix(PREDICTION, TARGET, num_classes=5)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, EXPECTED_MATRIX)


def test_iou_and_miou_by_hand():
    iou = iou_per_class(EXPECTED_MATRIX)
    # class 0: intersection 2, union = row 3 + column 2 - 2 = 3          -> 2/3
    # class 1: intersection 2, union = row 3 + column 3 - 2 = 4          -> 1/2
    # class 2: intersection 0, union = row 1 + column 1 - 0 = 2          -> 0
    # class 3: intersection 0, union = row 0 + column 1 - 0 = 1          -> 0 (predicted, not in ground truth: counts)
    # class 4: union 0                                                   -> NaN (left out)
    np.testing.assert_allclose(iou[:4], [2 / 3, 1 / 2, 0, 0])
    assert math.isnan(iou[4])
    # mIoU = (2/3 + 1/2 + 0 + 0) / 4 = 7/24
    assert mean_iou(EXPECTED_MATRIX) == pytest.approx(7 / 24)
    # pixel accuracy = diagonal 4 / counted 7
    assert pixel_accuracy(EXPECTED_MATRIX) == pytest.approx(4 / 7)


def test_ignored_pixels_are_not_counted_whatever_their_prediction():
    target = np.full((3, 3), 255)
    target[1, 1] = 2
    prediction = np.full((3, 3), 99)  # out of range, but only on ignored pixels
    prediction[1, 1] = 2
    matrix = confusion_matrix(prediction, target, num_classes=3)
    assert matrix.sum() == 1 and matrix[2, 2] == 1
    # only class 2 has a union: mIoU = 1/1
    assert mean_iou(matrix) == 1.0


def test_nothing_counted_gives_nan_not_a_warning():
    matrix = confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 255), num_classes=3)
    assert matrix.sum() == 0
    assert math.isnan(mean_iou(matrix)) and math.isnan(pixel_accuracy(matrix))


def test_merged_per_image_matrices_equal_matrix_of_concatenated_images():
    rng = np.random.default_rng(0)
    images = []
    for shape in [(7, 5), (4, 9), (6, 6)]:
        target = rng.integers(0, 6, shape)
        target[rng.random(shape) < 0.2] = 255
        images.append((rng.integers(0, 6, shape), target))
    merged = ConfusionMatrix(6)
    for prediction, target in images:
        merged.merge(ConfusionMatrix(6).update(prediction, target))
    whole = confusion_matrix(np.concatenate([p.ravel() for p, _ in images]),
                             np.concatenate([t.ravel() for _, t in images]), num_classes=6)
    np.testing.assert_array_equal(merged.matrix, whole)
    assert merged.matrix.dtype == np.int64
    # builtin sum and + give the same exact counts, leaving the operands untouched
    parts = [ConfusionMatrix(6).update(p, t) for p, t in images]
    before = parts[0].matrix.copy()
    np.testing.assert_array_equal(sum(parts).matrix, whole)
    np.testing.assert_array_equal((parts[0] + parts[1] + parts[2]).matrix, whole)
    np.testing.assert_array_equal(parts[0].matrix, before)
    assert merged.miou == pytest.approx(mean_iou(whole))
    np.testing.assert_array_equal(merged.iou, iou_per_class(whole))


def test_dataset_level_iou_is_not_the_mean_of_per_image_ious():
    # image A: class 1 right on 1 of 1 pixels; image B: class 1 right on 1 of 3 pixels (2 predicted 0).
    accumulator = ConfusionMatrix(2)
    accumulator.update(np.array([1, 0, 0]), np.array([1, 0, 0]))
    accumulator.update(np.array([1, 0, 0]), np.array([1, 1, 1]))
    # summed: class 1 intersection 2, union 4 -> 1/2 ; class 0 intersection 2, union 4 -> 1/2
    np.testing.assert_allclose(accumulator.iou, [1 / 2, 1 / 2])
    assert accumulator.miou == pytest.approx(1 / 2)
    # averaging per-image mIoUs instead would give (1 + (0 + 1/3) / 2) / 2 = 7/12


def test_torch_tensors_are_accepted():
    matrix = confusion_matrix(torch.from_numpy(PREDICTION), torch.from_numpy(TARGET), num_classes=5)
    np.testing.assert_array_equal(matrix, EXPECTED_MATRIX)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), num_classes=2)
    with pytest.raises(ValueError, match=r"\[5\].*outside \[0, 5\)"):
        confusion_matrix(np.array([5]), np.array([0]), num_classes=5)
    with pytest.raises(ValueError, match="merge"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
