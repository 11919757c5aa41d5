"""Geometry primitives for the procedural phantoms.

Anatomy is described as (approximate) signed distance functions of world coordinates in mm
(negative inside). Turning a distance into an occupancy with a one-voxel ramp (:func:`soft`) gives
partial-volume edges at any resolution; the renderer additionally evaluates on a finer grid and
block-averages (:func:`block_mean`). Every function takes coordinate arrays that broadcast
(``x`` shaped ``(n, 1, 1)``, ``y`` ``(1, n, 1)``, ``z`` ``(1, 1, n)``) so expressions that only
involve ``x`` and ``y`` stay 2D and cost little; scalars work too (used to test single points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def soft(sdf: np.ndarray, width: float) -> np.ndarray:
    """Occupancy in [0, 1] of a shape given its signed distance: a linear ramp one voxel wide."""
    return np.clip(0.5 - np.asarray(sdf, dtype=np.float32) / np.float32(width), 0.0, 1.0)


def smoothstep(t: np.ndarray | float) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix about z (yaw), then y (pitch), then x (roll); angles in radians."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def ellipsoid_sdf(x, y, z, centre, axes, rot: np.ndarray | None = None) -> np.ndarray:
    """First-order signed distance to an ellipsoid ``(F - 1) / |grad F|`` with ``F`` its radial norm.

    Exact on a sphere, within a few per cent near the surface of moderately elongated ellipsoids,
    which is all a one-voxel partial-volume ramp needs.
    """
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if rot is not None:  # local coordinates: rot maps local axes to world, so apply its transpose
        dx, dy, dz = (
            rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
            rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
            rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz,
        )
    a, b, c = axes
    f = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
    grad_f = np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2 + (dz / c**2) ** 2) / np.maximum(f, 1e-6)
    return (f - 1.0) / np.maximum(grad_f, 1.0 / max(a, b, c))  # |grad F| >= 1/max axis (centre safe)


FAR = np.float32(1e4)
"""Signed distance used outside an object's bounding box (far outside any one-voxel ramp)."""


def ellipsoid_on_grid(axes: tuple[np.ndarray, np.ndarray, np.ndarray], centre, semi, rot: np.ndarray | None = None, margin: float = 20.0) -> np.ndarray:
    """:func:`ellipsoid_sdf` on a grid, evaluated only in the object's bounding box (``FAR`` elsewhere)."""
    xs, ys, zs = axes
    out = np.full((len(xs), len(ys), len(zs)), FAR, np.float32)
    reach = max(semi) + margin
    box = [slice(np.searchsorted(v, c - reach), np.searchsorted(v, c + reach, side="right")) for v, c in zip(axes, centre)]
    sub = ellipsoid_sdf(xs[box[0]][:, None, None], ys[box[1]][None, :, None], zs[box[2]][None, None, :], centre, semi, rot)
    out[box[0], box[1], box[2]] = sub
    return out


@dataclass
class Tubes:
    """A set of tapered capsules (vessels, airways, ribs): segment end points and radii in mm."""

    p0: np.ndarray  # (n, 3)
    p1: np.ndarray  # (n, 3)
    r0: np.ndarray  # (n,)
    r1: np.ndarray  # (n,)

    @staticmethod
    def from_lists(segments: list[tuple]) -> Tubes:
        if not segments:
            return Tubes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        p0, p1, r0, r1 = zip(*segments)
        return Tubes(np.array(p0, float), np.array(p1, float), np.array(r0, float), np.array(r1, float))

    @staticmethod
    def polyline(points: np.ndarray, radii: np.ndarray | float) -> list[tuple]:
        """Segments along a polyline; ``radii`` per point (or one value)."""
        points = np.asarray(points, float)
        radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
        return [(points[i], points[i + 1], radii[i], radii[i + 1]) for i in range(len(points) - 1)]

    def __len__(self) -> int:
        return len(self.r0)

    def paint(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray], width: float, offsets=(0.0,)) -> list[np.ndarray]:
        """Occupancy of the union of capsules on the grid ``axes`` (three 1D coordinate vectors).

        One occupancy per radius offset (e.g. ``(0, -1.5)`` gives a bone and its marrow) in one pass.
        Each capsule only touches its bounding box, so thousands of thin vessels stay cheap.
        """
        xs, ys, zs = axes
        shape = (len(xs), len(ys), len(zs))
        out = [np.zeros(shape, np.float32) for _ in offsets]
        if len(self) == 0:
            return out
        margin = self.r0.max() + width
        lo = np.minimum(self.p0, self.p1) - np.maximum(self.r0, self.r1)[:, None] - width
        hi = np.maximum(self.p0, self.p1) + np.maximum(self.r0, self.r1)[:, None] + width
        keep = (hi[:, 2] >= zs[0] - margin) & (lo[:, 2] <= zs[-1] + margin)
        for n in np.flatnonzero(keep):
            box = []
            for ax, coords in enumerate((xs, ys, zs)):
                a, b = np.searchsorted(coords, lo[n, ax]), np.searchsorted(coords, hi[n, ax], side="right")
                if b <= a:
                    break
                box.append(slice(a, b))
            if len(box) < 3:
                continue
            px = xs[box[0]][:, None, None] - self.p0[n, 0]
            py = ys[box[1]][None, :, None] - self.p0[n, 1]
            pz = zs[box[2]][None, None, :] - self.p0[n, 2]
            d = self.p1[n] - self.p0[n]
            length2 = float(d @ d) or 1e-9
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
            dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
            radius = self.r0[n] + t * (self.r1[n] - self.r0[n])
            for occ, offset in zip(out, offsets):
                view = occ[box[0], box[1], box[2]]
                np.maximum(view, soft(dist - (radius + offset), width), out=view)
        return out


