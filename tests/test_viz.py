"""The image grid the image notebooks (06, 08) draw: grey scans in grey levels, RGB as it is."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dmat_core.images.pixels import image_grid  # noqa: E402
from dmat_core.viz.classifiers import show_image_grid  # noqa: E402


def test_grey_grid_in_grey_levels_and_rgb_as_is():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    fig, (a, b) = plt.subplots(1, 2)
    g = show_image_grid(a, grey, nrow=3)
    im = a.get_images()[0]
    assert np.array_equal(im.get_array(), image_grid(grey, nrow=3)[..., 0])   # 2D: one grey level per pixel
    assert im.get_cmap().name == "gray" and im.get_clim() == (0, 255)     # 0 black, 255 white, not rescaled
    assert g.shape == (2 * 9 + 1, 3 * 9 + 1, 1)
    show_image_grid(b, rgb)
    assert np.array_equal(b.get_images()[0].get_array(), image_grid(rgb))
    plt.close(fig)
