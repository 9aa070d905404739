"""The embedded ``scenes`` generator: determinism, geometry-consistent depth and normals, labels."""

from __future__ import annotations

import numpy as np
import pytest

from mtoframe.data.scenes import BALL, FLOOR, NUM_CLASSES, WALL, generate_scenes, intrinsics

SIZE = 32


@pytest.fixture(scope="module")
def scenes() -> dict[str, np.ndarray]:
    return generate_scenes(48, size=SIZE, seed=3)


def test_shapes_dtypes_and_ranges(scenes):
    n = 48
    assert scenes["image"].shape == (n, 3, SIZE, SIZE) and scenes["image"].dtype == np.float32
    assert scenes["label"].shape == (n, SIZE, SIZE) and scenes["label"].dtype == np.int64
    assert scenes["depth"].shape == (n, 1, SIZE, SIZE) and scenes["depth"].dtype == np.float32
    assert scenes["normal"].shape == (n, 3, SIZE, SIZE) and scenes["normal"].dtype == np.float32
    assert scenes["image"].min() >= 0.0 and scenes["image"].max() <= 1.0
    label = scenes["label"]
    assert label.min() >= -1 and label.max() < NUM_CLASSES
    # every class occurs somewhere, and no class swamps the rest
    share = np.bincount(label[label >= 0], minlength=NUM_CLASSES) / (label >= 0).sum()
    assert (share > 0.002).all() and share.max() < 0.6


def test_deterministic_by_seed_and_prefix_stable(scenes):
    again = generate_scenes(48, size=SIZE, seed=3)
    for k in scenes:
        np.testing.assert_array_equal(scenes[k], again[k])
    prefix = generate_scenes(5, size=SIZE, seed=3)
    np.testing.assert_array_equal(prefix["image"], scenes["image"][:5])
    shifted = generate_scenes(3, size=SIZE, seed=3, offset=10)
    np.testing.assert_array_equal(shifted["label"], scenes["label"][10:13])
    other = generate_scenes(5, size=SIZE, seed=4)
    assert not np.array_equal(other["image"], prefix["image"])


def test_invalid_pixels_agree_across_targets(scenes):
    invalid = scenes["label"] == -1
    assert invalid.any() and not invalid.all()  # open rooms have a void above the walls
    np.testing.assert_array_equal(scenes["depth"][:, 0] == 0, invalid)
    norm = np.linalg.norm(scenes["normal"], axis=1)
    np.testing.assert_array_equal(norm == 0, invalid)
    np.testing.assert_allclose(norm[~invalid], 1.0, atol=1e-4)


def _points(depth: np.ndarray) -> np.ndarray:
    """Back-project z-depth [n,1,H,W] to camera-frame points [n,3,H,W] (x right, y up, z forward)."""
    f, cx, cy = intrinsics(depth.shape[-1])
    v, u = np.mgrid[0 : depth.shape[-2], 0 : depth.shape[-1]]
    return np.concatenate([depth * (u - cx) / f, -depth * (v - cy) / f, depth], 1)


def test_floor_normals_point_up_and_floor_is_a_plane_at_camera_height(scenes):
    pts, normal = _points(scenes["depth"]), scenes["normal"]
    for i in range(len(pts)):
        floor = scenes["label"][i] == FLOOR
        if floor.sum() < 10:
            continue
        n = normal[i][:, floor]
        assert (n[1] > np.cos(np.deg2rad(15.5))).all()  # up, up to the camera's pitch (≤ 15°)
        np.testing.assert_allclose(n, np.broadcast_to(n[:, :1], n.shape), atol=1e-5)  # one plane, one normal
        height = (n * pts[i][:, floor]).sum(0)  # n·P = −(camera height) on the floor plane
        np.testing.assert_allclose(height, height[0], atol=2e-3 * abs(height[0]))
        assert 1.2 - 1e-3 <= -height[0] <= 1.7 + 1e-3


def test_floor_depth_increases_with_distance(scenes):
    """Up a column of the image, floor points are farther away: depth strictly grows as the row
    index falls."""
    checked = 0
    for i in range(len(scenes["label"])):
        floor = scenes["label"][i] == FLOOR
        depth = scenes["depth"][i, 0]
        for col in range(SIZE):
            rows = np.flatnonzero(floor[:, col])
            if len(rows) >= 2:
                assert (np.diff(depth[rows, col]) < 0).all()
                checked += 1
    assert checked > 100


def test_surfaces_face_the_camera_and_walls_are_vertical(scenes):
    pts, normal = _points(scenes["depth"]), scenes["normal"]
    valid = scenes["label"] >= 0
    facing = (normal * pts).sum(1)[valid]
    assert (facing < 1e-4).all()  # n·P ≤ 0: every visible surface faces the viewer
    wall = scenes["label"] == WALL
    # walls are vertical in the world: their normal has no component along the world's up axis,
    # which the floor normal gives in camera coordinates
    for i in range(len(pts)):
        floor, w = scenes["label"][i] == FLOOR, wall[i]
        if floor.any() and w.any():
            up = normal[i][:, floor][:, 0]
            np.testing.assert_allclose(np.einsum("c,cn->n", up, normal[i][:, w]), 0.0, atol=1e-5)


def test_sphere_points_are_one_radius_from_a_centre(scenes):
    """P − r·n is the same centre for every pixel of a ball: recover r from two pixels, check all."""
    pts, normal = _points(scenes["depth"]), scenes["normal"]
    checked = 0
    for i in range(len(pts)):
        ball = scenes["label"][i] == BALL
        if ball.sum() < 12:
            continue
        p, n = pts[i][:, ball].T, normal[i][:, ball].T
        # least squares for (centre, r) in P = c + r n, over the pixels of this image's balls;
        # several balls would not fit one centre, so use the largest connected run of pixels
        a = np.concatenate([np.tile(np.eye(3), (len(p), 1)), n.reshape(-1, 1)], 1)
        sol, *_ = np.linalg.lstsq(a, p.reshape(-1), rcond=None)
        resid = np.abs(a @ sol - p.reshape(-1)).max()
        if resid < 1e-3:  # a single ball in view
            assert 0.15 - 1e-3 <= sol[3] <= 0.5 + 1e-3
            checked += 1
    assert checked >= 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        generate_scenes(2, size=4)
    with pytest.raises(ValueError, match="n must"):
        generate_scenes(-1)
