"""``scenes``: a procedural NYUv2-like dataset, ray cast in numpy, deterministic by seed.

Each image is a room seen by a pinhole camera (height 1.2–1.7 m, pitched down 0–15°): a
floor, a back wall, two side walls and, in half of the rooms, a ceiling (without one, rays
above the walls hit nothing: label −1, depth 0, normal 0, like NYUv2's unlabelled pixels).
Up to three spheres, three boxes (rotated about the vertical) and two vertical cylinders
stand on the floor. Boxes come in two classes (``box``, ``cabinet``) and cylinders in two
(``pillar``, ``stool``) whose shapes overlap, so segmentation needs colour and context, not
shape alone. Albedo = class colour (per-instance jitter) × a procedural texture; shading is
Lambertian under an ambient term and one point light with distance falloff; Gaussian pixel
noise. There are no cast shadows (one ray per pixel keeps generation to seconds).

Conventions (those of the MTAN/LibMTL NYUv2 release where it has one):

* ``depth`` is the z-depth along the optical axis in metres, as NYUv2's; 0 = invalid.
* ``normal`` is a unit vector in the camera frame, x right, y up, z forward (away from the
  camera), so a surface facing the camera has a negative z component; 0 = invalid.
* ``label`` is an int64 class index in ``[0, NUM_CLASSES)``; −1 = ignore.

The camera intrinsics are :func:`intrinsics`; image ``i`` of ``generate_scenes(n, seed=s,
offset=o)`` depends only on ``(s, o + i)`` and ``size``, so a prefix of a larger set is the
smaller set.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

CLASSES = ("floor", "wall", "ceiling", "ball", "box", "cabinet", "pillar", "stool")
NUM_CLASSES = len(CLASSES)
FLOOR, WALL, CEILING, BALL, BOX, CABINET, PILLAR, STOOL = range(NUM_CLASSES)

# Base albedo per class (RGB); instances jitter around it, and box/cabinet, pillar/stool are
# deliberately close.
_BASE_COLOUR = np.array([
    [0.55, 0.42, 0.30],  # floor: wood
    [0.78, 0.76, 0.70],  # wall
    [0.90, 0.90, 0.88],  # ceiling
    [0.80, 0.25, 0.20],  # ball
    [0.60, 0.45, 0.25],  # box
    [0.45, 0.35, 0.30],  # cabinet
    [0.35, 0.45, 0.65],  # pillar
    [0.40, 0.55, 0.50],  # stool
], dtype=np.float32)

_MAX_SPHERES, _MAX_BOXES, _MAX_CYLINDERS = 3, 3, 2
_CHUNK = 64  # images ray cast at once: bounds memory at ~64·size² rays


def intrinsics(size: int) -> tuple[float, float, float]:
    """``(f, cx, cy)`` in pixels of the square ``size×size`` camera (about 58° field of view,
    NYUv2's Kinect has 57°×43°)."""
    return 0.9 * size, (size - 1) / 2.0, (size - 1) / 2.0


def generate_scenes(n: int, *, size: int = 64, seed: int = 0, offset: int = 0) -> dict[str, np.ndarray]:
    """Generate ``n`` scenes: ``image`` [n,3,H,W] float32 in [0,1], ``label`` [n,H,W] int64
    (−1 ignore), ``depth`` [n,1,H,W] float32 (metres, 0 invalid), ``normal`` [n,3,H,W] float32
    (unit, camera frame, 0 invalid)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    out: dict[str, np.ndarray] = {
        "image": np.empty((n, 3, size, size), np.float32),
        "label": np.empty((n, size, size), np.int64),
        "depth": np.empty((n, 1, size, size), np.float32),
        "normal": np.empty((n, 3, size, size), np.float32),
    }
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        rngs = [np.random.default_rng([seed, offset + i]) for i in range(lo, hi)]
        params = _stack([_sample_scene(r) for r in rngs])
        image, label, depth, normal = _render(params, size, rngs)
        out["image"][lo:hi], out["label"][lo:hi] = image, label
        out["depth"][lo:hi], out["normal"][lo:hi] = depth, normal
    return out


# -- scene parameters (one dict per image, then stacked along a batch axis) -------------------


def _sample_scene(r: np.random.Generator) -> dict[str, np.ndarray | np.generic]:
    h = r.uniform(1.2, 1.7)  # camera height above the floor
    back = r.uniform(4.0, 8.0)
    left, right = r.uniform(1.8, 3.5), r.uniform(1.8, 3.5)
    room_h = r.uniform(2.5, 3.2)  # floor-to-ceiling (or wall top)
    p: dict[str, np.ndarray | np.generic] = {
        "pitch": np.float32(np.deg2rad(r.uniform(0.0, 15.0))),
        "h": np.float32(h),
        "walls": np.array([back, left, right, room_h - h], np.float32),  # z, −x, +x, top y
        "ceiling": np.bool_(r.random() < 0.5),
        "room_colour": np.clip(_BASE_COLOUR[:3] + r.normal(0, 0.06, (3, 3)), 0.05, 1).astype(np.float32),
        "floor_tex": np.array([r.integers(0, 2), r.uniform(2.0, 6.0), r.uniform(0.1, 0.25)], np.float32),
        "wall_tex": np.array([r.uniform(3.0, 12.0), r.uniform(0.0, 0.12)], np.float32),
        "light": np.array([r.uniform(-1.5, 1.5), room_h - h - 0.2, r.uniform(1.0, back - 1.0)], np.float32),
        "light_gain": np.float32(r.uniform(2.0, 5.0)),
        "ambient": np.float32(r.uniform(0.15, 0.35)),
        "tint": r.uniform(0.85, 1.0, 3).astype(np.float32),
        "noise": np.float32(r.uniform(0.01, 0.04)),
    }

    def place(radius: float) -> tuple[float, float]:
        return r.uniform(-left + radius, right - radius), r.uniform(1.8 + radius, back - radius)

    k = r.integers(0, _MAX_SPHERES + 1)
    sph = np.zeros((_MAX_SPHERES, 5), np.float32)  # cx, cy, cz, radius, active
    for i in range(k):
        rad = r.uniform(0.15, 0.5)
        x, z = place(rad)
        sph[i] = (x, -h + rad, z, rad, 1.0)
    k = r.integers(1, _MAX_BOXES + 1)
    box = np.zeros((_MAX_BOXES, 9), np.float32)  # cx, cy, cz, half x/y/z, yaw, class, active
    for i in range(k):
        cls = CABINET if r.random() < 0.4 else BOX
        hx, hz = r.uniform(0.15, 0.6, 2)
        hy = r.uniform(0.5, 1.0) if cls == CABINET else r.uniform(0.12, 0.5)
        x, z = place(max(hx, hz))
        box[i] = (x, -h + hy, z, hx, hy, hz, r.uniform(0, np.pi / 2), cls, 1.0)
    k = r.integers(0, _MAX_CYLINDERS + 1)
    cyl = np.zeros((_MAX_CYLINDERS, 6), np.float32)  # cx, cz, radius, top y, class, active
    for i in range(k):
        cls = PILLAR if r.random() < 0.5 else STOOL
        if cls == PILLAR:
            rad, height = r.uniform(0.1, 0.3), r.uniform(1.2, 2.4)
        else:
            rad, height = r.uniform(0.2, 0.45), r.uniform(0.35, 0.7)
        x, z = place(rad)
        cyl[i] = (x, z, rad, -h + height, cls, 1.0)
    p["spheres"], p["boxes"], p["cylinders"] = sph, box, cyl
    n_obj = _MAX_SPHERES + _MAX_BOXES + _MAX_CYLINDERS
    p["obj_colour"] = r.normal(0, 0.07, (n_obj, 3)).astype(np.float32)  # jitter around the class colour
    p["obj_tex"] = np.stack([r.uniform(4.0, 14.0, n_obj), r.uniform(0.0, 0.25, n_obj)], 1).astype(np.float32)
    return p


def _stack(scenes: list[dict[str, np.ndarray | np.generic]]) -> dict[str, np.ndarray]:
    return {k: np.stack([s[k] for s in scenes]) for k in scenes[0]}


# -- ray casting -----------------------------------------------------------------------------


def _rays(pitch: np.ndarray, size: int) -> list[np.ndarray]:
    """World-frame ray directions, three [B, P] components, of camera-frame directions with
    z = 1 (so the ray parameter t *is* the z-depth)."""
    f, cx, cy = intrinsics(size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = ((u - cx) / f).reshape(1, -1), (-(v - cy) / f).reshape(1, -1)
    c, s = np.cos(pitch)[:, None].astype(np.float32), np.sin(pitch)[:, None].astype(np.float32)
    return [np.repeat(x, len(pitch), 0), c * y - s, s * y + c]


class _Hits:
    """Nearest hit so far per ray: t, class, world normal (three [B, P] components) and object
    slot (−1 = room). Components are kept apart: numpy reduces a trailing axis of 3 slowly."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.t = np.full(shape, np.inf, np.float32)
        self.cls = np.full(shape, -1, np.int64)
        self.normal = [np.zeros(shape, np.float32) for _ in range(3)]
        self.slot = np.full(shape, -1, np.int64)

    def offer(self, t: np.ndarray, cls: np.ndarray | int, normal: tuple[npt.ArrayLike, ...], slot: int) -> None:
        near = t < self.t
        self.t[near] = t[near]
        self.cls[near] = (np.broadcast_to(cls, t.shape))[near]
        for mine, theirs in zip(self.normal, normal, strict=True):
            mine[near] = np.broadcast_to(theirs, t.shape)[near]
        self.slot[near] = slot


def _positive(t: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok & (t > 1e-4), t, np.inf).astype(np.float32)


def _render(p: dict[str, np.ndarray], size: int,
            rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    B = len(p["pitch"])
    d = _rays(p["pitch"], size)
    hits = _Hits(d[0].shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _room(p, d, hits)
        _spheres(p, d, hits)
        _boxes(p, d, hits)
        _cylinders(p, d, hits)

    valid = np.isfinite(hits.t)
    t = np.where(valid, hits.t, 0.0).astype(np.float32)
    pts = [t * c for c in d]
    albedo = _albedo(p, pts, hits, valid)
    to_light = [p["light"][:, i : i + 1] - pts[i] for i in range(3)]
    dist2 = sum(c * c for c in to_light)
    lam = np.clip(sum(n * c for n, c in zip(hits.normal, to_light, strict=True)) / np.sqrt(dist2 + 1e-12), 0.0, None)
    light = p["ambient"][:, None] + p["light_gain"][:, None] * lam / (1.0 + 0.15 * dist2)
    rgb = albedo * (light[..., None] * p["tint"][:, None, :])
    rgb = np.where(valid[..., None], rgb, 0.02)  # the void above open rooms is dark
    noise = np.stack([r.standard_normal((size * size, 3), dtype=np.float32) for r in rngs])
    rgb = np.clip(rgb + p["noise"][:, None, None] * noise, 0.0, 1.0)

    c, s = np.cos(p["pitch"])[:, None], np.sin(p["pitch"])[:, None]
    nx, ny, nz = hits.normal
    n_cam = np.stack([nx, c * ny + s * nz, -s * ny + c * nz], 1)  # world -> camera: inverse pitch
    # float32 hit points leave curved-surface normals ~1e-4 off unit length: renormalise
    n_cam /= np.maximum(np.sqrt((n_cam * n_cam).sum(1, keepdims=True)), 1e-12)
    n_cam = np.where(valid[:, None], n_cam, 0.0).astype(np.float32)

    label = np.where(valid, hits.cls, -1).reshape(B, size, size)
    image = np.ascontiguousarray(rgb.reshape(B, size, size, 3).transpose(0, 3, 1, 2), dtype=np.float32)
    return image, label, t.reshape(B, 1, size, size), n_cam.reshape(B, 3, size, size)


def _room(p: dict[str, np.ndarray], d: list[np.ndarray], hits: _Hits) -> None:
    dx, dy, dz = d
    h = p["h"][:, None]
    back, left, right, top = (p["walls"][:, i : i + 1] for i in range(4))
    ceiling = p["ceiling"][:, None]
    hits.offer(_positive(-h / dy, dy < 0), FLOOR, (0, 1, 0), -1)
    hits.offer(_positive(top / dy, (dy > 0) & ceiling), CEILING, (0, -1, 0), -1)
    # Walls end at the top; above them there is a ceiling or nothing.
    for t, normal in ((back / dz, (0, 0, -1)), (-left / dx, (1, 0, 0)), (right / dx, (-1, 0, 0))):
        hits.offer(_positive(t, t * dy <= top), WALL, normal, -1)


def _spheres(p: dict[str, np.ndarray], d: list[np.ndarray], hits: _Hits) -> None:
    dx, dy, dz = d
    a = dx * dx + dy * dy + dz * dz
    for k in range(_MAX_SPHERES):
        s = p["spheres"][:, k]
        if not s[:, 4].any():
            continue
        cx, cy, cz, rad = (s[:, None, i] for i in range(4))
        on = s[:, None, 4] > 0
        b = dx * cx + dy * cy + dz * cz  # half of −b in the textbook form, camera at the origin
        disc = b * b - a * (cx * cx + cy * cy + cz * cz - rad * rad)
        t = _positive((b - np.sqrt(np.maximum(disc, 0))) / a, on & (disc >= 0))
        inv = 1.0 / np.maximum(rad, 1e-6)
        tf = np.where(np.isfinite(t), t, 0)
        hits.offer(t, BALL, ((tf * dx - cx) * inv, (tf * dy - cy) * inv, (tf * dz - cz) * inv), k)


def _boxes(p: dict[str, np.ndarray], d: list[np.ndarray], hits: _Hits) -> None:
    dx, dy, dz = d
    for k in range(_MAX_BOXES):
        bx = p["boxes"][:, k]
        if not bx[:, 8].any():
            continue
        cx, cy, cz, hx, hy, hz, yaw = (bx[:, None, i] for i in range(7))
        cls, on = bx[:, 7].astype(np.int64)[:, None], bx[:, None, 8] > 0
        cs, sn = np.cos(yaw), np.sin(yaw)
        # ray in the box frame (rotation about y by −yaw; the origin is the camera)
        o = (-cs * cx + sn * cz, -cy, -sn * cx - cs * cz)
        dl = [np.where(np.abs(c) < 1e-9, np.float32(1e-9), c) for c in (cs * dx - sn * dz, dy, sn * dx + cs * dz)]
        near, far = [], []
        for oi, di, hi in zip(o, dl, (hx, hy, hz), strict=True):
            t1, t2 = (-hi - oi) / di, (hi - oi) / di
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
        tmin = np.maximum(np.maximum(near[0], near[1]), near[2])
        tmax = np.minimum(np.minimum(far[0], far[1]), far[2])
        t = _positive(tmin, on & (tmax >= tmin))
        nl = [np.where(near[i] == tmin, -np.sign(dl[i]), 0).astype(np.float32) for i in range(3)]
        hits.offer(t, cls, (cs * nl[0] + sn * nl[2], nl[1], -sn * nl[0] + cs * nl[2]), _MAX_SPHERES + k)


def _cylinders(p: dict[str, np.ndarray], d: list[np.ndarray], hits: _Hits) -> None:
    dx, dy, dz = d
    h = p["h"][:, None]
    a = dx * dx + dz * dz
    for k in range(_MAX_CYLINDERS):
        cl = p["cylinders"][:, k]
        if not cl[:, 5].any():
            continue
        cx, cz, rad, top = (cl[:, None, i] for i in range(4))
        cls, on = cl[:, 4].astype(np.int64)[:, None], cl[:, None, 5] > 0
        b = dx * cx + dz * cz
        disc = b * b - a * (cx * cx + cz * cz - rad * rad)
        ts = (b - np.sqrt(np.maximum(disc, 0))) / a
        ys = ts * dy
        ts = _positive(ts, on & (disc >= 0) & (ys <= top) & (ys >= -h))
        tc = top / dy
        inside = (tc * dx - cx) ** 2 + (tc * dz - cz) ** 2 <= rad * rad
        tc = _positive(tc, on & inside)
        cap = tc < ts
        t = np.where(cap, tc, ts)
        tf = np.where(np.isfinite(ts), ts, 0)
        inv = 1.0 / np.maximum(rad, 1e-6)
        normal = (np.where(cap, 0, (tf * dx - cx) * inv), cap.astype(np.float32),
                  np.where(cap, 0, (tf * dz - cz) * inv))
        hits.offer(t, cls, normal, _MAX_SPHERES + _MAX_BOXES + k)


# -- appearance ------------------------------------------------------------------------------


def _albedo(p: dict[str, np.ndarray], pts: list[np.ndarray], hits: _Hits, valid: np.ndarray) -> np.ndarray:
    x, y, z = pts
    cls, slot = hits.cls, hits.slot
    room = np.take_along_axis(p["room_colour"], np.clip(cls, 0, 2)[..., None].repeat(3, -1), 1)
    obj_slot = np.clip(slot, 0, None)
    jitter = np.take_along_axis(p["obj_colour"], obj_slot[..., None].repeat(3, -1), 1)
    obj = _BASE_COLOUR[np.clip(cls, 0, NUM_CLASSES - 1)] + jitter
    colour = np.where((slot < 0)[..., None], room, obj)

    # floor: checker (kind 0) or planks (kind 1)
    kind, freq, amp = (p["floor_tex"][:, i : i + 1] for i in range(3))
    checker = np.sign(np.sin(freq * x) * np.sin(freq * z))
    planks = np.sin(freq * 2.0 * x) * 0.5 + 0.5 * np.sign(np.sin(freq * 0.5 * z + 3.0 * np.floor(freq * x)))
    floor_tex = 1.0 + amp * np.where(kind > 0, planks, checker)
    wfreq, wamp = p["wall_tex"][:, 0:1], p["wall_tex"][:, 1:2]
    wall_tex = 1.0 + wamp * np.sin(wfreq * (x + z))
    ofreq = np.take_along_axis(p["obj_tex"][..., 0], obj_slot, 1)
    oamp = np.take_along_axis(p["obj_tex"][..., 1], obj_slot, 1)
    # Balls and cylinders are striped horizontally, boxes vertically: another cue beyond colour.
    stripe_coord = np.where((cls == BALL) | (cls == PILLAR) | (cls == STOOL), y, x + z)
    obj_tex = 1.0 + oamp * np.sign(np.sin(ofreq * stripe_coord))
    tex = np.select([cls == FLOOR, cls == WALL, cls == CEILING], [floor_tex, wall_tex, np.ones_like(x)], obj_tex)
    shaded: np.ndarray = np.clip(colour * np.where(valid, tex, 1.0)[..., None], 0.0, 1.0).astype(np.float32)
    return shaded
