import numpy as np
import pytest
import torch

from bgwsol.evaluation.metrics import BoxAccumulator, ClassificationAccumulator, PxAPAccumulator, cam_thresholds


def square_map(size, box):
    m = np.zeros((size, size), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1 + 1, x0:x1 + 1] = 1.0
    return m


def test_maxboxacc_hand_computed():
    acc = BoxAccumulator(np.array([0.0, 0.5]), (50,), multi_contour=True)
    gt = np.array([[2, 2, 9, 9]])
    # map equal to the box region: its contour box is [2, 2, 10, 10] (x + w), IoU 64/81 = 0.79 at tau 0.5;
    # at tau 0 every pixel with value > 0 is the same region, so both thresholds hit
    acc.accumulate(square_map(16, (2, 2, 9, 9)), gt)
    # a map far from the box: a miss at both thresholds
    acc.accumulate(square_map(16, (12, 12, 14, 14)), gt)
    assert acc.count == 2
    assert acc.max_box_acc() == {50: 50.0}
    np.testing.assert_array_equal(acc.correct, [[1, 1]])


def test_an_image_with_two_boxes_scores_its_best_matching_box():
    """MaxBoxAcc as wsolevaluation defines it: an image with several true boxes is a hit when the
    map's box overlaps any one of them enough (the best IoU over the true boxes)."""
    from bgwsol.evaluation.scoremaps import best_iou_per_threshold

    gt = np.array([[2, 2, 9, 9], [20, 20, 29, 29]])
    second, first, neither = square_map(32, (20, 20, 29, 29)), square_map(32, (2, 2, 9, 9)), square_map(32, (12, 0, 16, 4))
    assert best_iou_per_threshold(second, gt, [0.5], True)[0] == pytest.approx(100 / 121)  # [20, 20, 30, 30]
    assert best_iou_per_threshold(first, gt, [0.5], True)[0] == pytest.approx(64 / 81)
    assert best_iou_per_threshold(neither, gt, [0.5], True)[0] == 0.0
    acc = BoxAccumulator(np.array([0.5]), (50,), multi_contour=True)
    for m in (second, first, neither):
        acc.accumulate(m, gt)
    assert acc.max_box_acc()[50] == pytest.approx(200 / 3)


def test_top1_loc_needs_class_and_box():
    acc = BoxAccumulator(np.array([0.5]), (50,))
    gt = np.array([[2, 2, 9, 9]])
    acc.accumulate(square_map(16, (2, 2, 9, 9)), gt, top1_correct=True)
    acc.accumulate(square_map(16, (2, 2, 9, 9)), gt, top1_correct=False, top5_correct=True)
    loc = acc.loc_at(0.5)
    assert loc == {"gt_known_loc": 100.0, "top1_loc": 50.0, "top5_loc": 100.0}


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    maps = [rng.random((20, 20)).astype(np.float32) for _ in range(6)]
    gt = np.array([[3, 3, 15, 15]])
    whole = BoxAccumulator(cam_thresholds(0.1))
    a, b = BoxAccumulator(cam_thresholds(0.1)), BoxAccumulator(cam_thresholds(0.1))
    for i, m in enumerate(maps):
        whole.accumulate(m, gt)
        (a if i % 2 else b).accumulate(m, gt)
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.correct, whole.correct)
    assert merged.count == 6


def test_merge_refuses_other_thresholds():
    with pytest.raises(ValueError):
        BoxAccumulator(cam_thresholds(0.1)).merge(BoxAccumulator(cam_thresholds(0.2)))


def test_pxap_perfect_and_inverted_maps():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    perfect = PxAPAccumulator(cam_thresholds(0.1))
    perfect.accumulate(mask.astype(np.float32), mask)
    assert perfect.compute() == pytest.approx(100.0)
    inverted = PxAPAccumulator(cam_thresholds(0.1))
    inverted.accumulate((~mask).astype(np.float32), mask)
    # precision is 0 until the last bin, where recall jumps to 1 at precision 16/64
    assert inverted.compute() == pytest.approx(25.0)


def test_pxap_without_positive_ground_truth_raises():
    acc = PxAPAccumulator(cam_thresholds(0.1))
    acc.accumulate(np.ones((4, 4), np.float32), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="no foreground"):
        acc.compute()


def test_classification_accumulator():
    acc = ClassificationAccumulator()
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    hit1, hit5 = acc.accumulate(logits, np.array([0, 1]))
    assert hit1.tolist() == [True, False] and hit5.tolist() == [True, True]
    assert acc.compute() == {"top1_cls": 50.0, "top5_cls": 100.0}


class _Maps(torch.nn.Module):
    """A stand-in model for the evaluator: a map and logits from each image's own pixels."""

    def forward(self, images):
        maps = images[:, 0, ::4, ::4]
        return {"logits": images.mean(dim=(2, 3)), "maps": maps}


class _Variant:
    def __init__(self, power: float):
        self.power = power

    def scoremaps(self, outputs, labels):
        return outputs["maps"] ** self.power


def _batches(n: int, size: int = 32):
    g = torch.Generator().manual_seed(0)
    for b in range(n):
        images = torch.rand(4, 3, size, size, generator=g)
        yield {"image": images, "label": [b % 3, 1, 2, 0], "key": [f"{b}-{j}" for j in range(4)],
               "boxes": [[[4, 4, 20, 24]], [[0, 0, 31, 31]], [[10, 2, 30, 12]], [[3, 3, 8, 8], [20, 20, 30, 30]]],
               "size": [(size, size)] * 4, "mask": [None] * 4}


def test_box_search_beside_the_model_gives_the_same_numbers():
    from bgwsol.config import EvalConfig
    from bgwsol.evaluation.evaluator import evaluate

    cfg = EvalConfig(cam_curve_interval=0.05, scoremap_size=32)
    variants = {"a": _Variant(1.0), "b": _Variant(3.0)}
    inline = evaluate(_Maps(), variants, _batches(7), cfg, overlap=False)
    beside = evaluate(_Maps(), variants, _batches(7), cfg, overlap=True)
    for name in variants:
        assert beside[name].boxes.count == inline[name].boxes.count == 28
        assert beside[name].summary() == inline[name].summary()
        assert beside[name].boxes.class_count == inline[name].boxes.class_count


def test_a_failure_in_the_box_search_reaches_the_caller():
    from bgwsol.config import EvalConfig
    from bgwsol.evaluation.evaluator import evaluate

    def broken():
        yield from _batches(2)
        batch = next(_batches(1))
        batch["boxes"] = [[[1, 2]]] * 4  # not a box
        yield batch
        yield from _batches(2)

    with pytest.raises(ValueError):
        evaluate(_Maps(), {"a": _Variant(1.0)}, broken(), EvalConfig(cam_curve_interval=0.05, scoremap_size=32),
                 overlap=True)
