"""Procedural brain MRI (T1- or T2-like, arbitrary units ~0-1000) with a folded cortex.

The cerebrum is an ellipsoidal envelope with low-order shape variation. Sulci are the zero sheets
of a random band-limited field (a sum of plane waves at a gyral wavelength of ~2 cm) cut to a
subject-specific depth; the grey-matter ribbon is everything within the cortical thickness of the
nearest CSF (outer surface, sulci, interhemispheric fissure), and white matter fills the rest.
Ventricles are tapered tubes along the lateral-ventricle C shape; deep grey nuclei are
ellipsoids; the cerebellum has its own fine folia. A smooth multiplicative bias field and Rician
noise give the scanner look.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddiff_cli.phantom.shapes import Tubes, ellipsoid_on_grid, ellipsoid_sdf, rotation, smooth_field, smoothstep, soft

MRI_FOV_MM = 220.0
MRI_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}
TISSUE_INTENSITY = {  # relative signal per tissue, before per-subject jitter, bias field and noise
    "t1": {"csf": 150, "gm": 470, "wm": 720, "deep_gm": 560, "fat": 830, "skull": 45, "diploe": 330, "muscle": 390, "vitreous": 110, "brainstem": 640},
    "t2": {"csf": 950, "gm": 560, "wm": 380, "deep_gm": 470, "fat": 620, "skull": 35, "diploe": 380, "muscle": 230, "vitreous": 950, "brainstem": 430},
}


@dataclass
class BrainSubject:
    """Everything random about one synthetic head."""

    centre: np.ndarray  # cerebrum centre
    axes: tuple[float, float, float]
    shape_rot: np.ndarray
    csf_gap: float  # outer CSF thickness between brain and skull
    skull: float
    scalp: float
    cortex: float  # grey-matter ribbon thickness
    sulcus_depth: float
    sulcus_width: float
    waves: np.ndarray  # (K, 4): wave vector (rad/mm) and phase of the gyral field
    folia_waves: np.ndarray
    fissure_width: float
    atrophy: float  # ventricle scale
    intensity: dict[str, float]
    bias: np.ndarray  # polynomial coefficients of the log bias field
    noise_sigma: float
    tubes: dict[str, Tubes] = field(default_factory=dict)

    def envelope_sdf(self, x, y, z):
        """Cerebrum: an ellipsoid with temporal lobes hanging below it laterally (smooth union)."""
        c = self.centre
        sdf = ellipsoid_sdf(x, y, z, c, self.axes, self.shape_rot)
        for side in (1, -1):
            temporal = ellipsoid_sdf(x, y, z, (c[0] + side * (self.axes[0] - 24.0), c[1] + 8.0, c[2] - 26.0), (24.0, 42.0, 22.0))
            sdf = smooth_min(sdf, temporal, 10.0)
        return sdf

    def cerebellum_on_grid(self, grid):
        c = self.centre
        hemispheres = [ellipsoid_on_grid(grid, (c[0] + side * 22.0, c[1] - 52.0, c[2] - 50.0), (34.0, 30.0, 22.0)) for side in (1, -1)]
        return np.minimum(*hemispheres)


def smooth_min(a, b, k: float):
    """Union of two distance fields with a rounded crease of size ``k`` mm (no sharp notch)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _waves(rng: np.random.Generator, count: int, wavelength: tuple[float, float]) -> np.ndarray:
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength, size=(count, 1))
    return np.hstack([directions * k, rng.uniform(0, 2 * np.pi, size=(count, 1))])


def brain_subject(rng: np.random.Generator, contrast: str = "t1") -> BrainSubject:
    axes = (rng.uniform(63.0, 71.0), rng.uniform(80.0, 90.0), rng.uniform(56.0, 64.0))
    atrophy = rng.uniform(0.75, 1.3)
    jitter = {name: value * rng.uniform(0.94, 1.06) for name, value in TISSUE_INTENSITY[contrast].items()}
    s = BrainSubject(
        centre=np.array([rng.normal(0, 2.0), rng.uniform(-2.0, 8.0), rng.uniform(-8.0, -2.0)]),
        axes=axes,
        shape_rot=rotation(rng.normal(0, 0.04), rng.normal(0, 0.03), rng.normal(0, 0.1)),
        csf_gap=rng.uniform(1.5, 3.0) + 1.5 * (atrophy - 0.75),
        skull=rng.uniform(5.0, 8.0),
        scalp=rng.uniform(4.5, 8.0),
        cortex=rng.uniform(2.4, 3.2),
        sulcus_depth=rng.uniform(11.0, 17.0),
        sulcus_width=rng.uniform(0.9, 1.5) * (0.6 + 0.5 * atrophy),
        waves=_waves(rng, 16, (21.0, 27.0)),
        folia_waves=_waves(rng, 4, (40.0, 60.0)),
        fissure_width=rng.uniform(1.0, 2.0),
        atrophy=atrophy,
        intensity=jitter,
        bias=rng.normal(0.0, 0.12, size=7),
        noise_sigma=rng.uniform(0.012, 0.035) * jitter["wm" if contrast == "t1" else "csf"],
    )
    _add_tubes(s)
    return s


