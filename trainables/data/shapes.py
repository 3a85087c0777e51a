"""Embedded multi-label "shapes" data set, generated on the fly from a seed (no files).

Why it exists: the paper's effect (a compressed network stays accurate but its attribution
maps drift away from the objects) needs a data set that a laptop can train on in minutes and
that has exact ground-truth masks. Each image is a small VOC-like scene:

- **Objects**: 1-3 (``num_objects``) shapes of distinct classes out of ten rotation-distinct
  kinds (``SHAPE_NAMES``: circle, square, triangle, cross, star, ring, crescent, arrow,
  hourglass, heart) at a random position, size (``object_scale``: diameter as a fraction of the
  image side, at least ~14 px at 64 px), rotation and colour, with a mild linear shading so
  the object is not a flat colour patch. Objects may overlap; a later object occludes an
  earlier one, and a placement that would leave an earlier object less than half visible is
  redrawn (a few tries, then that extra object is dropped), so every labelled class has a
  clearly visible instance.
- **Exact masks**: every painted region is rasterised once on the pixel-centre grid (no
  anti-aliasing) into a boolean array, and that same array both paints the image and updates
  an ownership map (which object, if any, owns each pixel). The mask of class ``c`` is the set
  of pixels owned by its object, i.e. exactly its visible pixels after occlusion.
- **Clutter that is never a class**: a striped background texture, pixel noise
  (``noise_std``), thin random strokes (``num_strokes``; with probability 1/2 one of them is
  drawn over the objects, occluding them), and distractors (``num_distractors``: elongated
  ellipses, bars and small irregular blobs) that belong to no mask.
- **A class-correlated shortcut**: every class owns a background colour family (a hue band;
  family ``c`` is centred on hue ``c / num_classes``). With probability ``context_prob`` the
  background is drawn from the family of the *first* object's class; otherwise from a family
  chosen uniformly at random (so it still matches by chance with probability
  ``1 / num_classes``: the measured match rate is ``p + (1 - p) / K``). A small student can
  score well by reading the global tint, which puts its Grad-CAM mass on the background,
  while the object itself is needed for the rest of the accuracy (the other objects of a
  multi-object image are never announced by the background, and a fraction ``1 - p`` of
  backgrounds is uninformative). ``context_prob=0`` removes the shortcut, ``1`` makes it
  perfect for the first object.

Why the defaults (``context_prob=0.3``, light clutter): the teacher must learn the objects
for the demo to show anything. In 8-epoch runs of a 7-layer, 110k-parameter CNN on 4000
images, ``context_prob=0.8`` (with light or no clutter alike) gave a model that read only the
background (mAP on a context-free validation set stayed near chance, ~25 %), ``0.5`` barely
better (~29 %), while ``0.3`` learned both (43 % context-free, 63 % with context at 0.8;
66 % with no shortcut at all). The default clutter (1-3 strokes, 0-2 distractors, noise
0.02) is lighter than the heaviest that still looks VOC-like: with 2-5 strokes, 1-3
distractors and noise 0.03 the same CNN reached only 50 % even without the shortcut.

Determinism: sample ``i`` of split ``s`` with seed ``k`` depends only on
``numpy.random.default_rng((k, split_id(s), i))`` and the constructor options, never on
access order or worker. ``val`` and ``seg_val`` are the same images (``seg_val`` exists for
symmetry with VOC); ``train`` is a disjoint stream. The optional horizontal flip
(``augment=True``) draws from torch's global generator, so it varies between epochs and is
seeded like the rest of training; deterministic access needs ``augment=False`` (default).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

from trainables.data._validation import (
    check_bool,
    check_choice,
    check_float_pair,
    check_index,
    check_int,
    check_int_pair,
    check_number,
    check_optional_bool,
)
from trainables.data.normalization import IMAGE_MEAN, IMAGE_STD
from trainables.data.sample import ImageDataset, Sample

__all__ = ["SHAPE_NAMES", "ShapesDataset", "ShapesObject", "ShapesScene"]

# float32 at run time (numpy keeps float32 under Python-float scalars); the stubs cannot tell.
FloatArray = npt.NDArray[np.floating[Any]]
BoolArray = npt.NDArray[np.bool_]
ShapeFn = Callable[[FloatArray, FloatArray], BoolArray]

SHAPE_NAMES: Final[tuple[str, ...]] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "crescent",
    "arrow",
    "hourglass",
    "heart",
)

SPLITS: Final[tuple[str, ...]] = ("train", "val", "seg_val")
# val and seg_val share a stream so seg_val is literally "val with masks".
_SPLIT_IDS: Final[dict[str, int]] = {"train": 0, "val": 1, "seg_val": 1}
_DEFAULT_SIZES: Final[dict[str, int]] = {"train": 2000, "val": 500, "seg_val": 500}

_MIN_IMAGE_SIZE: Final = 32
# An object keeps at least this fraction of its own area visible, so a label never rests on a
# sliver that no network could recognise.
_MIN_VISIBLE_FRACTION: Final = 0.5
_PLACEMENT_TRIES: Final = 8
_TOP_STROKE_PROB: Final = 0.5
# Shading factor 1 + _SHADE * u over the object (u in [-1, 1]); with object values <= 0.85 the
# shaded colour never clips, so a pixel's colour is an exact multiple of its object's colour.
_SHADE: Final = 0.15
_MIN_CONTRAST: Final = 0.4
_COLOUR_TRIES: Final = 16

_MEAN: Final = np.asarray(IMAGE_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD: Final = np.asarray(IMAGE_STD, dtype=np.float32).reshape(3, 1, 1)


# --- shape indicator functions ------------------------------------------------------------
# Each takes normalised coordinates (u, v) of pixel centres: the object's frame rotated and
# scaled by its radius, so the shape fits in the unit disc. Areas (1.1 to 2.1 r^2) stay within a
# factor of 2 of each other, less than the spread of object scales: size does not give a class
# away.


def _circle(u: FloatArray, v: FloatArray) -> BoolArray:
    return u * u + v * v <= 0.8**2


def _square(u: FloatArray, v: FloatArray) -> BoolArray:
    return (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72)


_TRIANGLE_NORMALS: Final = [
    (math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
]


def _triangle(u: FloatArray, v: FloatArray) -> BoolArray:
    # Equilateral triangle with circumradius 1: intersection of three half-planes (apothem 1/2).
    (c0, s0), (c1, s1), (c2, s2) = _TRIANGLE_NORMALS
    return (u * c0 + v * s0 <= 0.5) & (u * c1 + v * s1 <= 0.5) & (u * c2 + v * s2 <= 0.5)


def _cross(u: FloatArray, v: FloatArray) -> BoolArray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.28) & (av <= 0.9)) | ((av <= 0.28) & (au <= 0.9))


_STAR_SECTOR: Final = 2 * math.pi / 5
_STAR_INNER: Final = 0.45
# Edge of the star inside one folded half-sector, from the outer vertex (1, 0) to the inner
# vertex at angle pi/5: inside iff  b * (x - 1) + (1 - a) * y <= 0  with (a, b) the inner vertex.
_STAR_A: Final = _STAR_INNER * math.cos(math.pi / 5)
_STAR_B: Final = _STAR_INNER * math.sin(math.pi / 5)


def _star(u: FloatArray, v: FloatArray) -> BoolArray:
    psi = np.mod(np.arctan2(v, u), _STAR_SECTOR)
    psi = np.minimum(psi, _STAR_SECTOR - psi)
    rho = np.sqrt(u * u + v * v)
    x, y = rho * np.cos(psi), rho * np.sin(psi)
    return _STAR_B * (x - 1.0) + (1.0 - _STAR_A) * y <= 0.0


def _ring(u: FloatArray, v: FloatArray) -> BoolArray:
    r2 = u * u + v * v
    return (r2 <= 0.9**2) & (r2 >= 0.5**2)


def _crescent(u: FloatArray, v: FloatArray) -> BoolArray:
    return (u * u + v * v <= 0.9**2) & ((u - 0.45) ** 2 + v * v > 0.7**2)


def _arrow(u: FloatArray, v: FloatArray) -> BoolArray:
    av = np.abs(v)
    shaft = (u >= -0.9) & (u <= 0.05) & (av <= 0.25)
    head = (u >= 0.05) & (av <= 0.75 * (0.9 - u) / 0.85)
    return shaft | head


def _hourglass(u: FloatArray, v: FloatArray) -> BoolArray:
    # Two triangles tip to tip with a narrow waist so the shape stays connected.
    av = np.abs(v)
    return (av <= 0.85) & (np.abs(u) <= 0.06 + 0.7 * av / 0.85)


def _heart(u: FloatArray, v: FloatArray) -> BoolArray:
    x = 1.35 * u
    y = 0.15 - 1.35 * v
    q = x * x + y * y - 1.0
    inside: BoolArray = q * q * q - x * x * y * y * y <= 0.0
    return inside


_SHAPE_FNS: Final[tuple[ShapeFn, ...]] = (
    _circle,
    _square,
    _triangle,
    _cross,
    _star,
    _ring,
    _crescent,
    _arrow,
    _hourglass,
    _heart,
)


# --- scene records ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesObject:
    """One labelled object of a scene.

    Attributes:
        class_index: index into ``ShapesDataset.classes``.
        centre: (x, y) in pixels (pixel ``(row, col)`` has centre ``(col + 0.5, row + 0.5)``).
        radius: pixels; the shape fits in the disc of this radius around ``centre``.
        angle: rotation in radians.
        colour: RGB in [0, 1] before shading and noise.
        area: pixels it covered when painted (before anything was drawn over it).
        visible_pixels: pixels it owns in the final image (after occlusion); at least half
            of ``area``.
    """

    class_index: int
    centre: tuple[float, float]
    radius: float
    angle: float
    colour: tuple[float, float, float]
    area: int
    visible_pixels: int


@dataclass(frozen=True)
class ShapesScene:
    """A rendered sample before tensor conversion, with the parameters that made it.

    Attributes:
        index: the sample index (negative indices resolved).
        image: float32 array [3, H, W], RGB in [0, 1] (not normalised, noise included).
        owner: int8 array [H, W]: index into ``objects`` of the object visible at each pixel,
            -1 where no object is visible (background, strokes, distractors).
        objects: the placed objects in paint order (later ones occlude earlier ones).
        background_family: the class whose colour family tints the background.
        background_colour: RGB in [0, 1] of the background before texture and noise.
        context_applied: True when the family was forced to ``objects[0]``'s class (probability
            ``context_prob``); False when it was drawn at random (and may match by chance).
    """

    index: int
    image: FloatArray
    owner: npt.NDArray[np.int8]
    objects: tuple[ShapesObject, ...]
    background_family: int
    background_colour: tuple[float, float, float]
    context_applied: bool


# --- rendering ------------------------------------------------------------------------------


Colour = tuple[float, float, float]

_UNIT_CIRCLE_16: Final = [
    (math.cos(2 * math.pi * i / 16), math.sin(2 * math.pi * i / 16)) for i in range(16)
]


class _Draws:
    """Uniform draws from one generator, fetched in blocks.

    A numpy call per scalar costs about a microsecond and a scene needs ~60 scalars; blocks
    keep the sequence a pure function of the generator's seed all the same.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._buffer: list[float] = []
        self._pos = 0

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self._pos == len(self._buffer):
            self._buffer = self.rng.random(64).tolist()
            self._pos = 0
        x = self._buffer[self._pos]
        self._pos += 1
        return lo + (hi - lo) * x

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in the inclusive range [lo, hi]."""
        return min(lo + int(self.uniform() * (hi - lo + 1)), hi)

    def sample(self, population: int, count: int) -> list[int]:
        """``count`` distinct integers from ``range(population)`` (partial Fisher-Yates)."""
        pool = list(range(population))
        for i in range(count):
            j = self.integer(i, population - 1)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:count]

    def colour(self) -> Colour:
        return (self.uniform(), self.uniform(), self.uniform())


class _Canvas:
    """Image plus ownership map; every paint goes through one boolean mask.

    ``owner[y, x]`` is the index of the object visible at that pixel or -1, so the mask of an
    object is by construction exactly the set of pixels painted with it and not painted over.
    """

    def __init__(self, image: FloatArray) -> None:
        self.image = image
        self.size = image.shape[-1]
        self.owner = np.full((self.size, self.size), -1, dtype=np.int8)
        self.areas: list[int] = []
        self.visible: list[int] = []
        self.required: list[int] = []

    def rasterise(
        self, fn: ShapeFn, cx: float, cy: float, radius: float, angle: float
    ) -> tuple[slice, slice, BoolArray, FloatArray]:
        """Boolean mask of ``fn`` placed at (cx, cy), within its clipped bounding box.

        Returns the row and column slices of the box, the mask [h, w] and the normalised
        coordinate ``u`` [h, w] (for shading).
        """
        x0 = max(0, math.floor(cx - radius))
        x1 = min(self.size, math.ceil(cx + radius) + 1)
        y0 = max(0, math.floor(cy - radius))
        y1 = min(self.size, math.ceil(cy + radius) + 1)
        dx = (np.arange(x0, x1, dtype=np.float32) + (0.5 - cx))[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + (0.5 - cy))[:, None]
        c = math.cos(angle) / radius
        s = math.sin(angle) / radius
        u = dx * c + dy * s
        v = dy * c - dx * s
        return slice(y0, y1), slice(x0, x1), fn(u, v), u

    def try_paint(
        self,
        rows: slice,
        cols: slice,
        mask: BoolArray,
        colour: Colour,
        owner: int = -1,
        shade: FloatArray | None = None,
    ) -> bool:
        """Paint ``mask`` unless that would leave a placed object below its visible minimum.

        Args:
            rows, cols: the box of ``mask`` in the image.
            mask: bool [h, w] pixels to paint.
            colour: RGB in [0, 1].
            owner: object index to record for the pixels, -1 for clutter.
            shade: float [h, w] in [-1, 1]; the colour is scaled by ``1 + _SHADE * shade``.

        Returns:
            Whether it painted.
        """
        owner_box = self.owner[rows, cols]
        if self.visible:
            covered = np.bincount(owner_box[mask] + 1, minlength=len(self.visible) + 1).tolist()
            left = [vis - hit for vis, hit in zip(self.visible, covered[1:], strict=True)]
            if any(vis < need for vis, need in zip(left, self.required, strict=True)):
                return False
            self.visible = left
        region = self.image[:, rows, cols]
        rgb = np.asarray(colour, dtype=np.float32)[:, None]
        region[:, mask] = rgb if shade is None else rgb * (1.0 + _SHADE * shade[mask])
        owner_box[mask] = owner
        if owner >= 0:
            area = int(np.count_nonzero(mask))
            self.areas.append(area)
            self.visible.append(area)
            self.required.append(math.ceil(_MIN_VISIBLE_FRACTION * area))
        return True


def _hsv(h: float, s: float, v: float) -> Colour:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def _stroke(draws: _Draws, n: int) -> tuple[float, float, float, float, int]:
    """A random straight stroke (x0, y0, x1, y1, width), 1-2 px wide at 64 px."""
    x0, y0 = draws.uniform(0, n), draws.uniform(0, n)
    length = draws.uniform(0.3, 0.9) * n
    theta = draws.uniform(0, 2 * math.pi)
    width = max(1, round(draws.uniform(1.0, 2.0) * n / 64))
    return x0, y0, x0 + length * math.cos(theta), y0 + length * math.sin(theta), width


def _draw_distractor(draw: ImageDraw.ImageDraw, draws: _Draws, n: int, fill: int) -> None:
    """An elongated ellipse, a bar or a small irregular blob: never mistakable for a class."""
    kind = draws.integer(0, 2)
    cx, cy = draws.uniform(0, n), draws.uniform(0, n)
    if kind == 2:
        r = 0.5 * n * draws.uniform(0.12, 0.22)
        for _ in range(3):
            x = cx + r * draws.uniform(-0.45, 0.45)
            y = cy + r * draws.uniform(-0.45, 0.45)
            rad = r * draws.uniform(0.3, 0.5)
            draw.ellipse([(x - rad, y - rad), (x + rad, y + rad)], fill=fill)
        return
    angle = draws.uniform(0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    a = 0.5 * n * draws.uniform(0.2, 0.5)
    if kind == 0:
        b = a / draws.uniform(2.5, 4.0)
        local = [(a * c, b * s) for c, s in _UNIT_CIRCLE_16]
    else:
        b = a / draws.uniform(3.0, 6.0)
        local = [(-a, -b), (a, -b), (a, b), (-a, b)]
    draw.polygon([(cx + u * ca - v * sa, cy + u * sa + v * ca) for u, v in local], fill=fill)


def _object_colour(draws: _Draws, background: Colour) -> Colour:
    # Saturated and clearly different from the background so the object is visible; the value
    # stays <= 0.85 so shading never clips. Hue is uniform: colour says nothing about the class.
    best, best_distance = _hsv(0.0, 1.0, 0.85), -1.0
    for _ in range(_COLOUR_TRIES):
        colour = _hsv(draws.uniform(), draws.uniform(0.55, 1.0), draws.uniform(0.55, 0.85))
        distance = math.dist(colour, background)
        if distance >= _MIN_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


class ShapesDataset(ImageDataset):
    """Synthetic multi-label shapes with exact masks and a tunable background shortcut.

    ``dataset[i]`` follows :mod:`trainables.data.sample`: ``image`` float32 [3, S, S]
    (normalised), ``labels`` float32 [C] multi-hot, ``masks`` bool [C, S, S] when
    ``has_masks``, ``index`` int, with ``S = image_size`` and ``C = num_classes``. See the
    module docstring for the scene design.

    Args:
        split: ``"train"``, ``"val"`` or ``"seg_val"`` (the same images as ``val``).
        size: number of samples; default 2000 for ``train``, 500 otherwise.
        image_size: side length in pixels (>= 32); 64 by default.
        seed: non-negative integer; with ``split`` and the index it fixes every sample.
        num_classes: how many of ``SHAPE_NAMES`` to use (the first ones), 2..10.
        shapes: the classes by name instead (distinct names of ``SHAPE_NAMES``, at least two,
            in label order), e.g. to leave out the ring and the crescent, whose centres lie
            outside their masks and so make the pointing game miss for any network.
        num_objects: inclusive (min, max) number of objects (distinct classes) per image.
        context_prob: probability that the background colour family is the first object's
            class's family (the shortcut strength), in [0, 1].
        object_scale: inclusive (min, max) object diameter as a fraction of ``image_size``.
        num_distractors: inclusive (min, max) number of non-class distractor shapes.
        num_strokes: inclusive (min, max) number of random strokes (at most one of them, with
            probability 1/2, over the objects).
        noise_std: standard deviation of the per-pixel uniform noise (RGB in [0, 1]).
        with_masks: include ``"masks"``; default False for ``train`` (keeps training batches
            small) and True for ``val``/``seg_val``.
        augment: random horizontal flip (image and masks) from torch's global generator.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        size: int | None = None,
        image_size: int = 64,
        seed: int = 0,
        num_classes: int | None = None,
        shapes: Sequence[str] | None = None,
        num_objects: Sequence[int] = (1, 3),
        context_prob: float = 0.3,
        object_scale: Sequence[float] = (0.22, 0.45),
        num_distractors: Sequence[int] = (0, 2),
        num_strokes: Sequence[int] = (1, 3),
        noise_std: float = 0.02,
        with_masks: bool | None = None,
        augment: bool = False,
    ) -> None:
        self.split = check_choice("split", split, SPLITS)
        self._size = _DEFAULT_SIZES[split] if size is None else check_int("size", size, 0)
        self._image_size = check_int("image_size", image_size, _MIN_IMAGE_SIZE)
        self.seed = check_int("seed", seed, 0)
        if shapes is None:
            n_cls = check_int(
                "num_classes", len(SHAPE_NAMES) if num_classes is None else num_classes, 2
            )
            if n_cls > len(SHAPE_NAMES):
                raise ValueError(f"num_classes: must be at most {len(SHAPE_NAMES)}, got {n_cls}")
            self._classes = SHAPE_NAMES[:n_cls]
        else:
            names = tuple(shapes) if not isinstance(shapes, str) else (shapes,)
            unknown = [n for n in names if n not in SHAPE_NAMES]
            if unknown or len(set(names)) != len(names) or len(names) < 2:
                raise ValueError(
                    f"shapes: must be at least two distinct names of {list(SHAPE_NAMES)}, "
                    f"got {list(names)}"
                )
            if num_classes is not None and num_classes != len(names):
                raise ValueError(
                    f"num_classes: must equal the number of shapes ({len(names)}) when both are "
                    f"given, got {num_classes}"
                )
            self._classes = names
            n_cls = len(names)
        # Which indicator function draws each class.
        self._shape_fns = tuple(_SHAPE_FNS[SHAPE_NAMES.index(name)] for name in self._classes)
        self.num_objects = check_int_pair("num_objects", num_objects, 1, n_cls)
        self.context_prob = check_number("context_prob", context_prob, 0.0, 1.0)
        self.object_scale = check_float_pair("object_scale", object_scale, 0.05, 0.9)
        # Clutter lives in one 8-bit index layer: at most 254 items.
        self.num_distractors = check_int_pair("num_distractors", num_distractors, 0, 100)
        self.num_strokes = check_int_pair("num_strokes", num_strokes, 0, 100)
        self.noise_std = check_number("noise_std", noise_std, 0.0, 1.0)
        masks = check_optional_bool("with_masks", with_masks)
        self._has_masks = split != "train" if masks is None else masks
        self.augment = check_bool("augment", augment)

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def multi_label(self) -> bool:
        return True

    @property
    def has_masks(self) -> bool:
        return self._has_masks

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def deterministic(self) -> bool:
        return not self.augment

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> Sample:
        # Built in numpy and handed over with from_numpy: tiny torch ops pay for intra-op
        # thread hand-offs, which on a busy 2-core machine cost milliseconds each.
        scene = self.render(index)
        image = (scene.image - _MEAN) / _STD
        labels = np.zeros(self.num_classes, dtype=np.float32)
        labels[[obj.class_index for obj in scene.objects]] = 1.0
        masks: BoolArray | None = None
        if self._has_masks:
            size = self._image_size
            masks = np.zeros((self.num_classes, size, size), dtype=np.bool_)
            for j, obj in enumerate(scene.objects):
                masks[obj.class_index] |= scene.owner == j
        if self.augment and bool(torch.rand(()) < 0.5):
            image = np.ascontiguousarray(image[..., ::-1])
            if masks is not None:
                masks = np.ascontiguousarray(masks[..., ::-1])
        sample: Sample = {
            "image": torch.from_numpy(image),
            "labels": torch.from_numpy(labels),
            "index": scene.index,
        }
        if masks is not None:
            sample["masks"] = torch.from_numpy(masks)
        return sample

    def render(self, index: int) -> ShapesScene:
        """Generate sample ``index`` as arrays plus its scene parameters (no augmentation)."""
        index = check_index(index, self._size)
        rng = np.random.default_rng((self.seed, _SPLIT_IDS[self.split], index))
        draws = _Draws(rng)
        n, k = self._image_size, self.num_classes

        classes = draws.sample(k, draws.integer(*self.num_objects))
        context_applied = draws.uniform() < self.context_prob
        family = classes[0] if context_applied else draws.integer(0, k - 1)

        # Background: the family's hue band (the jitter stays inside it), random saturation and
        # value, times a random sinusoidal stripe texture.
        bg = _hsv(
            (family + draws.uniform(-0.25, 0.25)) / k,
            draws.uniform(0.35, 0.7),
            draws.uniform(0.45, 0.8),
        )
        freq = 2 * math.pi * draws.uniform(1.5, 6.0) / n
        phi = draws.uniform(0, 2 * math.pi)
        grid = np.arange(n, dtype=np.float32) + 0.5
        phase = (freq * math.cos(phi)) * grid[None, :] + (freq * math.sin(phi)) * grid[:, None]
        texture = 1.0 + draws.uniform(0.05, 0.2) * np.sin(phase + draws.uniform(0, 2 * math.pi))
        canvas = _Canvas(np.asarray(bg, dtype=np.float32)[:, None, None] * texture[None])

        # Clutter under the objects owns no pixel, so it is drawn into one index layer with PIL
        # (far cheaper than a numpy raster per item) and coloured in one pass.
        n_strokes = draws.integer(*self.num_strokes)
        # With probability 1/2 the last stroke is drawn over the objects instead (below).
        top_stroke = n_strokes > 0 and draws.uniform() < _TOP_STROKE_PROB
        n_strokes -= top_stroke
        n_distractors = draws.integer(*self.num_distractors)
        palette = [(0.0, 0.0, 0.0)] + [draws.colour() for _ in range(n_strokes + n_distractors)]
        layer = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(layer)
        for i in range(n_strokes):
            x0, y0, x1, y1, width = _stroke(draws, n)
            draw.line([(x0, y0), (x1, y1)], fill=1 + i, width=width)
        for i in range(n_distractors):
            _draw_distractor(draw, draws, n, fill=1 + n_strokes + i)
        clutter = np.asarray(layer)
        hit = clutter > 0
        canvas.image[:, hit] = np.asarray(palette, dtype=np.float32)[clutter[hit]].T

        placed: list[tuple[int, float, float, float, float, Colour]] = []
        lo, hi = self.object_scale
        for cls in classes:
            colour = _object_colour(draws, bg)
            for _ in range(_PLACEMENT_TRIES):
                radius = 0.5 * n * draws.uniform(lo, hi)
                cx, cy = draws.uniform(radius, n - radius), draws.uniform(radius, n - radius)
                angle = draws.uniform(0, 2 * math.pi)
                rows, cols, mask, u = canvas.rasterise(self._shape_fns[cls], cx, cy, radius, angle)
                if canvas.try_paint(rows, cols, mask, colour, owner=len(placed), shade=u):
                    placed.append((cls, cx, cy, radius, angle, colour))
                    break

        if top_stroke:
            # Drawn over the objects, so it goes through the canvas (visibility check) in a layer
            # the size of its own box.
            x0, y0, x1, y1, width = _stroke(draws, n)
            colour = draws.colour()
            bx0 = max(0, math.floor(min(x0, x1)) - width)
            by0 = max(0, math.floor(min(y0, y1)) - width)
            bx1 = min(n, math.ceil(max(x0, x1)) + width + 1)
            by1 = min(n, math.ceil(max(y0, y1)) + width + 1)
            # The box always holds (x0, y0), which lies inside the image, so it is never empty.
            box = Image.new("L", (bx1 - bx0, by1 - by0), 0)
            ImageDraw.Draw(box).line(
                [(x0 - bx0, y0 - by0), (x1 - bx0, y1 - by0)], fill=1, width=width
            )
            mask = np.asarray(box) > 0
            canvas.try_paint(slice(by0, by1), slice(bx0, bx1), mask, colour)

        image = canvas.image
        if self.noise_std > 0:
            # Uniform noise with the requested std: much cheaper to draw than Gaussian noise.
            noise = rng.random(image.shape, dtype=np.float32) - 0.5
            image += noise * np.float32(self.noise_std * math.sqrt(12.0))
        np.clip(image, 0.0, 1.0, out=image)
        objects = tuple(
            ShapesObject(
                class_index=cls,
                centre=(cx, cy),
                radius=radius,
                angle=angle,
                colour=colour,
                area=area,
                visible_pixels=visible,
            )
            for (cls, cx, cy, radius, angle, colour), area, visible in zip(
                placed, canvas.areas, canvas.visible, strict=True
            )
        )
        return ShapesScene(
            index=index,
            image=image,
            owner=canvas.owner,
            objects=objects,
            background_family=family,
            background_colour=bg,
            context_applied=context_applied,
        )
