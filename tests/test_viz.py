"""Overlays explain themselves: the heatmap and boxes on the image at its own size, and the
class name and score written at the predicted box."""

import numpy as np

from bgwsol.evaluation.viz import overlay


def test_the_caption_is_written_on_a_band_at_the_predicted_box():
    image = np.full((300, 400, 3), 128, np.uint8)
    heat = np.zeros((300, 400), np.float32)
    box = np.array([[100, 120, 300, 280]])
    plain = np.asarray(overlay(image, heat, box, np.zeros((0, 4))))
    captioned = np.asarray(overlay(image, heat, box, np.zeros((0, 4)), caption="kangaroo 0.93"))
    assert captioned.shape == (300, 400, 3)
    changed = np.argwhere(np.any(plain != captioned, axis=-1))
    assert len(changed) > 200  # a band with text, not a stray pixel
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert bottom <= 122 and left >= 100 and top >= 90  # just above the box's top-left corner
    band = captioned[top:bottom + 1, left:right + 1].reshape(-1, 3)
    assert (band == (255, 255, 255)).all(-1).any() and (band == (240, 30, 30)).all(-1).mean() > 0.3


def test_a_box_at_the_top_edge_keeps_its_caption_inside_the_image():
    image = np.zeros((64, 64, 3), np.uint8)
    out = np.asarray(overlay(image, np.zeros((64, 64)), np.array([[50, 0, 63, 30]]), np.zeros((0, 4)),
                             caption="raccoon 0.51"))
    assert out.shape == (64, 64, 3) and (out[:12] == (240, 30, 30)).all(-1).any()


def test_every_true_box_is_drawn():
    image = np.full((120, 160, 3), 128, np.uint8)
    truth = np.array([[10, 10, 50, 60], [90, 30, 150, 110]])  # two raccoons
    drawn = np.asarray(overlay(image, np.zeros((120, 160), np.float32), np.zeros((0, 4)), truth))
    green = (drawn == (40, 230, 40)).all(-1)
    for x0, y0, x1, y1 in truth:
        assert green[y0, x0:x1 + 1].all() and green[y1, x0:x1 + 1].all()  # top and bottom edges
        assert green[y0:y1 + 1, x0].all() and green[y0:y1 + 1, x1].all()  # left and right edges
        assert not green[y0 + 5:y1 - 4, x0 + 5:x1 - 4].any()  # an outline, not a filled box