def _add_tubes(s: BrainSubject) -> None:
    """Lateral ventricles (frontal horn, body, atrium, occipital and temporal horns), third ventricle, brainstem."""
    c, k = s.centre, s.atrophy
    ventricles: list[tuple] = []
    for side in (1, -1):
        main = np.array([(3, 30, 4), (5, 14, 9), (6, -6, 10), (10, -26, 6), (13, -40, -2)], float)
        main[:, 0] = side * (main[:, 0] * (0.8 + 0.2 * k) + 1.5)
        ventricles += Tubes.polyline(main + c, np.array([5.0, 5.0, 4.0, 5.5, 3.0]) * k**0.8)
        temporal = np.array([(10, -26, 6), (20, -22, -6), (25, -8, -18), (26, 6, -24)], float)
        temporal[:, 0] *= side
        ventricles += Tubes.polyline(temporal + c, np.array([5.5, 3.5, 2.5, 2.0]) * k**0.8)
    ventricles += Tubes.polyline(np.array([(0, 6, -4), (0, -14, -2)]) + c, 1.6 * k)
    s.tubes["ventricles"] = Tubes.from_lists(ventricles)
    stem = np.array([(0, -14, -8), (0, -20, -30), (0, -24, -60), (0, -26, -140)], float) + c
    s.tubes["brainstem"] = Tubes.from_lists(Tubes.polyline(stem, (11.0, 13.0, 10.0, 9.0)))


def _gyral_distance(waves: np.ndarray, x, y, z) -> np.ndarray:
    """Approximate distance (mm) to the zero sheets of a unit-variance sum of plane waves: |G| / |k|."""
    total = None
    for kx, ky, kz, phase in waves:
        term = np.cos((np.float32(kx) * x + np.float32(ky) * y + np.float32(phase)) + np.float32(kz) * z)
        total = term if total is None else total + term
    k = float(np.mean(np.linalg.norm(waves[:, :3], axis=1)))
    return np.abs(total) * np.float32(np.sqrt(2.0 / len(waves)) / k)


