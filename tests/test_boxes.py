import numpy as np
import pytest

from bgwsol.evaluation.boxes import as_boxes, iou_matrix, resize_boxes


def test_iou_plus_one_pixel_convention():
    # [0,0,2,2] and [1,1,3,3] are 3x3 boxes (9 px each) overlapping in a 2x2 square: 4 / (9 + 9 - 4)
    iou = iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]]))
    assert iou.shape == (1, 3)
    assert iou[0, 0] == pytest.approx(4 / 14)
    assert iou[0, 1] == 1.0
    assert iou[0, 2] == 0.0


def test_iou_single_pixel_boxes_touching():
    # a 1-pixel box [2,2,2,2] inside the 3x3 box [1,1,3,3]: 1 / 9
    assert iou_matrix(np.array([[2, 2, 2, 2]]), np.array([[1, 1, 3, 3]]))[0, 0] == pytest.approx(1 / 9)


def test_resize_truncates_like_wsolevaluation():
    # x: 10*224/200 = 11.2 -> 11, 100*224/200 = 112; y: 20*224/300 = 14.93 -> 14, 150*224/300 = 112
    out = resize_boxes(np.array([[10, 20, 100, 150]]), (200, 300), (224, 224))
    assert out.tolist() == [[11, 14, 112, 112]]


def test_as_boxes_rejects_swapped_corners():
    with pytest.raises(ValueError, match="x0y0x1y1"):
        as_boxes([[5, 0, 2, 3]])
