import numpy as np
import pytest
from PIL import Image

from ddmops.errors import DataError
from ddmops.io import atomic_write, list_images, read_image, save_png


def test_grayscale_rgba_16bit_are_converted(tmp_path):
    Image.fromarray(np.full((6, 7), 100, np.uint8)).save(tmp_path / "g.png")
    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 0  # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((6, 7), 65535, np.uint16)).save(tmp_path / "w16.png")
    g = read_image(tmp_path / "g.png", 3)
    assert g.shape == (6, 7, 3) and g.dtype == np.uint8 and (g == 100).all()
    assert (read_image(tmp_path / "a.png", 3) == 255).all()
    assert (read_image(tmp_path / "w16.png", 3) == 255).all()
    assert read_image(tmp_path / "a.png", 1).shape == (6, 7, 1)


def test_corrupt_and_truncated_images_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    save_png(tmp_path / "ok.png", np.zeros((32, 32, 3), np.uint8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("bad.png", "cut.png"):
        with pytest.raises(DataError, match=name):
            read_image(tmp_path / name)


def test_list_images_skips_other_files_and_rejects_empty(tmp_path):
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "README.md").write_text("x")
    sub = tmp_path / "photos"
    sub.mkdir()
    save_png(sub / "b.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.warns(UserWarning, match="non-image"):
        assert [p.name for p in list_images(tmp_path)] == ["b.png"]


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous")

    def failing(fh):
        fh.write(b"partial")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left
