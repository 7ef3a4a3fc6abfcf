"""demo.render: the pure image helpers behind the demo's gallery and entropy plot."""


import cv2
import numpy as np
import pytest


from demo import render


def test_caption():
    assert render.caption(1.125, 3.2149) == "t=1.1s · H=3.21 nats"
    assert render.caption(0.0, None) == "t=0.0s"


def _peak_map(gh: int = 4, gw: int = 4, at: tuple[int, int] = (0, 0)) -> np.ndarray:
    attn = np.full((gh, gw), 0.01, np.float32)
    attn[at] = 1.0
    return attn / attn.sum()  # [gh, gw], sums to 1 like the model's maps


def test_frame_view_upscales_and_marks_the_attended_region():
    frame = np.full((64, 64, 3), 128, np.uint8)  # [s, s, 3]
    img = render.frame_view(frame, _peak_map(at=(0, 0)), timestamp=1.0)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8  # 64-px crops are upscaled to 256
    red = img[..., 0].astype(int) - img[..., 2].astype(int)  # jet: red = high attention, blue = low
    assert red[28:36, 28:36].mean() > 50  # the top-left cell is hot (red) ...
    assert red[216:232, 216:232].mean() < -50  # ... the far corner cold (blue)


def test_frame_view_puts_coarse_left_of_fine():
    frame = np.zeros((64, 64, 3), np.uint8)
    img = render.frame_view(frame, _peak_map(at=(3, 3)), 0.0, coarse=_peak_map(at=(0, 0)))
    assert img.shape == (256, 2 * 256 + render.SEPARATOR_PX, 3)
    left, right = img[:, :256], img[:, 256 + render.SEPARATOR_PX:]
    assert left[40:60, 40:60, 0].mean() > left[200:220, 200:220, 0].mean()  # coarse: hot top-left
    assert right[200:220, 200:220, 0].mean() > right[40:60, 40:60, 0].mean()  # fine: hot bottom-right
    assert (img[:, 256:256 + render.SEPARATOR_PX] == 255).all()


def test_frame_view_without_attention_is_the_frame():
    frame = np.full((300, 300, 3), 90, np.uint8)  # already large: not resized
    img = render.frame_view(frame, None, 2.0)
    assert img.shape == (300, 300, 3)
    assert (img[150:, 150:] == 90).all()  # untouched away from the "t=2.0s" label


def _marker_rows(img: np.ndarray) -> np.ndarray:
    """Rows of the pixels painted in the last-point colour (214, 39, 40)."""
    close = (np.abs(img.astype(int) - (214, 39, 40)).sum(-1) < 30)
    return np.nonzero(close)[0]


@pytest.mark.parametrize("values", [[], [4.0], [4.0, 3.0, 2.5, np.nan], list(np.linspace(4, 1, 64))])
def test_entropy_plot_any_length(values):
    img = render.entropy_plot(values, None if not values else np.arange(len(values)) * 0.5)
    assert img.shape == (200, 480, 3) and img.dtype == np.uint8
    assert (img != 255).any()  # axes at least


def test_entropy_plot_last_point_height_follows_value():
    # same y-range in both (max 4.0): a low last value puts the marker lower in the image
    high = _marker_rows(render.entropy_plot([4.0, 3.9]))
    low = _marker_rows(render.entropy_plot([4.0, 0.5]))
    assert len(high) and len(low)
    assert low.mean() > high.mean() + 50
    assert render.entropy_plot([1.0, 2.0], size=(320, 120)).shape == (120, 320, 3)


def test_save_png_round_trip(tmp_path):
    img = np.zeros((10, 12, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    path = render.save_png(img, tmp_path / "x.png")
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, img)