def render_brain(s: BrainSubject, axes, width: float, rng: np.random.Generator):
    """Paint the head on the grid given by three 1D world-coordinate vectors; returns (signal, labels)."""
    xs, ys, zs = (np.asarray(v, np.float32) for v in axes)
    x, y, z = xs[:, None, None], ys[None, :, None], zs[None, None, :]
    shape = (len(xs), len(ys), len(zs))
    signal = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    t = s.intensity

    def paint(occ, value, label: int | None = None) -> None:
        occ = np.broadcast_to(occ, shape)
        signal[...] += occ * (np.float32(value) - signal)
        if label is not None:
            labels[occ >= 0.5] = label

    cerebrum = s.envelope_sdf(x, y, z)
    grid = (xs, ys, zs)
    cerebellum = s.cerebellum_on_grid(grid)
    brain = np.minimum(cerebrum, cerebellum)
    c = s.centre
    # head: skull vault around the brain, a neck below, a face with eyes in front
    neck = np.maximum(np.hypot(x / 1.1, y - c[1] + 18.0) - 50.0, z - (c[2] - 40.0))
    face = ellipsoid_sdf(x, y, z, (c[0], c[1] + 52.0, c[2] - 66.0), (50.0, 38.0, 46.0))
    outer_skull = brain - (s.csf_gap + s.skull)
    head = smooth_min(smooth_min(outer_skull - s.scalp, neck, 20.0), face, 25.0)  # one smooth outline
    paint(soft(head, width), t["muscle"])
    paint(soft(np.maximum(head + 1.5, -(head + s.scalp * 0.8)), width), t["fat"])  # subcutaneous fat under the skin
    for side in (1, -1):
        eye_c = (c[0] + side * 31.0, c[1] + 70.0, c[2] - 40.0)
        paint(soft(ellipsoid_on_grid(grid, eye_c, (17.0, 15.0, 14.0)), width), t["fat"])  # orbital fat
        paint(soft(ellipsoid_on_grid(grid, eye_c, (11.5, 11.5, 11.5)), width), t["vitreous"])
    vault = outer_skull  # the skull closes under the brain too (skull base); the brainstem passes through
    paint(soft(vault, width), t["skull"])
    paint(soft(vault + 1.6, width) * soft(-(brain - s.csf_gap - 1.6), width), t["diploe"])
    paint(soft(brain - s.csf_gap, width), t["csf"], MRI_LABELS["csf"])
    # cerebral cortex: distance to the nearest CSF (outer surface, sulcal sheets, midline fissure)
    callosum = np.float32(c[2] + 8.0) + 40.0 * smoothstep((np.abs(y - c[1] + 5.0) - 30.0) / 25.0)
    fissure = np.hypot(np.maximum(np.abs(x - c[0]) - s.fissure_width / 2, 0), np.maximum(callosum - z, 0))
    depth = np.minimum(-cerebrum, fissure)  # the medial surface is folded like the convexity
    sheet = _gyral_distance(s.waves, x, y, z) - s.sulcus_width / 2
    sulcus = np.where(depth < s.sulcus_depth, sheet, np.hypot(np.maximum(sheet, 0), depth - s.sulcus_depth))
    to_csf = np.minimum(np.minimum(depth, sulcus), fissure)
    in_cerebrum = soft(cerebrum, width)
    paint(in_cerebrum, t["gm"], MRI_LABELS["gm"])
    texture = smooth_field(rng, shape, 4.0 / width)
    paint(in_cerebrum * soft(s.cortex - to_csf, width), t["wm"] * (1.0 + 0.015 * texture), MRI_LABELS["wm"])
    paint(in_cerebrum * soft(np.minimum(sulcus, fissure), width), t["csf"], MRI_LABELS["csf"])
    # cerebellum: fine folia over a white-matter core, and the brainstem
    cb_depth = -cerebellum
    wobble = _gyral_distance(s.folia_waves, x, y, z)  # folia: concentric, gently undulating shells
    folia = np.abs(np.cos((cb_depth + 3.0 * wobble) * np.float32(2 * np.pi / 6.0))) * np.float32(6.0 / (2 * np.pi)) - 0.4
    in_cb = soft(np.maximum(cerebellum, -cerebrum), width)  # cerebellum where it is not cerebrum
    paint(in_cb, t["gm"], MRI_LABELS["gm"])
    paint(in_cb * soft(9.0 - cb_depth + 4.0 * folia, width), t["wm"], MRI_LABELS["wm"])  # arbor vitae
    paint(in_cb * soft(np.maximum(folia, cb_depth - 8.0), width), t["csf"], MRI_LABELS["csf"])
    (stem,) = s.tubes["brainstem"].paint(grid, width)
    pons = ellipsoid_on_grid(grid, (c[0], c[1] - 14.0, c[2] - 36.0), (15.0, 14.0, 15.0))
    paint(np.maximum(stem, soft(pons, width)), t["brainstem"], MRI_LABELS["wm"])
    # deep grey nuclei, then the ventricles
    for side in (1, -1):
        for centre, semi in (((11, -12, 2), (9, 14, 9)), ((13, 18, 12), (5.5, 10, 8)), ((24, 4, 2), (6, 15, 10))):
            nucleus = ellipsoid_on_grid(grid, c + np.array([side * centre[0], centre[1], centre[2]]), semi, rotation(side * 0.15))
            paint(soft(nucleus, width), t["deep_gm"], MRI_LABELS["gm"])
    (ventricles,) = s.tubes["ventricles"].paint(grid, width)
    paint(ventricles, t["csf"], MRI_LABELS["csf"])
    return signal, labels


def finish_mri(signal: np.ndarray, s: BrainSubject, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative bias field (a low-order polynomial in log space) and Rician noise."""
    n = signal.shape
    u = [np.linspace(-1.0, 1.0, m, dtype=np.float32) for m in n]
    x, y, z = u[0][:, None, None], u[1][None, :, None], u[2][None, None, :]
    b = s.bias
    log_bias = b[0] * x + b[1] * y + b[2] * z + b[3] * x * y + b[4] * y * z + b[5] * (x * x - 0.3) + b[6] * (z * z - 0.3)
    biased = signal * np.exp(log_bias).astype(np.float32)
    real = biased + rng.normal(0.0, s.noise_sigma, n).astype(np.float32)
    imaginary = rng.normal(0.0, s.noise_sigma, n).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