def branching_tree(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    radius: np.ndarray | float,
    length: float,
    inside,
    min_radius: float,
    centre: np.ndarray,
    max_segments: int = 8000,
) -> list[tuple]:
    """Bifurcating tube trees (vessels, airways) grown generation by generation inside an organ.

    One tree per row of ``start``/``direction``/``radius``/``centre`` (or a single tree); all trees
    grow together so each generation costs one vectorised ``inside`` query.

    ``inside(x, y, z, radius)`` (arrays) says which segment tips fit the organ; a tip that does not
    is retried shorter and bent, then dropped. Each branch point continues with a main child
    (slightly thinner, small angle) and a side child (thinner, 35-70 degrees) leaning away from
    ``centre`` so the tree fans out from the hilum and fills the organ, thinning distally.
    """
    segments: list[tuple] = []
    p0 = np.atleast_2d(np.asarray(start, float))
    d = _unit(np.atleast_2d(np.asarray(direction, float)))
    r = np.broadcast_to(np.asarray(radius, float), (len(p0),)).copy()
    ell = np.full(len(p0), float(length))
    centre = np.broadcast_to(np.asarray(centre, float), p0.shape).copy()
    while len(r) and len(segments) < max_segments:
        ends = np.full_like(p0, np.nan)
        for attempt, shrink in enumerate((1.0, 0.65, 0.4)):
            todo = np.isnan(ends[:, 0])
            if not todo.any():
                break
            trial_d = d[todo] if attempt == 0 else _unit(d[todo] + rng.normal(0.0, 0.45, (int(todo.sum()), 3)))
            tips = p0[todo] + trial_d * (ell[todo] * shrink)[:, None]
            ok = np.asarray(inside(tips[:, 0], tips[:, 1], tips[:, 2], r[todo]), bool)
            rows = np.flatnonzero(todo)[ok]
            ends[rows], d[rows] = tips[ok], trial_d[ok]
        keep = ~np.isnan(ends[:, 0])
        p0, ends, d, r, centre = p0[keep], ends[keep], d[keep], r[keep], centre[keep]
        segments += [(a, b, float(rad), float(rad) * 0.93) for a, b, rad in zip(p0, ends, r)]
        n = len(r)
        if n == 0:
            break
        outward = _unit(ends - centre)
        axis = _unit(np.cross(d, rng.normal(size=(n, 3))))
        main_r, side_r = r * rng.uniform(0.78, 0.9, n), r * rng.uniform(0.5, 0.72, n)
        main_d = _rotate(d, axis, np.radians(rng.uniform(5, 25, n)))
        side_d = _rotate(d, axis, -np.radians(rng.uniform(35, 70, n)))
        child_p, child_d, child_r, child_c = [], [], [], []
        for cr, cd, lean in ((main_r, main_d, 0.15), (side_r, side_d, 0.3)):
            grow = cr >= min_radius
            child_p.append(ends[grow])
            child_d.append(_unit(cd[grow] + lean * outward[grow]))
            child_r.append(cr[grow])
            child_c.append(centre[grow])
        p0, d, r, centre = np.vstack(child_p), np.vstack(child_d), np.concatenate(child_r), np.vstack(child_c)
        ell = np.clip(r * rng.uniform(4.5, 7.5, len(r)), 3.0, 30.0)
    return segments[:max_segments]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _rotate(v: np.ndarray, axis: np.ndarray, angle) -> np.ndarray:
    """Rodrigues rotation of the rows of ``v`` about the unit rows of ``axis``."""
    angle = np.asarray(angle, float)[..., None]
    along = np.sum(axis * v, axis=-1, keepdims=True)
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * along * (1 - np.cos(angle))


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``^3 blocks: the partial-volume step from the render grid to the output grid."""
    if factor == 1:
        return array
    n0, n1, n2 = (s // factor for s in array.shape)
    return array.reshape(n0, factor, n1, factor, n2, factor).mean(axis=(1, 3, 5), dtype=np.float32)


def block_labels(labels: np.ndarray, factor: int, n_labels: int) -> np.ndarray:
    """Majority label per block (background included), so labels follow the downsampled image."""
    if factor == 1:
        return labels
    fractions = np.stack([block_mean((labels == value).astype(np.float32), factor) for value in range(n_labels + 1)])
    return np.argmax(fractions, axis=0).astype(np.uint8)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: float, std: float) -> np.ndarray:
    """White Gaussian noise low-pass filtered (CT-like grain), rescaled to the requested std."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_voxels > 0:
        noise = ndimage.gaussian_filter(noise, sigma_voxels, mode="wrap")
    return noise * np.float32(std / max(float(noise.std()), 1e-6))


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (textures, bias fields)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_voxels, mode="reflect")
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)
