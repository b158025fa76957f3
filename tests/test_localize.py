import cv2
import numpy as np
import pytest

from bgwsol.evaluation.scoremaps import (ScoremapError, best_iou_per_threshold, best_iou_per_threshold_reference,
                             boxes_at_threshold, check_scoremap, contour_boxes, traced_boxes)


def block_map():
    m = np.zeros((5, 6), np.float32)
    m[1:3, 2:5] = 1.0  # rows 1-2, cols 2-4
    return m


def test_box_of_a_block_follows_x_plus_w():
    # boundingRect (x=2, y=1, w=3, h=2) -> wsolevaluation box (2, 1, min(2+3, 5), min(1+2, 4))
    assert boxes_at_threshold(block_map(), 0.5).tolist() == [[2, 1, 5, 3]]


def test_box_is_clipped_to_the_last_pixel():
    m = np.zeros((4, 5), np.float32)
    m[2:, 3:] = 1.0  # touches the right and bottom edges: x + w = 5 -> 4, y + h = 4 -> 3
    assert boxes_at_threshold(m, 0.5).tolist() == [[3, 2, 4, 3]]


def test_single_pixel_and_empty_foreground():
    m = np.zeros((4, 4), np.float32)
    m[1, 1] = 0.5
    # tau 0.9: cut int(0.9 * 127) = 114 < 127, foreground is the single pixel; tau below gives it too
    assert boxes_at_threshold(m, 0.9).tolist() == [[1, 1, 2, 2]]
    assert contour_boxes(np.zeros((4, 4), np.uint8), True).tolist() == [[0, 0, 0, 0]]


def test_ring_has_an_outer_and_a_hole_box():
    b = np.zeros((9, 9), np.uint8)
    b[1:8, 1:8] = 1
    b[3:6, 3:6] = 0  # hole rows/cols 3..5; its border pixels span 2..6
    boxes = sorted(traced_boxes(b, True).tolist())
    assert boxes == sorted([[1, 1, 8, 8], [2, 2, 7, 7]])
    # largest contour only keeps the outer one
    assert traced_boxes(b, False).tolist() == [[1, 1, 8, 8]]


def test_two_blobs_largest_versus_all():
    m = np.zeros((10, 20), np.float32)
    m[1:3, 1:3] = 1.0  # 2x2
    m[4:9, 10:18] = 0.8  # 5x8, larger
    assert boxes_at_threshold(m, 0.5, multi_contour=False).tolist() == [[10, 4, 18, 9]]
    assert sorted(boxes_at_threshold(m, 0.5, multi_contour=True).tolist()) == [[1, 1, 3, 3], [10, 4, 18, 9]]


def _maps(rng, n, noise):
    out = []
    for _ in range(n):
        low = rng.random((7, 7)).astype(np.float32)
        m = cv2.resize(low, (56, 48), interpolation=cv2.INTER_CUBIC) + rng.normal(0, noise, (48, 56)).astype(np.float32)
        out.append(((m - m.min()) / (m.max() - m.min())).astype(np.float32))
    return out


@pytest.mark.parametrize("multi_contour", [True, False])
@pytest.mark.parametrize("noise", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("interval", [0.05, 0.001])
def test_fast_path_equals_per_threshold_reference(multi_contour, noise, interval):
    rng = np.random.default_rng(int(noise * 100) + int(multi_contour))
    thresholds = np.arange(0, 1, interval)
    for m in _maps(rng, 6, noise):
        gt = np.array([[rng.integers(0, 20), rng.integers(0, 20), rng.integers(25, 55), rng.integers(25, 47)]])
        ref = best_iou_per_threshold_reference(m, gt, thresholds, multi_contour)
        fast = best_iou_per_threshold(m, gt, thresholds, multi_contour)
        np.testing.assert_array_equal(fast, ref)
        assert ref.max() > 0  # the case is not vacuous


def test_fast_path_handles_maps_with_many_holes():
    rng = np.random.default_rng(7)
    m = rng.random((40, 40)).astype(np.float32)
    gt = np.array([[5, 5, 30, 30]])
    thr = np.arange(0, 1, 0.01)
    np.testing.assert_array_equal(best_iou_per_threshold(m, gt, thr, True),
                                  best_iou_per_threshold_reference(m, gt, thr, True))


@pytest.mark.parametrize("bad, match", [
    (np.full((4, 4), np.nan, np.float32), "NaN"),
    (np.full((4, 4), 1.5, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 4, 4), np.float32), "2-D"),
    (np.zeros((4, 4), np.int64), "float"),
])
def test_invalid_scoremaps_name_the_image(bad, match):
    with pytest.raises(ScoremapError, match=match) as err:
        check_scoremap(bad, "val/img_7.JPEG")
    assert "val/img_7.JPEG" in str(err.value)


def test_fast_path_scores_hole_contours():
    """A ring around the ground truth: only the hole's contour box matches it exactly."""
    m = np.zeros((30, 30), np.float32)
    m[2:28, 2:28] = 1.0
    m[8:20, 9:22] = 0.2  # hole x 9..21, y 8..19; border x 8..22, y 7..20; box (x, y, x + w, y + h)
    gt = np.array([[8, 7, 23, 21]])
    thr = np.arange(0, 1, 0.05)
    fast = best_iou_per_threshold(m, gt, thr, True)
    np.testing.assert_array_equal(fast, best_iou_per_threshold_reference(m, gt, thr, True))
    assert fast[thr > 0.25].min() == 1.0 and fast[thr < 0.15].max() < 1.0
