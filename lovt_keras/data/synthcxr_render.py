"""Rendering of SynthCXR images: anatomy, localized findings and their pixel masks.

Conventions
-----------
- Images are PA views: the PATIENT's right is on the IMAGE's left (small x) and the
  patient's left on the image's right. ``side`` is always the patient's side, as in
  reports: a ``"left"`` finding lies in the right half of the image.
- Anatomy is drawn in *canonical* coordinates ``(u, v)`` in [0, 1] (u to the image's
  right, v downwards) and mapped to pixels by a per-image similarity transform
  (scale, aspect, rotation, shift), so one inverse transform of the pixel grid moves
  all anatomy together.
- Each lung is divided into three zones of equal height between its apex and its
  lowest point (the costophrenic angle): ``"upper"``, ``"middle"``, ``"lower"``.
- Pixel sizes in centimetres use a fixed field of view of ``FIELD_OF_VIEW_CM`` across
  the image width, so a 1 cm nodule is ``image_size / 38`` pixels wide at any size.
- Rendering is additive "density" in float32 (bone and fluid positive, air negative),
  mapped to uint8 by a per-image exposure, contrast and gamma.

Everything is vectorized numpy over precomputed coordinate grids; local findings are
computed inside their bounding window only.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

FINDING_CLASSES = (
    "opacity",
    "pneumothorax",
    "nodule",
    "effusion",
    "cardiomegaly",
    "foreign_object",
)
CLASS_INDEX = {name: i for i, name in enumerate(FINDING_CLASSES)}
SIDES = ("right", "left")  # patient sides
ZONES = ("upper", "middle", "lower")
SEVERITIES = ("mild", "moderate", "severe")
FOREIGN_SUBTYPES = ("coin", "button", "wire", "tube")
FIELD_OF_VIEW_CM = 38.0

_F32 = np.float32


# --------------------------------------------------------------------------- grids


@functools.lru_cache(maxsize=8)
def _pixel_grid(n: int) -> np.ndarray:
    """Normalized pixel-centre coordinates ``(n,)`` in (0, 1)."""
    c = (np.arange(n, dtype=_F32) + _F32(0.5)) / _F32(n)
    c.flags.writeable = False
    return c


@functools.lru_cache(maxsize=32)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear interpolation from ``n_in`` to ``n_out`` samples (pixel centres aligned,
    edges repeated): output i is ``(1 - f[i]) * x[i0[i]] + f[i] * x[i1[i]]``."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = (pos - i0).astype(np.float32)
    for a in (i0, i1, f):
        a.flags.writeable = False
    return i0, i1, f


def _resample(low: np.ndarray, n: int, ys: slice = slice(None), xs: slice = slice(None)):
    """Window ``[ys, xs]`` of ``low`` bilinearly resized to ``(n, n)``.

    Gathers and weighted sums only: small matrix products would go through a
    multi-threaded BLAS, which is many times slower on a busy machine.
    """
    r0, r1, fr = (a[ys] for a in _interp_index(n, low.shape[0]))
    c0, c1, fc = (a[xs] for a in _interp_index(n, low.shape[1]))
    rows = low[r0]
    rows += (low[r1] - rows) * fr[:, None]
    out = rows[:, c0]
    out += (rows[:, c1] - out) * fc[None, :]
    return out


def _upsample(low: np.ndarray, n: int) -> np.ndarray:
    """Bilinear upsampling of a square ``(h, h)`` field to ``(n, n)``.

    Same result as ``_resample``; exact doubling takes a faster path with fixed 1/4,
    3/4 weights.
    """
    if n == 2 * low.shape[0]:
        return _double_cols(_double_rows(low))
    return _resample(low, n)


def _double_rows(a: np.ndarray) -> np.ndarray:
    """Doubles the rows of ``a`` by bilinear interpolation (edge rows repeated)."""
    out = np.empty((2 * a.shape[0], a.shape[1]), a.dtype)
    main = a * _F32(0.75)
    out[0::2] = main
    out[1::2] = main
    out[2::2] += a[:-1] * _F32(0.25)
    out[0] += a[0] * _F32(0.25)
    out[1:-1:2] += a[1:] * _F32(0.25)
    out[-1] += a[-1] * _F32(0.25)
    return out


def _double_cols(a: np.ndarray) -> np.ndarray:
    """Doubles the columns of ``a`` by bilinear interpolation (edge columns repeated)."""
    h, w = a.shape
    out = np.empty((h, w, 2), a.dtype)
    main = a * _F32(0.75)
    quarter = a * _F32(0.25)
    out[:, :, 0] = main
    out[:, 1:, 0] += quarter[:, :-1]
    out[:, 0, 0] += quarter[:, 0]
    out[:, :, 1] = main
    out[:, :-1, 1] += quarter[:, 1:]
    out[:, -1, 1] += quarter[:, -1]
    return out.reshape(h, 2 * w)


def _low_size(n: int) -> int:
    """Resolution of the vascular-marking texture: a third of the image's."""
    return max(16, n // 3)


# ------------------------------------------------------------------- random draws


class _Draws:
    """Uniform numbers drawn in one call, consumed in order (cheaper than many calls)."""

    def __init__(self, rng: np.random.Generator, count: int):
        self._values = rng.random(count).tolist()
        self._i = 0

    def __call__(self, lo: float, hi: float) -> float:
        x = self._values[self._i]
        self._i += 1
        return lo + (hi - lo) * x


# ------------------------------------------------------------------------ anatomy


@dataclasses.dataclass
class Lung:
    """One lung field in canonical coordinates.

    ``sigma`` is -1 for the patient's right lung (image left) and +1 for the left lung;
    ``sigma`` points laterally. The field is two half-ellipses sharing the centre
    ``(cx, cy)`` and half-width ``ax`` (half-heights ``ay`` above the centre, ``ay_low``
    below, so the lung is widest low down), cut medially by the vertical line
    ``u = medial_u`` and from below by the diaphragm dome
    ``v = dome_top + dome_k * ((u - dome_u) / ax) ** 2``.
    """

    sigma: int
    cx: float
    cy: float
    ax: float
    ay: float
    ay_low: float
    medial_u: float
    dome_top: float
    dome_u: float
    dome_k: float
    air: float
    apex_v: float = 0.0
    base_v: float = 0.0

    def bottom(self, u: np.ndarray) -> np.ndarray:
        """Lowest lung v per canonical column u (nan outside the lung's columns)."""
        t = 1.0 - ((u - self.cx) / self.ax) ** 2
        ell = np.where(t > 0, self.cy + self.ay_low * np.sqrt(np.maximum(t, 0)), np.nan)
        dome = self.dome_top + self.dome_k * ((u - self.dome_u) / self.ax) ** 2
        out = np.minimum(ell, dome)
        return np.where(self.sigma * (u - self.medial_u) > 0, out, np.nan)

    def finish(self) -> None:
        u = np.linspace(self.cx - self.ax, self.cx + self.ax, 257)
        self.apex_v = self.cy - self.ay
        self.base_v = float(np.nanmax(self.bottom(u)))

    def zone_range(self, zone: str) -> tuple[float, float]:
        i = ZONES.index(zone)
        h = (self.base_v - self.apex_v) / 3.0
        return self.apex_v + i * h, self.apex_v + (i + 1) * h

    def _ay(self, v: float) -> float:
        return self.ay if v < self.cy else self.ay_low

    def contains(self, u: float, v: float, margin: float = 0.0) -> bool:
        ay = self._ay(v)
        r = math.hypot((u - self.cx) / self.ax, (v - self.cy) / ay)
        dome = self.dome_top + self.dome_k * ((u - self.dome_u) / self.ax) ** 2
        return (
            r < 1.0 - margin / min(self.ax, ay)
            and v < dome - margin
            and self.sigma * (u - self.medial_u) > margin
        )

    def half_width(self, v: float) -> tuple[float, float]:
        """Canonical u-range of the lung ellipse at height v (medial cut applied)."""
        t = 1.0 - ((v - self.cy) / self._ay(v)) ** 2
        hw = self.ax * math.sqrt(max(t, 0.0))
        lo, hi = self.cx - hw, self.cx + hw
        if self.sigma < 0:
            hi = min(hi, self.medial_u)
        else:
            lo = max(lo, self.medial_u)
        return lo, hi

    def field(self, u: np.ndarray, v: np.ndarray, soft: float = 0.012):
        """Returns ``(hard, soft_field, r2)``: boolean lung mask, a [0, 1] field that
        ramps from 0 at the border to 1 inside over about ``soft`` canonical units, and
        the squared normalized ellipse radius."""
        du = (u - self.cx) * _F32(1.0 / self.ax)
        dv = v - _F32(self.cy)
        low = _F32(1.0 / self.ay_low - 1.0 / self.ay)
        dv = dv * (_F32(1.0 / self.ay) + low * (dv > 0))
        r2 = du * du + dv * dv
        dd = (u - self.dome_u) * _F32(1.0 / self.ax)
        dome_gap = (self.dome_top - v) + _F32(self.dome_k) * dd * dd
        med_gap = (u - _F32(self.medial_u)) * _F32(self.sigma)
        hard = (r2 < 1) & (dome_gap > 0) & (med_gap > 0)
        inv = _F32(1.0 / soft)
        s = np.clip((1 - r2) * _F32(0.5 * self.ax / soft), 0, 1)
        s *= np.clip(dome_gap * inv, 0, 1)
        s *= np.clip(med_gap * inv, 0, 1)
        return hard, s, r2


@dataclasses.dataclass
class Anatomy:
    """Per-image anatomy and acquisition parameters (canonical units)."""

    sx: float
    sy: float
    theta: float
    tx: float
    ty: float
    lungs: tuple  # (right lung, left lung), indexed by SIDES
    body_w: float
    neck_w: float
    body_density: float
    heart: dict
    mediastinum_w: float
    spine: dict
    ribs: dict
    clavicle: dict
    vessels: dict
    exposure: float
    contrast: float
    gamma: float
    noise: float
    mottle: float
    gradient: tuple
    bubble: tuple | None

    # ---- transforms between canonical (u, v) and normalized pixel (x, y) coordinates
    def to_canonical(self, x, y):
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = x - (0.5 + self.tx), y - (0.5 + self.ty)
        return 0.5 + (c * dx + s * dy) / self.sx, 0.5 + (-s * dx + c * dy) / self.sy

    def to_pixel(self, u, v):
        c, s = math.cos(self.theta), math.sin(self.theta)
        a, b = (u - 0.5) * self.sx, (v - 0.5) * self.sy
        return 0.5 + self.tx + c * a - s * b, 0.5 + self.ty + s * a + c * b

    def lung(self, side: str) -> Lung:
        return self.lungs[SIDES.index(side)]


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draws a random anatomy; always consumes the same amount of randomness."""
    d = _Draws(rng, 80)
    s = d(0.9, 1.05)
    aspect = d(0.95, 1.05)
    theta = d(-0.06, 0.06)
    tx, ty = d(-0.035, 0.035), d(-0.03, 0.035)
    dome_right = d(0.65, 0.7)
    lungs = []
    for sigma in (-1, 1):
        narrow = 0.94 if sigma > 0 else 1.0  # the heart leaves the left lung narrower
        cx = 0.5 + sigma * d(0.195, 0.225)
        ax = d(0.15, 0.175) * narrow
        cy = d(0.55, 0.6)
        lung = Lung(
            sigma=sigma,
            cx=cx,
            cy=cy,
            ax=ax,
            ay=cy - d(0.13, 0.17),
            ay_low=d(0.2, 0.24),
            medial_u=0.5 + sigma * d(0.045, 0.065),
            dome_top=dome_right + (d(0.01, 0.04) if sigma > 0 else 0.0),
            dome_u=cx - sigma * d(0.0, 0.04),
            dome_k=d(0.05, 0.09),
            air=d(0.34, 0.42),
        )
        lung.finish()
        lungs.append(lung)
    heart = {
        "x": 0.5 + d(0.035, 0.06),
        "y": d(0.58, 0.62),
        "ax": d(0.155, 0.18),
        "ay": d(0.1, 0.125),
        "angle": d(0.3, 0.5),
        "density": d(0.03, 0.07),
    }
    spine = {"shift": d(-0.008, 0.008), "period": d(0.042, 0.052), "phase": d(0, 1)}
    ribs = {
        "spacing": d(0.066, 0.078),
        "phase": d(0, 1),
        "rise": d(0.03, 0.07),
        "curve": d(0.2, 0.28),
        "width": d(0.38, 0.48),
        "density": d(0.05, 0.09),
        "ant_phase": d(0, 1),
        "ant_density": d(0.02, 0.04),
    }
    clavicle = {"v": d(0.14, 0.17), "tilt": d(-0.03, 0.03), "density": d(0.08, 0.13)}
    vessels = {
        "n": (d(11, 16), d(11, 16)),
        "phase": (d(0, 6.3), d(0, 6.3)),
        "wobble": (d(0.5, 1.5), d(0.5, 1.5)),
        "n2": (d(23, 31), d(23, 31)),
        "phase2": (d(0, 6.3), d(0, 6.3)),
        "amp": d(0.05, 0.08),
    }
    anatomy = Anatomy(
        sx=s * aspect,
        sy=s / aspect,
        theta=theta,
        tx=tx,
        ty=ty,
        lungs=tuple(lungs),
        body_w=d(0.43, 0.5),
        neck_w=d(0.08, 0.11),
        body_density=d(0.66, 0.74),
        heart=heart,
        mediastinum_w=d(0.045, 0.06),
        spine=spine,
        ribs=ribs,
        clavicle=clavicle,
        vessels=vessels,
        exposure=d(-0.06, 0.06),
        contrast=d(0.85, 1.15),
        gamma=d(0.8, 1.25),
        noise=d(0.01, 0.03),
        mottle=d(0.01, 0.03),
        gradient=(d(-0.06, 0.06), d(-0.05, 0.05)),
        bubble=None,
    )
    if d(0, 1) < 0.6:
        left = anatomy.lungs[1]
        anatomy.bubble = (left.cx + d(-0.03, 0.03), left.dome_top + d(0.05, 0.08), d(0.03, 0.05))
    else:
        d(0, 1), d(0, 1), d(0, 1)
    return anatomy


# ----------------------------------------------------------------------- findings


@dataclasses.dataclass
class Finding:
    """One localized finding; geometry is filled in by rendering.

    ``size_px`` is the larger side of the finding's box in pixels and ``size_cm`` the
    same in centimetres (``FIELD_OF_VIEW_CM``); ``box`` is ``(x, y, w, h)`` in pixels,
    tight around the mask (a pixel at column j covers [j, j + 1)).
    """

    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    subtype: str | None = None
    size_px: float = 0.0
    size_cm: float = 0.0
    box: tuple = ()
    medial: bool = False  # left lower finding behind the heart ("retrocardiac")
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {
            "kind": self.kind,
            "side": self.side,
            "zone": self.zone,
            "size_px": round(float(self.size_px), 2),
            "size_cm": round(float(self.size_cm), 2),
            "severity": self.severity,
            "subtype": self.subtype,
            "box": [float(x) for x in self.box],
            "medial": self.medial,
        }
        out.update(self.extra)
        return out


def _canonical(a: Anatomy, res: int, ys: slice = slice(None), xs: slice = slice(None)):
    """Canonical ``(u, v)`` of the pixel centres of a window of a ``res``-pixel image."""
    g = _pixel_grid(res)
    c, s = math.cos(a.theta), math.sin(a.theta)
    x = g[xs][None, :] - _F32(0.5 + a.tx)
    y = g[ys][:, None] - _F32(0.5 + a.ty)
    u = x * _F32(c / a.sx) + (y * _F32(s / a.sx) + _F32(0.5))
    v = x * _F32(-s / a.sy) + (y * _F32(c / a.sy) + _F32(0.5))
    return u, v


def _heart_r2(h: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared normalized radius of the heart's rotated ellipse (< 1 inside)."""
    ca, sa = math.cos(h["angle"]), math.sin(h["angle"])
    hu = u - _F32(h["x"])
    hv = v - _F32(h["y"])
    p = (hu * _F32(ca) + hv * _F32(sa)) * _F32(1 / h["ax"])
    q = (hv * _F32(ca) - hu * _F32(sa)) * _F32(1 / h["ay"])
    return p * p + q * q


class _Canvas:
    """The image being drawn.

    The scene (smooth anatomy) is drawn at half resolution ``m`` and upsampled once
    into the full-resolution ``density``; findings are drawn at full resolution inside
    their windows, where full-resolution coordinates and upsampled scene fields (lung
    air, vascular markings) are computed on demand.
    """

    def __init__(self, anatomy: Anatomy, n: int):
        self.n = n
        self.m = (n + 1) // 2
        self.a = anatomy
        self.kept: list[Finding] = []  # findings drawn so far
        self.density: np.ndarray | None = None  # (n, n) after _render_scene
        self.air_h: list[np.ndarray] = []  # per lung, (m, m) lung air in [0, 1]
        self.vessel_h: np.ndarray | None = None  # (m, m) vascular marking density

    # ---- geometry helpers
    def px(self, u: float, v: float) -> tuple[float, float]:
        """Canonical point to pixel coordinates (continuous, pixel units)."""
        x, y = self.a.to_pixel(u, v)
        return x * self.n, y * self.n

    def coords(self, ys: slice, xs: slice):
        return _canonical(self.a, self.n, ys, xs)

    def upsample_window(self, low: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
        """Full-resolution window of a bilinearly upsampled low-resolution field."""
        return _resample(low, self.n, ys, xs)

    def window(self, u: float, v: float, radius: float) -> tuple[slice, slice]:
        """Pixel window around a canonical disc of canonical radius ``radius``."""
        x, y = self.px(u, v)
        r = radius * max(self.a.sx, self.a.sy) * self.n + 3
        return self.clip_window(x - r, x + r, y - r, y + r)

    def clip_window(self, x0, x1, y0, y1) -> tuple[slice, slice]:
        n = self.n
        xs = slice(int(max(0, math.floor(x0))), int(min(n, math.ceil(x1) + 1)))
        ys = slice(int(max(0, math.floor(y0))), int(min(n, math.ceil(y1) + 1)))
        return ys, xs

    def lung_window(self, side_i: int, pad: float = 0.02) -> tuple[slice, slice]:
        lung = self.a.lungs[side_i]
        corners = [
            self.px(lung.cx + du, vv)
            for du in (-lung.ax - pad, lung.ax + pad)
            for vv in (lung.apex_v - pad, lung.base_v + pad)
        ]
        xs = [c[0] for c in corners]
        ys = [c[1] for c in corners]
        return self.clip_window(min(xs), max(xs), min(ys), max(ys))

    def u_per_px(self) -> float:
        """Canonical units per pixel (geometric mean of both axes)."""
        return 1.0 / (self.n * math.sqrt(self.a.sx * self.a.sy))


# --------------------------------------------------------------------- the scene


def _render_scene(cv: _Canvas, rng: np.random.Generator) -> None:
    """Draws body, lungs, mediastinum, heart, bones and textures into ``cv.density``."""
    a = cv.a
    m = cv.m
    u, v = _canonical(a, m)
    d = np.zeros((m, m), _F32)
    half = _F32(0.5)
    du = u - half
    adu = np.abs(du)

    # Body: a cylinder whose half-width widens from the neck over sloping shoulders.
    grow = np.clip(v * _F32(1 / 0.17), 0, 1)
    grow = grow * grow * (_F32(3) - _F32(2) * grow)
    hw = _F32(a.neck_w) + _F32(a.body_w - a.neck_w) * grow
    t = adu / hw
    body = np.clip(1 - t * t, 0, 1)
    d += _F32(a.body_density) * np.sqrt(body)

    # Heart (rotated ellipse) and aortic knob displace lung air.
    h = a.heart
    heart = np.clip((1 - _heart_r2(h, u, v)) * _F32(4), 0, 1)
    ku = (u - _F32(0.5 + a.mediastinum_w)) * _F32(1 / 0.035)
    kv = (v - _F32(h["y"] - 0.21)) * _F32(1 / 0.035)
    knob = np.clip((1 - ku * ku - kv * kv) * _F32(3), 0, 1)
    shadow = 1 - np.maximum(heart, knob) * _F32(0.85)

    # Lungs: air subtracts density; thicker (darker) towards the centre of each lung.
    for lung in a.lungs:
        _, soft, r2 = lung.field(u, v)
        thick = np.clip(_F32(1.1) - r2 * _F32(0.6), 0, 1)
        air = soft * thick * shadow
        cv.air_h.append(air)
        d -= _F32(lung.air) * air
    lungs = np.minimum(cv.air_h[0] + cv.air_h[1], 1)
    d += _F32(h["density"]) * heart

    # Trachea: an air column down the upper mediastinum.
    trachea = np.clip((_F32(0.017) - adu) * _F32(150), 0, 1) * np.clip(
        (_F32(h["y"] - 0.24) - v) * _F32(20), 0, 1
    )
    d -= _F32(0.08) * trachea

    # Spine: a faint vertical band with vertebral bodies (a triangle wave along v).
    sp = a.spine
    band = np.clip((_F32(0.028) - np.abs(du - _F32(sp["shift"]))) * _F32(120), 0, 1)
    ph = v * _F32(1 / sp["period"]) + _F32(sp["phase"])
    tri = np.abs(ph - np.floor(ph) - half)
    d += band * (_F32(0.02) + _F32(0.05) * np.clip(tri * _F32(6) - _F32(0.6), 0, 1))

    # Ribs: posterior ribs arch down laterally, anterior ribs slope down medially.
    rb = a.ribs
    dn = adu * _F32(1 / 0.4)
    thorax = np.clip((_F32(0.46) - adu) * _F32(25), 0, 1)
    thorax *= np.clip((v - _F32(0.06)) * _F32(25), 0, 1)
    thorax *= np.clip((_F32(0.82) - v) * _F32(12), 0, 1)
    thorax *= np.clip((adu - _F32(0.03)) * _F32(40), 0, 1)
    # Ribs show best against lung air and fade into the thick soft tissue elsewhere.
    thorax *= _F32(0.35) + _F32(0.65) * lungs
    centre = v + dn * (_F32(rb["rise"]) - _F32(rb["curve"]) * dn)
    sc = centre * _F32(1 / rb["spacing"]) + _F32(rb["phase"])
    f = sc - np.floor(sc)
    w = _F32(rb["width"])
    edge = np.abs(f - w * half)
    post = np.clip((w * half - edge) * _F32(14), 0, 1)
    post += np.clip((w * half - edge) * _F32(40), 0, 1) * (edge * _F32(2) / w) * _F32(0.6)
    d += _F32(rb["density"]) * thorax * post
    s2 = (v - dn * _F32(0.14)) * _F32(1 / (rb["spacing"] * 1.25)) + _F32(rb["ant_phase"])
    f2 = s2 - np.floor(s2)
    ant = np.clip((_F32(0.14) - np.abs(f2 - half)) * _F32(12), 0, 1)
    ant *= np.clip((dn - _F32(0.4)) * _F32(6), 0, 1)
    d += _F32(rb["ant_density"]) * thorax * ant

    # Clavicles: a curved band from the sternal notch up towards each shoulder.
    cl = a.clavicle
    cv_line = _F32(cl["v"]) + dn * (_F32(-0.09) + _F32(0.04) * dn) + _F32(cl["tilt"]) * du
    cl_band = np.clip((_F32(0.016) - np.abs(v - cv_line)) * _F32(120), 0, 1)
    cl_band *= np.clip((dn - _F32(0.08)) * _F32(10), 0, 1) * np.clip(
        (_F32(0.98) - dn) * _F32(10), 0, 1
    )
    d += _F32(cl["density"]) * cl_band

    # Gastric bubble under the left hemidiaphragm.
    if a.bubble is not None:
        bu, bv, br = a.bubble
        rr = ((u - _F32(bu)) * _F32(1 / (1.6 * br))) ** 2 + ((v - _F32(bv)) * _F32(1 / br)) ** 2
        d -= _F32(0.07) * np.clip((1 - rr) * _F32(4), 0, 1)

    # Vascular markings fanning out from each hilum, drawn at a third of the
    # resolution; a smooth mottle and an exposure gradient.
    k = _low_size(cv.n)
    ul, vl = _canonical(a, k)
    vs = a.vessels
    right = ul < 0.5
    dx = ul - np.where(right, _F32(0.4), _F32(0.6))
    dy = vl - _F32(0.46)
    r = np.sqrt(dx * dx + dy * dy)
    ang = np.arctan2(dy, dx)

    def per_side(pair):
        return np.where(right, _F32(pair[0]), _F32(pair[1]))

    # Two layers of wavy radial lines: large vessels and finer, shorter branches.
    wobble = per_side(vs["wobble"]) * np.sin(r * _F32(25))
    x = _F32(0.5) + _F32(0.5) * np.cos(per_side(vs["n"]) * ang + per_side(vs["phase"]) + wobble)
    x = x * x
    x = x * x
    x = x * x
    y = _F32(0.5) + _F32(0.5) * np.cos(
        per_side(vs["n2"]) * ang + per_side(vs["phase2"]) - wobble * _F32(1.7)
    )
    y = y * y
    y = y * y
    y = y * y
    fade_in = np.clip(r * _F32(12) - _F32(0.3), 0, 1)  # no starburst at the hilum itself
    vessel = (x * np.exp(-r * _F32(5)) + y * _F32(0.5) * np.exp(-r * _F32(8))) * fade_in
    vessel *= _F32(vs["amp"] * 2.5)
    vessel += _F32(vs["amp"] * 0.6) * np.exp(-r * _F32(12))  # hilar density
    cv.vessel_h = _upsample(vessel, m) * lungs
    d += cv.vessel_h
    coarse = rng.random((8, 8), dtype=_F32) - _F32(0.5)
    d += _upsample(coarse, m) * _F32(a.mottle * 2)
    gx, gy = a.gradient
    g = _pixel_grid(m)
    d += (g[None, :] - half) * _F32(gx) + (g[:, None] - half) * _F32(gy)
    cv.density = _upsample(d, cv.n)


def _finish(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Adds noise and maps density to uint8 (exposure, contrast, gamma)."""
    a = cv.a
    n = cv.n
    noise = rng.random((n, n), dtype=_F32)
    img = cv.density
    img += (noise - _F32(0.5)) * _F32(a.noise * 2)
    img *= _F32(a.contrast * 255 / 0.92)
    img += _F32(a.exposure * 255 / 0.92)
    np.clip(img, 0, 255, out=img)
    return _gamma_lut(round(a.gamma, 2))[img.astype(np.uint8)]


@functools.lru_cache(maxsize=256)
def _gamma_lut(gamma: float) -> np.ndarray:
    x = np.arange(256) / 255.0
    lut = np.round(255 * x**gamma).astype(np.uint8)
    lut.flags.writeable = False
    return lut


# ---------------------------------------------------------------- finding shapes


def _star(uu, vv, cu, cv_, radius, amps, phases, aspect=1.0):
    """Normalized radius ``dist / r(theta)`` of a star-shaped blob (< 1 inside).

    ``r(theta) = radius * (1 + sum_k amps[k] cos((k + 2) theta + phases[k]))``; star
    shapes are connected by construction.
    """
    dx = (uu - _F32(cu)) * _F32(1.0 / aspect)
    dy = vv - _F32(cv_)
    dist = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    rt = np.ones_like(dist)
    for k, (amp, ph) in enumerate(zip(amps, phases)):
        rt += _F32(amp) * np.cos(theta * _F32(k + 2) + _F32(ph))
    return dist / (rt * _F32(radius))


def _place(lung: Lung, zone: str, rng: np.random.Generator, margin: float):
    """Samples a canonical point inside ``zone`` of ``lung``, ``margin`` from its border."""
    z0, z1 = lung.zone_range(zone)
    for _ in range(24):
        v = z0 + (z1 - z0) * rng.uniform(0.2, 0.8)
        lo, hi = lung.half_width(v)
        if hi - lo < 2 * margin:
            continue
        u = rng.uniform(lo + margin, hi - margin)
        if lung.contains(u, v, margin):
            return u, v
    return None


def _boxes_touch(a: tuple, b: tuple, gap: float = 2.0) -> bool:
    return not (
        a[0] + a[2] + gap <= b[0]
        or b[0] + b[2] + gap <= a[0]
        or a[1] + a[3] + gap <= b[1]
        or b[1] + b[3] + gap <= a[1]
    )


def _store(cv: _Canvas, finding: Finding, ys: slice, xs: slice, mask: np.ndarray):
    """Records a finding's window mask and its tight box before anything is drawn.

    Returns False (the finding is dropped) when the mask is empty or its box comes
    within 2 px of a kept finding of the same class, so that every box bounds its own
    connected piece of the class mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return False
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = xs.start + cols[0], ys.start + rows[0]
    w, h = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    box = (float(x0), float(y0), float(w), float(h))
    if any(g.kind == finding.kind and _boxes_touch(g.box, box) for g in cv.kept):
        return False
    finding.box = box
    finding.size_px = float(max(w, h))
    finding.size_cm = finding.size_px * FIELD_OF_VIEW_CM / cv.n
    finding.extra["_mask"] = (ys, xs, mask)
    return True


def _is_medial(cv: _Canvas, f: Finding, u: float) -> bool:
    """A left lower finding over the heart shadow is "retrocardiac"."""
    h = cv.a.heart
    return f.side == "left" and f.zone == "lower" and u < h["x"] + 0.8 * h["ax"]


def _render_opacity(cv: _Canvas, f: Finding, rng) -> bool:
    si = SIDES.index(f.side)
    lung = cv.a.lungs[si]
    radius = rng.uniform(0.08, 0.13) * (0.85 if f.zone == "upper" else 1.0)
    pt = _place(lung, f.zone, rng, margin=0.25 * radius)
    if pt is None:
        return False
    cu, cvv = pt
    ys, xs = cv.window(cu, cvv, radius * 1.5)
    uu, vv = cv.coords(ys, xs)
    amps = rng.uniform(-0.18, 0.18, 3)
    rr = _star(uu, vv, cu, cvv, radius, amps, rng.uniform(0, 6.3, 3), rng.uniform(0.8, 1.2))
    hard, _, r2 = lung.field(uu, vv)
    mask = (rr < 1) & hard
    if not _store(cv, f, ys, xs, mask):
        return False
    dens = {"mild": 0.1, "moderate": 0.16, "severe": 0.24}[f.severity]
    soft = np.clip((1 - rr) * _F32(2.5) + _F32(0.25), 0, 1)
    # Patchy texture with blobs of about 1/20 of the image, whatever the resolution;
    # dense consolidation is more uniform.
    patchy = 0.4 if f.severity == "severe" else 0.8
    noise = cv.upsample_window(rng.random((20, 20), dtype=_F32), ys, xs)
    tex = _F32(1 - patchy / 2) + _F32(patchy) * noise
    # Consolidation fills the air spaces, so it shows in proportion to the lung air.
    air = np.minimum(cv.upsample_window(cv.air_h[si], ys, xs) * _F32(1.5), 1)
    cv.density[ys, xs] += _F32(dens) * soft * tex * air
    f.medial = _is_medial(cv, f, cu)
    return True


def _render_nodule(cv: _Canvas, f: Finding, rng) -> bool:
    si = SIDES.index(f.side)
    lung = cv.a.lungs[si]
    diameter_cm = rng.uniform(1.2, 3.0) if f.subtype == "nodule" else rng.uniform(4.0, 8.0)
    radius = 0.5 * diameter_cm / FIELD_OF_VIEW_CM / math.sqrt(cv.a.sx * cv.a.sy)
    for _ in range(3):  # shrink a mass that does not fit into its zone
        pt = _place(lung, f.zone, rng, margin=max(0.85 * radius, 0.01))
        if pt is not None:
            break
        radius *= 0.8
    if pt is None:
        return False
    cu, cvv = pt
    ys, xs = cv.window(cu, cvv, radius * 1.4)
    uu, vv = cv.coords(ys, xs)
    lob = 0.1 if f.subtype == "mass" else 0.04
    rr = _star(
        uu,
        vv,
        cu,
        cvv,
        radius,
        rng.uniform(-lob, lob, 3) * (0.4, 1, 1),
        rng.uniform(0, 6.3, 3),
        rng.uniform(0.9, 1.1),
    )
    mask = rr < 1
    if not _store(cv, f, ys, xs, mask):
        return False
    edge = _F32(max(2.0, radius / cv.u_per_px() / 1.5))  # about 1.5 px soft margin
    soft = np.clip((1 - rr) * edge + _F32(0.5), 0, 1)
    ball = np.sqrt(np.clip(1 - rr * rr, 0, 1))  # thicker through the middle of a sphere
    cv.density[ys, xs] += _F32(rng.uniform(0.2, 0.3)) * soft * (_F32(0.45) + _F32(0.55) * ball)
    f.medial = _is_medial(cv, f, cu)
    return True


_PTX_FRACTION = {"mild": (0.1, 0.16), "moderate": (0.2, 0.28), "severe": (0.32, 0.42)}


def _render_pneumothorax(cv: _Canvas, f: Finding, rng) -> bool:
    si = SIDES.index(f.side)
    lung = cv.a.lungs[si]
    c = rng.uniform(*_PTX_FRACTION[f.severity])
    apical = f.zone == "upper"
    # The lung collapses towards a point just medial of its border, by a factor k(v)
    # that is smallest at the apex (base, for a basilar pneumothorax) and returns to 1
    # at the anchor's height: the air gap is widest there and tapers down (up) the
    # lateral wall.
    height = lung.base_v - lung.apex_v
    av = lung.apex_v + (0.85 if apical else 0.2) * height
    au = lung.medial_u - lung.sigma * 0.01
    far = lung.apex_v if apical else lung.base_v
    ys, xs = cv.lung_window(si)
    uu, vv = cv.coords(ys, xs)
    shrink = c * np.clip((vv - _F32(av)) * _F32(1 / (far - av)), 0, 1)
    k = 1 - shrink
    # A point is inside the collapsed lung when its preimage under the scaling by
    # k(v) about (au, av) is inside the lung.
    qu = _F32(au) + (uu - _F32(au)) / k
    qv = _F32(av) + (vv - _F32(av)) / k
    collapsed, _, cr2 = lung.field(qu, qv)
    hard, _, _ = lung.field(uu, vv)
    # Local gap width: the scaling's displacement along the lung border's normal
    # (the gradient of the ellipse). Where the gap tapers below 1.5 px it is cut
    # off, since thinner slivers would fall apart into loose pixels.
    gu = (uu - _F32(lung.cx)) * _F32(1 / lung.ax**2)
    dv = vv - _F32(lung.cy)
    gv = dv * np.where(dv < 0, _F32(1 / lung.ay**2), _F32(1 / lung.ay_low**2))
    width = shrink * ((uu - _F32(au)) * gu + (vv - _F32(av)) * gv)
    width /= np.sqrt(gu * gu + gv * gv) + _F32(1e-6)
    region = width >= _F32(1.5 * cv.u_per_px())
    mask = hard & ~collapsed & region
    if not _store(cv, f, ys, xs, mask):
        return False
    # No lung markings and more lucency in the gap, a thin pleural line at the
    # collapsed lung's edge, and slightly denser (collapsed) lung inside.
    gap = mask.astype(_F32)
    vessels = cv.upsample_window(cv.vessel_h, ys, xs)
    cv.density[ys, xs] -= gap * (vessels + _F32(0.06))
    eps = 1.3 * 2.0 * cv.u_per_px() / min(lung.ax, lung.ay)
    line = np.clip(1 - np.abs(cr2 - 1) * (k * _F32(1 / eps)), 0, 1) * (hard & region)
    cv.density[ys, xs] += _F32(0.1) * line + _F32(0.03) * collapsed
    f.extra["collapse"] = round(c, 3)
    return True


_EFFUSION_HEIGHT = {"mild": (0.13, 0.16), "moderate": (0.18, 0.23), "severe": (0.26, 0.34)}


def _render_effusion(cv: _Canvas, f: Finding, rng) -> bool:
    si = SIDES.index(f.side)
    lung = cv.a.lungs[si]
    height = rng.uniform(*_EFFUSION_HEIGHT[f.severity]) * (lung.base_v - lung.apex_v) / 0.6
    medial_frac = rng.uniform(0.1, 0.3)
    lat_u = lung.cx + lung.sigma * lung.ax
    span = abs(lat_u - lung.medial_u)

    def level(u):  # fluid surface: higher (smaller v) laterally, the meniscus
        lat = np.clip((u - lung.medial_u) * (lung.sigma / span), 0, 1)
        return lung.base_v - height * (medial_frac + (1 - medial_frac) * lat * lat)

    # Keep the columns, contiguous from the lateral wall, where fluid lies above the
    # lung's floor: this keeps the effusion one connected piece.
    # Columns with less than 2.5 px of fluid are left dry, so that the thin fluid
    # layer over the dome does not break into loose pixels.
    ug = np.linspace(lat_u, lung.medial_u, 200)
    floor = lung.bottom(ug)
    wet = np.nan_to_num(floor, nan=-1.0) > level(ug) + 2.5 * cv.u_per_px()
    first = int(np.argmax(wet))
    if not wet[first]:
        return False
    stop = len(ug) if wet[first:].all() else first + int(np.argmin(wet[first:]))
    u_a, u_b = sorted((ug[first], ug[stop - 1]))
    ys, xs = cv.lung_window(si)
    uu, vv = cv.coords(ys, xs)
    surf = level(uu).astype(_F32)
    hard, _, _ = lung.field(uu, vv)
    mask = hard & (vv > surf) & (uu >= _F32(u_a)) & (uu <= _F32(u_b))
    if not _store(cv, f, ys, xs, mask):
        return False
    soft_px = 2.0 * cv.u_per_px()
    # A soft upper edge (the meniscus fades in over about 0.02 canonical units).
    fluid = np.clip((vv - surf) * _F32(1 / 0.02) + _F32(0.3), 0, 1)
    fluid *= np.clip((uu - _F32(u_a)) * _F32(1 / soft_px) + 1, 0, 1)
    fluid *= np.clip((_F32(u_b) - uu) * _F32(1 / soft_px) + 1, 0, 1)
    fluid *= hard
    deep = np.clip((vv - surf) * _F32(1 / height), 0, 1)
    # Fluid replaces the lung air (and its markings) and adds water density, denser
    # towards the bottom.
    air = cv.upsample_window(cv.air_h[si], ys, xs)
    vessels = cv.upsample_window(cv.vessel_h, ys, xs)
    cv.density[ys, xs] += fluid * (air * _F32(lung.air) - vessels + _F32(0.02) + _F32(0.04) * deep)
    return True


_HEART_SCALE = {"mild": (1.18, 1.28), "moderate": (1.3, 1.42), "severe": (1.45, 1.6)}


def _enlarge_heart(a: Anatomy, f: Finding, rng) -> None:
    """Cardiomegaly changes the anatomy before the scene is drawn."""
    scale = rng.uniform(*_HEART_SCALE[f.severity])
    h = a.heart
    h["ax"] *= scale
    h["ay"] *= 1 + 0.45 * (scale - 1)
    h["x"] += 0.06 * (scale - 1)
    h["y"] += 0.04 * (scale - 1)


def _render_heart(cv: _Canvas, f: Finding, rng) -> bool:
    a = cv.a
    h = a.heart
    half_w = math.hypot(h["ax"] * math.cos(h["angle"]), h["ay"] * math.sin(h["angle"]))
    lungs = a.lungs
    thorax = (lungs[1].cx + lungs[1].ax) - (lungs[0].cx - lungs[0].ax)
    ys, xs = cv.window(h["x"], h["y"], max(h["ax"], h["ay"]) * 1.05)
    uu, vv = cv.coords(ys, xs)
    if not _store(cv, f, ys, xs, _heart_r2(h, uu, vv) < 1):
        return False
    f.extra["cardiothoracic_ratio"] = round(2 * half_w / thorax, 2)
    return True


def _render_foreign(cv: _Canvas, f: Finding, rng) -> bool:
    si = SIDES.index(f.side)
    lung = cv.a.lungs[si]
    px_per_cm = cv.n / FIELD_OF_VIEW_CM
    pt = _place(lung, f.zone, rng, margin=0.02)
    if pt is None:
        return False
    x, y = cv.px(*pt)
    if f.subtype in ("coin", "button"):
        diameter = rng.uniform(2.0, 2.8) if f.subtype == "coin" else rng.uniform(1.1, 1.8)
        r = 0.5 * diameter * px_per_cm
        ys, xs = cv.clip_window(x - r - 2, x + r + 2, y - r - 2, y + r + 2)
        dx = np.arange(xs.start, xs.stop, dtype=_F32)[None, :] + _F32(0.5 - x)
        dy = np.arange(ys.start, ys.stop, dtype=_F32)[:, None] + _F32(0.5 - y)
        dist = np.sqrt(dx * dx + dy * dy)
        mask = dist < r
        obj = np.clip(_F32(r + 0.5) - dist, 0, 1)  # sharp, anti-aliased edge
        if f.subtype == "button":
            hole_r = max(0.6, 0.13 * r)
            for hx, hy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                ox, oy = dx - _F32(0.28 * r * hx), dy - _F32(0.28 * r * hy)
                obj *= np.clip(np.sqrt(ox * ox + oy * oy) - _F32(hole_r - 0.5), 0.3, 1)
        dens = 0.9
    else:
        length = (rng.uniform(8, 14) if f.subtype == "wire" else rng.uniform(10, 16)) * px_per_cm
        half_width = max(0.8, (0.1 if f.subtype == "wire" else 0.35) * px_per_cm)
        # Tubes run mostly vertically, wires in any direction; a gentle bend.
        phi = rng.uniform(1.2, 1.95) if f.subtype == "tube" else rng.uniform(0, math.pi)
        kappa = rng.uniform(-0.8, 0.8) / length
        ext = 0.5 * length + half_width + 2
        ys, xs = cv.clip_window(x - ext, x + ext, y - ext, y + ext)
        dx = np.arange(xs.start, xs.stop, dtype=_F32)[None, :] + _F32(0.5 - x)
        dy = np.arange(ys.start, ys.stop, dtype=_F32)[:, None] + _F32(0.5 - y)
        c, s = math.cos(phi), math.sin(phi)
        along = dx * _F32(c) + dy * _F32(s)
        across = dy * _F32(c) - dx * _F32(s) - _F32(kappa) * along * along
        dist = np.abs(across) / np.sqrt(1 + (_F32(2 * kappa) * along) ** 2)
        inside_len = np.abs(along) <= _F32(0.5 * length)
        mask = (dist < half_width) & inside_len
        obj = np.clip(_F32(half_width + 0.5) - dist, 0, 1) * inside_len
        if f.subtype == "tube":  # radiopaque walls around a less dense lumen
            wall = np.clip(dist * _F32(1 / half_width), 0, 1)
            obj *= _F32(0.45) + _F32(0.55) * wall
        dens = 0.8 if f.subtype == "wire" else 0.45
    if not _store(cv, f, ys, xs, mask):
        return False
    cv.density[ys, xs] += _F32(dens) * obj
    return True


_RENDERERS = {
    "opacity": _render_opacity,
    "nodule": _render_nodule,
    "pneumothorax": _render_pneumothorax,
    "effusion": _render_effusion,
    "cardiomegaly": _render_heart,
    "foreign_object": _render_foreign,
}


def render(
    anatomy: Anatomy,
    findings: list[Finding],
    image_size: int,
    rng_scene: np.random.Generator,
    rng_findings: np.random.Generator,
) -> tuple[np.ndarray, list[Finding], np.ndarray]:
    """Draws one image.

    Returns ``(image, kept, mask_bits)``: uint8 image ``(H, W)``; the findings that were
    drawn, in input order, with boxes (a finding that cannot be placed, is empty, or
    would touch another finding of its class is dropped, before any report is
    written); and a uint8 ``(H, W)`` array where bit c is set inside class
    ``FINDING_CLASSES[c]``.
    """
    for f in findings:
        if f.kind == "cardiomegaly":
            _enlarge_heart(anatomy, f, rng_findings)
    cv = _Canvas(anatomy, image_size)
    _render_scene(cv, rng_scene)
    # Fluid first so that later findings (an opacity in a wet base) draw over it.
    for f in sorted(findings, key=lambda f: f.kind != "effusion"):
        if _RENDERERS[f.kind](cv, f, rng_findings):
            cv.kept.append(f)
    image = _finish(cv, rng_scene)
    bits = np.zeros((image_size, image_size), np.uint8)
    for f in cv.kept:
        ys, xs, mask = f.extra.pop("_mask")
        bits[ys, xs] |= mask.astype(np.uint8) << np.uint8(CLASS_INDEX[f.kind])
    order = {id(f): i for i, f in enumerate(findings)}
    return image, sorted(cv.kept, key=lambda f: order[id(f)]), bits
