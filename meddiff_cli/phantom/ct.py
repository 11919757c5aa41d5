"""Procedural chest CT (Hounsfield units) with lungs, vessel tree, heart, great vessels, spine, ribs and table.

A :class:`ChestSubject` is drawn from a seed (body habitus, fat, breathing state, heart size and
position, spine curvature, rib spacing, nodules...). Its anatomy is a set of signed distance
functions of world coordinates (RAS+, mm; the body centred at the origin, z = superior), so a
subject renders identically at any grid size. :func:`render_chest` paints tissues in order with
partial-volume occupancies, then adds a scanner point-spread function and correlated noise.

Longer than 350 lines: one subject's anatomy is one idea (the organs are drawn relative to each other), and
splitting it would scatter the shared geometry across files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, ndimage

from meddiff_cli.phantom.shapes import (
    Tubes,
    branching_tree,
    correlated_noise,
    ellipsoid_on_grid,
    ellipsoid_sdf,
    rotation,
    smooth_field,
    smoothstep,
    soft,
)

CT_FOV_MM = 380.0
CT_LABELS = {"background": 0, "lungs": 1, "heart": 2, "bone": 3, "nodules": 4, "great_vessels": 5}  # aorta, pulmonary trunk, SVC
AIR_HU = -1000.0


@dataclass
class ChestSubject:
    """Everything random about one synthetic patient; the anatomy methods below derive the rest."""

    a: float  # body half-width (mm)
    b: float  # body half-depth
    yc: float  # body centre (anterior-posterior)
    p: float  # superellipse exponent of the body outline (2 = ellipse, larger = boxier)
    harmonics: list[tuple[int, float, float]]  # (order, amplitude, phase) outline wobble
    fat: float  # subcutaneous fat thickness
    fat_shape: tuple[float, float]
    muscle: float
    z_apex: float  # lung apex height
    z_dome_right: float  # diaphragm dome tops (breathing state + right dome higher)
    z_dome_left: float
    dome_depth: float
    inspiration: float  # breathing state: 0 = expiration, 1 = deep inspiration
    lung_hu: float
    w_med: float  # mediastinum half-width
    heart_centre: np.ndarray
    heart_axes: tuple[float, float, float]
    heart_rot: np.ndarray
    z_carina: float
    kyphosis: float
    vertebra_pitch: float
    vertebra_phase: float
    vb_axes: tuple[float, float]
    canal_radius: float
    cortical_hu: float
    cancellous_hu: float
    rib_drop: float
    table_gap: float
    table_halfwidth: float
    table_curve: float
    soft_hu: float
    fat_hu: float
    noise_std: float
    nodules: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # centre, radius, HU
    tubes: dict[str, Tubes] = field(default_factory=dict)

    # ---- body outline and chest wall (functions of the axial angle theta) ----------------------
    def outline_radius(self, theta):
        """Body outline radius along angle ``theta`` at scale 1 (superellipse with a few harmonics)."""
        wobble = 1.0 + sum(amp * np.cos(order * theta + phase) for order, amp, phase in self.harmonics)
        norm = (np.abs(np.cos(theta) / self.a) ** self.p + np.abs(np.sin(theta) / self.b) ** self.p) ** (1.0 / self.p)
        return wobble / norm

    def scale(self, z):
        """Outline scale along z: the neck narrows above the thoracic inlet, the abdomen widens a little."""
        neck = smoothstep((z - (self.z_apex + 35.0)) / 50.0)
        belly = smoothstep((self.z_dome_left - 40.0 - z) / 120.0)
        return 1.0 - 0.42 * neck + 0.04 * belly

    def fat_thickness(self, theta):
        return self.fat * (1.0 + self.fat_shape[0] * np.cos(2 * theta) + self.fat_shape[1] * np.sin(theta))

    def muscle_thickness(self, theta):
        paraspinal = 30.0 * np.exp(-(((theta + np.pi / 2) / 0.42) ** 2))
        pectoral = 9.0 * (np.exp(-(((theta - 0.95) / 0.35) ** 2)) + np.exp(-(((theta - 2.2) / 0.35) ** 2)))
        scapular = 9.0 * np.exp(-(((np.abs(theta + np.pi / 2) - 0.8) / 0.35) ** 2))
        return self.muscle + paraspinal + pectoral + scapular

    def wall_thickness(self, theta):
        """Skin + fat + muscle + the rib/intercostal layer: the depth of the thoracic cavity."""
        return 2.0 + self.fat_thickness(theta) + self.muscle_thickness(theta) + 7.0

    def body_sdf(self, x, y, z):
        yy = y - self.yc
        theta = np.arctan2(yy, x)
        sdf = np.hypot(x, yy) - self.scale(z) * self.outline_radius(theta)
        return np.maximum(sdf, self.table_top - y), theta  # the back lies flattened on the table

    @property
    def table_top(self) -> float:
        return float(self.yc - self.outline_radius(-np.pi / 2)) - self.table_gap

    def back_y(self, z):
        return self.yc - self.scale(z) * self.outline_radius(-np.pi / 2)

    def front_y(self, z):
        return self.yc + self.scale(z) * self.outline_radius(np.pi / 2)

    # ---- spine -------------------------------------------------------------------------------
    def canal_y(self, z):
        post = -np.pi / 2
        depth = 2.0 + self.fat_thickness(post) + 0.95 * self.muscle_thickness(post)
        curve = self.kyphosis * (1.0 - ((z - 20.0) / 190.0) ** 2)
        return self.back_y(z) + depth - curve

    def vb_y(self, z):
        return self.canal_y(z) + self.canal_radius + 3.0 + self.vb_axes[1]

    def spine_zone_sdf(self, x, y, z):
        """Region the lungs must not enter: vertebral body plus everything posterior to it near the midline."""
        return np.maximum(np.abs(x) - (self.vb_axes[0] + 7.0), y - (self.vb_y(z) + self.vb_axes[1] + 3.0))

    # ---- thoracic organs ---------------------------------------------------------------------
    def diaphragm_z(self, x, y):
        side = smoothstep((x + 20.0) / 40.0)  # 0 on the patient's left (-x), 1 on the right
        top = self.z_dome_left + (self.z_dome_right - self.z_dome_left) * side
        centre_x = np.where(x > 0, 1.0, -1.0) * 0.42 * self.a
        reach = 0.62 * self.a
        r2 = ((x - centre_x) / reach) ** 2 + ((y - (self.yc + 0.25 * self.b)) / (0.9 * self.b)) ** 2
        return top - self.dome_depth * r2

    def apex_z(self, x, y):
        r2 = ((np.abs(x) - 0.33 * self.a) / 50.0) ** 2 + ((y - (self.yc - 0.1 * self.b)) / 75.0) ** 2
        return self.z_apex - 22.0 * r2

    def heart_sdf(self, x, y, z):
        return ellipsoid_sdf(x, y, z, self.heart_centre, self.heart_axes, self.heart_rot)

    def mediastinum_halfwidth(self, z):
        return self.w_med + 14.0 * np.exp(-(((z - (self.z_carina + 20.0)) / 40.0) ** 2))

    def scapula_sdf(self, x, y, z, body, theta):
        """Shoulder blades: thin triangular plates in the posterolateral chest wall, outside the ribs."""
        side = np.where(x > 0, 1.0, -1.0)
        top, height = self.z_apex + 20.0, 150.0
        down = np.clip((top - z) / height, 0.0, 1.0)
        half_angle = 0.38 * (1.0 - 0.75 * down)
        centre_angle = -np.pi / 2 + side * (0.8 + 0.1 * down)
        radius = self.scale(z) * self.outline_radius(theta)
        across = (np.abs(theta - centre_angle) - half_angle) * radius
        depth = 2.0 + self.fat_thickness(theta) + 6.0
        plate = np.abs(-body - depth) - 2.5
        return np.maximum(np.maximum(plate, across), np.maximum(z - top, (top - height) - z))

    def lung_sdf(self, x, y, z, heart=None):
        """``heart`` may pass a precomputed heart distance (the renderer's, bounding-box limited)."""
        body, theta = self.body_sdf(x, y, z)
        sdf = body + self.wall_thickness(theta) + 1.5
        sdf = np.maximum(sdf, self.diaphragm_z(x, y) - z)
        sdf = np.maximum(sdf, z - self.apex_z(x, y))
        sdf = np.maximum(sdf, self.mediastinum_halfwidth(z) - np.abs(x + 4.0))
        sdf = np.maximum(sdf, -((self.heart_sdf(x, y, z) if heart is None else heart) - 9.0))
        return np.maximum(sdf, -self.spine_zone_sdf(x, y, z))


def chest_subject(rng: np.random.Generator, tree_rng: np.random.Generator, nodules: bool, spacing: float) -> ChestSubject:
    """Draw one patient. ``spacing`` (mm) only sets how thin the vessel trees are followed."""
    a = rng.uniform(145.0, 172.0)
    b = a * rng.uniform(0.62, 0.72)
    inspiration = rng.uniform(0.0, 1.0)  # 0 = expiration, 1 = deep inspiration
    z_apex = rng.uniform(105.0, 130.0)
    dome_right = z_apex - rng.uniform(165.0, 190.0) - 30.0 * inspiration
    heart_axes = (rng.uniform(52, 62), rng.uniform(38, 45), rng.uniform(36, 44))
    dome_left = dome_right - rng.uniform(12.0, 25.0)
    heart_dir_yaw = np.pi - rng.uniform(0.45, 0.75)
    s = ChestSubject(
        a=a,
        b=b,
        yc=rng.uniform(-4.0, 14.0),
        p=rng.uniform(2.1, 2.6),
        harmonics=[(n, rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for n in (2, 3, 4)],
        fat=rng.uniform(4.0, 20.0),
        fat_shape=(rng.uniform(0.0, 0.35), rng.uniform(-0.3, 0.2)),
        muscle=rng.uniform(5.0, 10.0),
        z_apex=z_apex,
        z_dome_right=dome_right,
        z_dome_left=dome_left,
        dome_depth=rng.uniform(55.0, 80.0),
        inspiration=inspiration,
        lung_hu=-835.0 - 45.0 * inspiration + rng.normal(0, 8),
        w_med=rng.uniform(10.0, 16.0),
        heart_centre=np.zeros(3),
        heart_axes=heart_axes,
        heart_rot=rotation(yaw=heart_dir_yaw, pitch=rng.uniform(0.25, 0.5), roll=rng.uniform(-0.3, 0.3)),
        z_carina=z_apex - rng.uniform(60.0, 75.0),
        kyphosis=rng.uniform(4.0, 14.0),
        vertebra_pitch=rng.uniform(24.0, 29.0),
        vertebra_phase=rng.uniform(0.0, 30.0),
        vb_axes=(rng.uniform(18.0, 23.0), rng.uniform(14.0, 17.0)),
        canal_radius=rng.uniform(7.0, 9.0),
        cortical_hu=rng.uniform(650.0, 950.0),
        cancellous_hu=rng.uniform(180.0, 300.0),
        rib_drop=rng.uniform(45.0, 70.0),
        table_gap=rng.uniform(0.0, 4.0),
        table_halfwidth=rng.uniform(175.0, 240.0),
        table_curve=rng.uniform(10.0, 30.0),
        soft_hu=rng.uniform(35.0, 50.0),
        fat_hu=rng.uniform(-115.0, -85.0),
        noise_std=rng.uniform(10.0, 25.0),
    )
    s.heart_centre = np.array(
        [-rng.uniform(15.0, 35.0), s.yc + rng.uniform(10.0, 28.0), dome_left + 0.8 * heart_axes[2] + rng.uniform(0, 10)]
    )
    _add_tubes(s, tree_rng, spacing)
    if nodules:
        _add_nodules(s, rng)
    return s


def _smooth_path(points: list[tuple[float, float, float]], n: int = 40) -> np.ndarray:
    points = np.asarray(points, float)
    t = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    return interpolate.CubicSpline(t, points, bc_type="natural")(np.linspace(0.0, t[-1], n))


def _add_tubes(s: ChestSubject, rng: np.random.Generator, spacing: float) -> None:
    """Great vessels, airways, lung vessel trees, ribs and costal cartilage as tube sets."""
    vb = s.vb_y
    zc, h = s.z_carina, s.heart_centre
    front_of_spine = lambda z: vb(z) + s.vb_axes[1]  # noqa: E731
    trachea_y = front_of_spine(zc) + 20.0
    # aorta: ascending from the heart base, arch over the left main bronchus, descending left of the spine
    arch_z = zc + rng.uniform(18.0, 30.0)
    aorta = _smooth_path(
        [
            (h[0] + 32, h[1] - 5, h[2] + 28),
            (16, trachea_y + 22, arch_z - 30),
            (4, trachea_y + 12, arch_z),
            (-14, trachea_y - 6, arch_z - 4),
            (-22, front_of_spine(arch_z - 40) + 6, arch_z - 40),
            (-20, front_of_spine(zc - 80) + 8, zc - 80),
            (-14, front_of_spine(-140) + 10, -140),
            (-8, front_of_spine(-200) + 10, -200),
        ]
    )
    r_aorta = rng.uniform(12.0, 15.0)
    radii = np.linspace(r_aorta * 1.1, r_aorta * 0.8, len(aorta))
    great = Tubes.polyline(aorta, radii)
    pa_split = np.array([-4.0, trachea_y + 12, zc - 12])
    great += Tubes.polyline(_smooth_path([(h[0] + 10, h[1] + 25, h[2] + 25), (-12, trachea_y + 30, zc - 5), pa_split], 12), 12.0)
    hila = {side: np.array([side * (s.mediastinum_halfwidth(zc - 25) + 8.0), trachea_y - 4, zc - 25]) for side in (1, -1)}
    for side in (1, -1):
        great += Tubes.polyline(np.array([pa_split, hila[side]]), 9.0)
    great += Tubes.polyline([(30, trachea_y + 28, 200), (30, trachea_y + 26, zc), (26, h[1] - 5, h[2] + 30)], 9.0)  # SVC
    s.tubes["great_vessels"] = Tubes.from_lists(great)
    s.tubes["esophagus"] = Tubes.from_lists(
        Tubes.polyline([(-4, front_of_spine(200) + 6, 200), (-6, front_of_spine(zc) + 6, zc), (-14, front_of_spine(s.z_dome_left) + 12, s.z_dome_left - 15)], 7.5)
    )
    # airways: trachea and main bronchi, then a few generations of bronchi inside each lung
    airway = Tubes.polyline([(0, trachea_y + 4, 200), (0, trachea_y, zc)], 9.5)
    bronchi_ends = {side: hila[side] + np.array([side * 6.0, -6.0, 2.0]) for side in (1, -1)}
    for side in (1, -1):
        airway += Tubes.polyline(np.array([(0, trachea_y, zc), bronchi_ends[side]]), (7.0, 6.0))

    def inside_lung(x, y, z, radius):
        return s.lung_sdf(x, y, z) < -0.6 * radius - 0.5

    min_r = max(0.4, 0.22 * spacing)
    lobar = [(0.3, 0.05, 1.0), (0.8, 0.5, 0.5), (1.0, 0.25, -0.1), (0.35, -0.6, -1.0), (0.3, 0.7, -0.8), (0.7, -0.4, -0.4),
             (0.6, -0.7, 0.6), (0.5, 0.0, -1.0), (0.2, -0.9, -0.6)]  # lobar/segmental directions from the hilum
    roots, directions, radii, centres, airway_roots, airway_dirs, airway_centres = [], [], [], [], [], [], []
    for side in (1, -1):
        for d in lobar:
            direction = np.array([side * d[0], d[1], d[2]])
            for offset in ((0.0, 0.0, 0.0), (0.0, 8.0, -14.0)):  # arteries and veins
                roots.append(hila[side] + np.array(offset) + np.array([side * 4.0, 0.0, 0.0]))
                directions.append(direction + rng.normal(0, 0.12, 3))
                radii.append(rng.uniform(4.0, 5.5))
                centres.append(hila[side])
            airway_roots.append(bronchi_ends[side])
            airway_dirs.append(direction)
            airway_centres.append(hila[side])
    vessels = branching_tree(rng, np.array(roots), np.array(directions), np.array(radii), 26.0, inside_lung, min_r, np.array(centres))
    airway += branching_tree(rng, np.array(airway_roots), np.array(airway_dirs), 4.0, 18.0, inside_lung, 1.4, np.array(airway_centres), max_segments=600)
    s.tubes["vessels"] = Tubes.from_lists(vessels)
    s.tubes["airways"] = Tubes.from_lists(airway)
    # ribs: from the transverse process around the chest wall, sloping down to the costal cartilage
    ribs, cartilage = [], []
    z_level = s.z_apex + 15.0 + s.vertebra_phase * 0.3
    sternum_bottom = s.heart_centre[2] - 0.6 * s.heart_axes[2]
    while z_level > -260.0:
        for side in (1, -1):
            u = np.linspace(0.0, 1.0, 16)
            theta = -np.pi / 2 + 0.33 + u * (np.pi - 0.33 - 0.55)  # posterior -> lateral -> anterior (right side)
            z_pts = z_level - s.rib_drop * u**1.4
            depth = 2.0 + s.fat_thickness(theta) + s.muscle_thickness(theta) * (0.55 + 0.45 * u) + 4.5
            world = theta if side > 0 else np.pi - theta  # the left rib follows the left outline
            radius = s.scale(z_pts) * s.outline_radius(world) - depth
            pts = np.stack([radius * np.cos(world), s.yc + radius * np.sin(world), z_pts], axis=1)
            pts = np.vstack([[side * (s.vb_axes[0] + 10.0), s.canal_y(z_level) + 4.0, z_level + 3.0], pts])
            r_rib = 3.2 + 1.6 * smoothstep((s.z_apex - z_level) / 80.0)
            ribs += Tubes.polyline(pts, r_rib)
            end = pts[-1]
            if z_pts[-1] > sternum_bottom - 20.0:
                target = np.array([side * 14.0, s.front_y(end[2]) - 2.0 - s.fat_thickness(np.pi / 2) - 9.0, end[2] - 12.0])
                cartilage += Tubes.polyline(np.array([end, (end + target) / 2 + [0, 4, 0], target]), r_rib * 0.95)
        z_level -= s.vertebra_pitch
    for side in (1, -1):  # clavicles: from the manubrium out and back to the shoulders
        inner = (side * 16.0, s.front_y(s.z_apex) - 2.0 - s.fat_thickness(np.pi / 2) - 8.0, s.z_apex - 18.0)
        outer = (side * 0.68 * s.a, s.yc + 0.2 * s.b, s.z_apex + 8.0)
        middle = (side * 0.4 * s.a, inner[1] - 2.0, s.z_apex - 2.0)
        ribs += Tubes.polyline(_smooth_path([inner, middle, outer], 10), 6.0)
    s.tubes["ribs"] = Tubes.from_lists(ribs)
    s.tubes["cartilage"] = Tubes.from_lists(cartilage)


def _add_nodules(s: ChestSubject, rng: np.random.Generator) -> None:
    count = min(4, 1 + rng.poisson(0.8))
    for _ in range(200):
        if len(s.nodules) >= count:
            break
        radius = rng.uniform(3.0, 11.0)
        centre = np.array([rng.uniform(-s.a, s.a), s.yc + rng.uniform(-s.b, s.b), rng.uniform(s.z_dome_left - 60, s.z_apex)])
        if float(s.lung_sdf(*centre)) < -(radius + 3.0) and all(np.linalg.norm(centre - c) > r + radius + 5 for c, r, _ in s.nodules):
            s.nodules.append((centre, radius, rng.uniform(15.0, 60.0)))


def render_chest(s: ChestSubject, axes: tuple[np.ndarray, np.ndarray, np.ndarray], width: float, rng: np.random.Generator):
    """Paint the subject on the grid given by three 1D world-coordinate vectors; returns (HU, labels)."""
    xs, ys, zs = (np.asarray(v, np.float32) for v in axes)
    x, y, z = xs[:, None, None], ys[None, :, None], zs[None, None, :]
    shape = (len(xs), len(ys), len(zs))
    hu = np.full(shape, AIR_HU, np.float32)
    labels = np.zeros(shape, np.uint8)
    grid = (xs, ys, zs)

    def paint(occ, value, label: int | None = None) -> None:
        occ = np.broadcast_to(occ, shape)
        hu[...] += occ * (np.float32(value) - hu)
        if label is not None:
            labels[occ >= 0.5] = label

    # scalar tissue values first, so they do not depend on the grid size (the texture draw does)
    value = {name: rng.uniform(lo, hi) for name, (lo, hi) in {
        "table_skin": (250, 450), "table_core": (-950, -850), "table_rail": (150, 300), "liver": (50, 65),
        "stomach": (10, 30), "spleen": (40, 50), "kidney": (30, 40), "pericardial_fat": (3.0, 8.0), "disc": (5.0, 8.0),
        "cartilage": (100, 160)}.items()}
    texture = smooth_field(rng, shape, 3.0 / width)
    # patient table: a curved carbon-fibre plate (dense skins, foam core) under the back
    top = s.table_top + s.table_curve * (x / 200.0) ** 2
    within = soft(np.abs(x) - s.table_halfwidth, width)
    paint(within * soft(np.maximum(top - 32.0 - y, y - top), width), value["table_skin"])
    paint(within * soft(np.maximum(top - 30.0 - y, y - (top - 2.0)), width), value["table_core"])
    paint(within * soft(np.maximum(top - 12.0 - y, y - (top - 14.0)), width), value["table_rail"])  # rail line

    body, theta = s.body_sdf(x, y, z)
    paint(soft(body, width), 35.0)  # skin
    paint(soft(body + 2.0, width), s.fat_hu)
    depth_muscle = 2.0 + s.fat_thickness(theta)
    paint(soft(body + depth_muscle, width), s.soft_hu + 5.0 * texture)
    cavity = body + s.wall_thickness(theta)
    paint(soft(cavity, width), s.fat_hu + 15.0 + 10 * texture)  # mediastinal / retroperitoneal fat
    # upper abdomen below the diaphragm: bowel/fat mixture, liver, stomach, spleen, kidneys
    dia = s.diaphragm_z(x, y)
    below = soft(np.maximum(cavity + 4.0, z - (dia - 4.0)), width)
    paint(below, 30.0 - 110.0 * smoothstep(texture * 0.8))
    liver = np.maximum(np.maximum(cavity + 6.0, z - (dia - 5.0)), np.maximum(-30.0 + 0.25 * (s.z_dome_right - z) - x, (s.z_dome_right - 190.0) - z))
    paint(soft(liver, width), value["liver"] + 3 * texture)
    stomach_c = (-0.45 * s.a, s.yc + 0.1 * s.b, s.z_dome_left - 45.0)
    stomach = ellipsoid_on_grid(grid, stomach_c, (38.0, 42.0, 40.0))
    paint(soft(np.maximum(stomach, cavity + 8.0), width), value["stomach"])
    paint(soft(np.maximum(np.maximum(stomach + 3.0, stomach_c[2] + 12.0 - z), cavity + 8.0), width), AIR_HU + 10)
    spleen = ellipsoid_on_grid(grid, (-0.62 * s.a, s.yc - 0.45 * s.b, s.z_dome_left - 55.0), (22.0, 45.0, 48.0), rotation(0.5))
    paint(soft(np.maximum(spleen, cavity + 3.0), width), value["spleen"])
    for side in (1, -1):
        kidney = ellipsoid_on_grid(grid, (side * 62.0, s.vb_y(s.z_dome_left - 150.0) - 5.0, s.z_dome_left - 150.0), (28.0, 22.0, 55.0), rotation(side * 0.4))
        paint(soft(kidney, width), value["kidney"])
    # lungs with an anterior-posterior density gradient (dependent lung is denser)
    heart = ellipsoid_on_grid(grid, s.heart_centre, s.heart_axes, s.heart_rot)
    lung = s.lung_sdf(x, y, z, heart)
    paint(soft(lung, width), s.lung_hu + 45.0 * (s.yc - y) / s.b + 12.0 * texture, CT_LABELS["lungs"])
    # heart in its pericardial fat, slightly denser myocardium around the blood pool
    paint(soft(heart - value["pericardial_fat"], width), s.fat_hu, 0)
    paint(soft(heart, width), s.soft_hu + 8.0, CT_LABELS["heart"])
    paint(soft(ellipsoid_on_grid(grid, s.heart_centre, [v * 0.72 for v in s.heart_axes], s.heart_rot), width), s.soft_hu - 5.0)
    # tubes: vessels in the lungs stay "lung"; the great vessels get their own label; oesophagus and airways clear the lung label
    (vessel_occ,) = s.tubes["vessels"].paint(grid, width)
    paint(vessel_occ, s.soft_hu)
    great_occ, esophagus_occ = s.tubes["great_vessels"].paint(grid, width)[0], s.tubes["esophagus"].paint(grid, width)[0]
    paint(great_occ, s.soft_hu, CT_LABELS["great_vessels"])
    paint(esophagus_occ, s.soft_hu + 5.0, 0)
    wall, lumen = s.tubes["airways"].paint(grid, width, offsets=(1.5, 0.0))
    paint(wall, 20.0)
    paint(lumen, AIR_HU + 5.0)
    # spine: vertebral bodies and discs, posterior arch with spinous and transverse processes, canal
    canal_y, vb_y = s.canal_y(z), s.vb_y(z)
    rx, ry = s.vb_axes
    vb2d = ellipsoid_sdf(x, y - vb_y, 0.0, (0.0, 0.0, 0.0), (rx, ry, 1e6))
    period = ((z - s.vertebra_phase) % s.vertebra_pitch) - s.vertebra_pitch / 2
    level_sdf = np.abs(period) - (s.vertebra_pitch - value["disc"]) / 2
    paint(soft(vb2d, width), 80.0)  # the disc column; vertebral bodies are painted over it
    rc = s.canal_radius
    ring = np.abs(np.hypot(x, y - canal_y) - (rc + 3.0)) - 3.0
    spinous = np.maximum(np.abs(x) - 3.5, np.maximum(y - (canal_y - rc - 2.0), (canal_y - rc - 22.0) - y))
    transverse = np.maximum(np.abs(np.abs(x) - (rc + 14.0)) - 11.0, np.abs(y - canal_y - 2.0 + 0.45 * (np.abs(x) - rc)) - 4.0)
    arch_period = ((z + 7.0 - s.vertebra_phase) % s.vertebra_pitch) - s.vertebra_pitch / 2  # arches sit lower
    arch = np.maximum(np.minimum(np.minimum(ring, spinous), transverse), np.abs(arch_period) - 0.3 * s.vertebra_pitch)
    vertebra = np.minimum(np.maximum(vb2d, level_sdf), arch)
    sternum_y = s.front_y(z) - 2.0 - s.fat_thickness(np.pi / 2) - 7.0
    sternum_bottom = s.heart_centre[2] - 0.6 * s.heart_axes[2]
    sternum = np.maximum(np.maximum(np.abs(x) - 16.0, np.abs(y - sternum_y) - 6.0), np.maximum(z - (s.z_apex - 25.0), sternum_bottom - z))
    bone = np.minimum(np.minimum(vertebra, sternum), s.scapula_sdf(x, y, z, body, theta))
    cortical = s.tubes["ribs"].paint(grid, width, offsets=(0.0, -1.4))
    (cartilage,) = s.tubes["cartilage"].paint(grid, width)
    paint(cartilage, value["cartilage"])
    bone_occ = np.maximum(soft(bone, width), cortical[0])
    paint(bone_occ, s.cortical_hu, CT_LABELS["bone"])
    paint(np.maximum(soft(bone + 1.6, width), cortical[1]), s.cancellous_hu)
    paint(soft(np.hypot(x, y - canal_y) - rc, width), 18.0, 0)
    for centre, radius, value in s.nodules:
        paint(soft(ellipsoid_on_grid(grid, centre, (radius, radius * 0.9, radius * 1.05)), width), value, CT_LABELS["nodules"])
    return hu, labels


def finish_ct(hu: np.ndarray, s: ChestSubject, rng: np.random.Generator) -> np.ndarray:
    """Scanner look on the output grid: a slight point-spread blur, correlated noise, HU clipping."""
    hu = ndimage.gaussian_filter(hu, 0.5)
    hu += correlated_noise(rng, hu.shape, 0.8, s.noise_std)
    return np.clip(hu, -1024.0, 3071.0).astype(np.float32)
