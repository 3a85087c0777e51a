"""A generated PASCAL VOC 2012 tree, so tests and benchmarks can read VOC without downloading it.

:func:`write_voc_tree` writes the files that :mod:`trainables.data.voc` reads, laid out the way
the VOC 2012 trainval tar extracts them (``root`` is the folder that holds ``VOCdevkit/``)::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg               baseline JPEGs (PIL/libjpeg)
    root/VOCdevkit/VOC2012/Annotations/<id>.xml              VOC's XML, tab-indented
    root/VOCdevkit/VOC2012/ImageSets/Main/{train,val,trainval}.txt
    root/VOCdevkit/VOC2012/ImageSets/Main/<class>_{train,val,trainval}.txt   "<id> -1|0| 1"
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette ("P") PNGs, VOC colour map

It stands in for the real data where that matters to the code:

* images have VOC's sizes: mostly 500x375 and 375x500 (width x height), also 500x333,
  333x500, 500x500 and odd ones with a 500-pixel long side; JPEG quality 75-95 as on Flickr;
* ids are ``<year>_<number>`` (2007-2012), sorted, unique; Main ``train`` and ``val`` are
  disjoint, Segmentation ``train``/``val`` are subsets of them, ``trainval`` their union;
* every split and every Segmentation subset holds objects of all 20 classes (each image has a
  non-difficult object of a primary class, taken in turn), with person the commonest extra;
* annotations carry ``size``, ``segmented`` and per object ``name``, ``pose``, ``truncated``
  (boxes clipped at the image border), ``difficult`` (small objects) and a 1-based inclusive
  ``bndbox``; some persons have ``part`` boxes (head, hand, foot);
* every third image of a split has a class present *only* through difficult objects (the
  first of them in each split is a person), the case where evaluation protocols differ;
* ``SegmentationClass`` holds palette index ``c + 1`` for class ``c``, 0 for background and
  255 ("void") in a band about 4 pixels wide around every object outline, as VOC draws it;
  difficult objects are segmented too.

Images are coloured regions with noise, not photographs: decoders, transforms, label and mask
handling see real file formats, but nothing here is meant to be learnt from.
Deterministic for a ``seed``; a few hundred images take a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw

from trainables.data.voc import VOC_CLASSES

__all__ = ["MIN_SPLIT_IMAGES", "VOC_IMAGE_SIZES", "voc_palette", "write_voc_tree"]

#: Each split (and Segmentation subset) needs this many images to hold every class.
MIN_SPLIT_IMAGES: Final = len(VOC_CLASSES)

#: (height, width) of VOC 2012 images and roughly how often each occurs; the rest ("other")
#: have one side of 500 and the other drawn from [200, 500].
VOC_IMAGE_SIZES: Final[tuple[tuple[int, int, float], ...]] = (
    (375, 500, 0.45),
    (500, 375, 0.15),
    (333, 500, 0.15),
    (500, 333, 0.05),
    (500, 500, 0.05),
)
_OTHER_SIZE_WEIGHT: Final = 1.0 - sum(w for _, _, w in VOC_IMAGE_SIZES)

_VOID: Final = 255
#: Side of the window within which a label change marks a pixel void: a band of 2 pixels
#: either side of an outline, about VOC's 5-pixel boundary.
_VOID_WINDOW: Final = 5
_PERSON: Final = VOC_CLASSES.index("person")
_POSES: Final = ("Frontal", "Rear", "Left", "Right", "Unspecified")
_PARTS: Final = ("head", "hand", "foot")
_YEARS: Final = (2007, 2008, 2009, 2010, 2011, 2012)


def voc_palette() -> list[int]:
    """VOC's colour map (index bits interleaved into R, G, B), flattened to 768 entries."""
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE: Final = voc_palette()
_PALETTE_RGB: Final = np.asarray(_PALETTE, dtype=np.float32).reshape(256, 3)


@dataclass(frozen=True)
class _Object:
    """One annotated object: class index, VOC attributes and boxes.

    ``box`` is the drawn extent (x0, y0, x1, y1), 0-based, exclusive, possibly beyond the
    image; the annotation's ``bndbox`` is it clipped to the image, 1-based and inclusive.
    """

    cls: int
    box: tuple[int, int, int, int]
    difficult: bool
    pose: str
    parts: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()


@dataclass(frozen=True)
class _ImagePlan:
    image_id: str
    height: int
    width: int
    objects: tuple[_Object, ...]
    segmented: bool
    quality: int


def _check_sizes(train: int, val: int, segmented_train: int, segmented_val: int, seed: int) -> None:
    problems: dict[str, str] = {}

    def bad(value: object, high: int | None) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return True
        return value < MIN_SPLIT_IMAGES or (high is not None and value > high)

    for name, value in (("train", train), ("val", val)):
        if bad(value, None):
            rule = f"an integer >= {MIN_SPLIT_IMAGES} (every split holds all 20 classes)"
            problems[name] = f"{name}: must be {rule}, got {value!r}"
    for name, value, split, high in (
        ("segmented_train", segmented_train, "train", train),
        ("segmented_val", segmented_val, "val", val),
    ):
        # A subset of a split that is wrong itself: the split's message says what to fix.
        if split not in problems and bad(value, high):
            rule = (
                f"an integer in [{MIN_SPLIT_IMAGES}, {high}] (a subset of its Main split, "
                "holding all 20 classes)"
            )
            problems[name] = f"{name}: must be {rule}, got {value!r}"
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems["seed"] = f"seed: must be a non-negative integer, got {seed!r}"
    if problems:
        raise ValueError("; ".join(problems.values()))


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    weights = [w for _, _, w in VOC_IMAGE_SIZES] + [_OTHER_SIZE_WEIGHT]
    pick = int(rng.choice(len(weights), p=np.asarray(weights) / sum(weights)))
    if pick < len(VOC_IMAGE_SIZES):
        height, width, _ = VOC_IMAGE_SIZES[pick]
        return height, width
    short = int(rng.integers(200, 501))
    return (500, short) if rng.random() < 0.3 else (short, 500)


def _ids(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` sorted, unique ``<year>_<number>`` ids, numbers rising within a year."""
    years = np.sort(rng.choice(_YEARS, size=count, p=[0.05, 0.19, 0.19, 0.19, 0.19, 0.19]))
    ids, last = [], dict.fromkeys(_YEARS, 0)
    for year in years.tolist():
        last[year] += int(rng.integers(1, 8))
        ids.append(f"{year}_{last[year]:06d}")
    return ids


def _box(
    rng: np.random.Generator, height: int, width: int, low: float, high: float, *, edge: bool
) -> tuple[int, int, int, int]:
    """A box whose sides are ``low``..``high`` of the image's; with ``edge`` it may cross the
    image border (a truncated object), else it lies inside."""
    bw = max(8, int(width * rng.uniform(low, high)))
    bh = max(8, int(height * rng.uniform(low, high)))
    if edge:
        x0 = int(rng.integers(-bw // 2, width - bw // 2))
        y0 = int(rng.integers(-bh // 2, height - bh // 2))
    else:
        x0 = int(rng.integers(0, max(1, width - bw)))
        y0 = int(rng.integers(0, max(1, height - bh)))
    return x0, y0, x0 + bw, y0 + bh


def _small_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """A difficult object's box: 24-60 pixels a side, inside the image."""
    side = int(rng.integers(24, 61))
    x0 = int(rng.integers(0, width - side))
    y0 = int(rng.integers(0, height - side))
    return x0, y0, x0 + side, y0 + int(side * rng.uniform(0.8, 1.25))


def _parts(
    rng: np.random.Generator, box: tuple[int, int, int, int]
) -> tuple[tuple[str, tuple[int, int, int, int]], ...]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    head = (x0 + w // 3, y0, x0 + 2 * w // 3, y0 + h // 5)
    hand = (x0, y0 + h // 2, x0 + w // 5, y0 + h // 2 + h // 8)
    foot = (x0 + w // 4, y1 - h // 10, x0 + w // 2, y1)
    chosen = rng.permutation(3)[: int(rng.integers(1, 4))]
    return tuple((_PARTS[i], (head, hand, foot)[i]) for i in sorted(chosen.tolist()))


def _plan_image(
    image_id: str,
    primary: int,
    difficult_only: int | None,
    *,
    segmented: bool,
    rng: np.random.Generator,
) -> _ImagePlan:
    height, width = _image_size(rng)
    classes = [primary]
    # Extras never take the difficult-only class, which must stay difficult-only.
    others = [c for c in range(len(VOC_CLASSES)) if c != difficult_only]
    for _ in range(int(rng.choice(4, p=[0.4, 0.35, 0.15, 0.1]))):
        person = rng.random() < 0.35 and difficult_only != _PERSON
        classes.append(_PERSON if person else int(rng.choice(others)))
    objects: list[_Object] = []
    for index, cls in enumerate(classes):
        # The primary object is large, as VOC's main subjects are; extras are smaller.
        low, high = (0.35, 0.9) if index == 0 else (0.15, 0.5)
        box = _box(rng, height, width, low, high, edge=rng.random() < 0.3)
        parts = _parts(rng, box) if cls == _PERSON and rng.random() < 0.3 else ()
        objects.append(_Object(cls, box, False, str(rng.choice(_POSES)), parts))
    # A difficult object beside a clear one of the same class: the class stays positive.
    if rng.random() < 0.3:
        box = _small_box(rng, height, width)
        objects.append(_Object(int(rng.choice(classes)), box, True, "Unspecified"))
    if difficult_only is not None:
        for _ in range(int(rng.integers(1, 3))):
            box = _small_box(rng, height, width)
            objects.append(_Object(difficult_only, box, True, "Unspecified"))
    return _ImagePlan(
        image_id,
        height,
        width,
        tuple(objects),
        segmented,
        int(rng.integers(75, 96)),
    )


def _difficult_only_class(primary: int, turn: int) -> int:
    """The ``turn``-th difficult-only class of a split: person first, then every 7th class
    on (7 is coprime to 20, so all classes come round), never the image's primary class."""
    cls = (_PERSON + 7 * turn) % len(VOC_CLASSES)
    return (cls + 1) % len(VOC_CLASSES) if cls == primary else cls


def _plan_split(ids: list[str], segmented: set[str], rng: np.random.Generator) -> list[_ImagePlan]:
    """Plans of one Main split: the primary classes go round the segmented images first, then
    the others, so each group of at least 20 images holds all 20 classes."""
    order = [i for i in ids if i in segmented] + [i for i in ids if i not in segmented]
    plans: dict[str, _ImagePlan] = {}
    turns = 0
    for position, image_id in enumerate(order):
        group_start = 0 if image_id in segmented else len(segmented)
        primary = (position - group_start) % len(VOC_CLASSES)
        difficult_only = None
        if position % 3 == 0:
            difficult_only = _difficult_only_class(primary, turns)
            turns += 1
        plans[image_id] = _plan_image(
            image_id, primary, difficult_only, segmented=image_id in segmented, rng=rng
        )
    return [plans[i] for i in ids]


def _clipped(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, ...]:
    """VOC's ``bndbox``: 1-based, inclusive, within the image."""
    x0, y0, x1, y1 = box
    return max(1, x0 + 1), max(1, y0 + 1), min(width, x1), min(height, y1)


def _truncated(box: tuple[int, int, int, int], height: int, width: int) -> bool:
    x0, y0, x1, y1 = box
    return x0 < 0 or y0 < 0 or x1 > width or y1 > height


def _annotation(plan: _ImagePlan) -> str:
    year = plan.image_id.split("_")[0]
    lines = [
        "<annotation>",
        "\t<folder>VOC2012</folder>",
        f"\t<filename>{plan.image_id}.jpg</filename>",
        "\t<source>",
        f"\t\t<database>The VOC{year} Database</database>",
        f"\t\t<annotation>PASCAL VOC{year}</annotation>",
        "\t\t<image>flickr</image>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{plan.width}</width>",
        f"\t\t<height>{plan.height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        f"\t<segmented>{int(plan.segmented)}</segmented>",
    ]
    for obj in plan.objects:
        xmin, ymin, xmax, ymax = _clipped(obj.box, plan.height, plan.width)
        lines += [
            "\t<object>",
            f"\t\t<name>{VOC_CLASSES[obj.cls]}</name>",
            f"\t\t<pose>{obj.pose}</pose>",
            f"\t\t<truncated>{int(_truncated(obj.box, plan.height, plan.width))}</truncated>",
            f"\t\t<difficult>{int(obj.difficult)}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
        ]
        for name, part in obj.parts:
            pxmin, pymin, pxmax, pymax = _clipped(part, plan.height, plan.width)
            lines += [
                "\t\t<part>",
                f"\t\t\t<name>{name}</name>",
                "\t\t\t<bndbox>",
                f"\t\t\t\t<xmin>{pxmin}</xmin>",
                f"\t\t\t\t<ymin>{pymin}</ymin>",
                f"\t\t\t\t<xmax>{pxmax}</xmax>",
                f"\t\t\t\t<ymax>{pymax}</ymax>",
                "\t\t\t</bndbox>",
                "\t\t</part>",
            ]
        lines.append("\t</object>")
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _object_map(plan: _ImagePlan, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W]: 1 + the index of the object on top at each pixel, 0 for background.

    Larger objects are drawn first, so small (difficult) ones stay visible on top; each is an
    ellipse or a quadrilateral filling its box, cut by the image border when truncated.
    """
    canvas = Image.new("L", (plan.width, plan.height), 0)
    draw = ImageDraw.Draw(canvas)

    def area(index: int) -> int:
        x0, y0, x1, y1 = plan.objects[index].box
        return (x1 - x0) * (y1 - y0)

    by_area = sorted(range(len(plan.objects)), key=area, reverse=True)
    for index in by_area:
        x0, y0, x1, y1 = plan.objects[index].box
        if rng.random() < 0.6:
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=index + 1)
        else:
            w, h = x1 - x0, y1 - y0
            jitter = rng.uniform(0.0, 0.25, size=4)
            draw.polygon(
                [
                    (x0 + jitter[0] * w, y0),
                    (x1 - 1, y0 + jitter[1] * h),
                    (x1 - 1 - jitter[2] * w, y1 - 1),
                    (x0, y1 - 1 - jitter[3] * h),
                ],
                fill=index + 1,
            )
    return np.asarray(canvas)


def _pixels(
    plan: _ImagePlan, objects: np.ndarray, rng: np.random.Generator, noise: np.ndarray
) -> np.ndarray:
    """uint8 [H, W, 3]: a shaded background, each object in its class's colour, and noise
    (a random crop of the tree's ``noise`` tile, int16 [512, 512, 3]: fresh noise per image
    would cost more than the JPEG encoding)."""
    h, w = plan.height, plan.width
    start, end = rng.integers(30, 226, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[:, None]
    shade = np.linspace(0.85, 1.0, h, dtype=np.float32)[:, None, None]
    background = ((start + (end - start) * ramp)[None] * shade).astype(np.int16)
    colours = np.empty((len(plan.objects) + 1, 3), dtype=np.int16)
    colours[0] = 0
    for index, obj in enumerate(plan.objects):
        # The class's palette colour, lifted off black, with a per-object tint.
        tint = rng.integers(-20, 21, size=3)
        colours[index + 1] = (0.6 * _PALETTE_RGB[obj.cls + 1] + 60 + tint).astype(np.int16)
    # np.take: indexing with a uint8 array is ~10x slower than take's path.
    image = np.where(objects[..., None] > 0, np.take(colours, objects, axis=0), background)
    y, x = int(rng.integers(0, 513 - h)), int(rng.integers(0, 513 - w))
    image += noise[y : y + h, x : x + w]
    return np.clip(image, 0, 255).astype(np.uint8)


def _spread(values: np.ndarray, reduce: np.ufunc, radius: int) -> np.ndarray:
    """``reduce`` (max or min) over the (2 radius + 1)^2 window of each pixel, separably,
    the border replicated: uint8 [H, W] -> uint8 [H, W]."""
    h, w = values.shape
    padded = np.pad(values, radius, mode="edge")
    rows = padded[:, :w].copy()
    for k in range(1, 2 * radius + 1):
        reduce(rows, padded[:, k : k + w], out=rows)
    out = rows[:h].copy()
    for k in range(1, 2 * radius + 1):
        reduce(out, rows[k : k + h], out=out)
    return out


def _class_map(plan: _ImagePlan, objects: np.ndarray) -> np.ndarray:
    """uint8 [H, W] palette indices: class + 1 per object pixel, 0 background, 255 outlines."""
    lookup = np.zeros(256, dtype=np.uint8)
    for index, obj in enumerate(plan.objects):
        lookup[index + 1] = obj.cls + 1
    classes = np.take(lookup, objects)
    # Outlines are where the object changes within the window (object/background and
    # object/object alike), as VOC marks each object's boundary void.
    radius = _VOID_WINDOW // 2
    highest = _spread(objects, np.maximum, radius)
    lowest = _spread(objects, np.minimum, radius)
    return np.where(highest != lowest, np.uint8(_VOID), classes)


def _write_image(voc: Path, plan: _ImagePlan, rng: np.random.Generator, noise: np.ndarray) -> None:
    objects = _object_map(plan, rng)
    pixels = _pixels(plan, objects, rng, noise)
    Image.fromarray(pixels, mode="RGB").save(
        voc / "JPEGImages" / f"{plan.image_id}.jpg", format="JPEG", quality=plan.quality
    )
    (voc / "Annotations" / f"{plan.image_id}.xml").write_text(_annotation(plan))
    if plan.segmented:
        png = Image.fromarray(_class_map(plan, objects), mode="P")
        png.putpalette(_PALETTE)
        png.save(voc / "SegmentationClass" / f"{plan.image_id}.png", format="PNG")


def _write_list(path: Path, ids: list[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def _class_label(plan: _ImagePlan, cls: int) -> int:
    """VOC's per-class list entry: 1 present, 0 only difficult, -1 absent."""
    kinds = {o.difficult for o in plan.objects if o.cls == cls}
    if False in kinds:
        return 1
    return 0 if kinds else -1


def write_voc_tree(
    root: Path,
    *,
    train: int = 80,
    val: int = 80,
    segmented_train: int = 20,
    segmented_val: int = 40,
    seed: int = 0,
) -> Path:
    """Write a generated VOC 2012 tree under ``root`` (see the module docstring).

    Args:
        root: folder to create the tree in (created if missing); it will hold ``VOCdevkit/``.
        train, val: images in ``ImageSets/Main/train.txt`` and ``val.txt`` (disjoint).
        segmented_train, segmented_val: how many of those have a ``SegmentationClass`` mask
            and are listed in ``ImageSets/Segmentation/train.txt`` / ``val.txt``
            (``seg_val`` of :class:`~trainables.data.voc.VOCMultiLabel`).
        seed: the same seed writes the same files, byte for byte.

    Returns:
        ``root``, the folder to pass to :class:`~trainables.data.voc.VOCMultiLabel`.

    Raises:
        ValueError: a size below 20 (every split holds all 20 classes), a segmented count
            above its split's, or a negative seed.
    """
    _check_sizes(train, val, segmented_train, segmented_val, seed)
    rng = np.random.default_rng(seed)
    ids = _ids(train + val, rng)
    membership = rng.permutation(len(ids))
    train_ids = sorted(ids[i] for i in membership[:train])
    val_ids = sorted(ids[i] for i in membership[train:])
    seg_train = set(rng.choice(train_ids, size=segmented_train, replace=False).tolist())
    seg_val = set(rng.choice(val_ids, size=segmented_val, replace=False).tolist())
    plans = _plan_split(train_ids, seg_train, rng) + _plan_split(val_ids, seg_val, rng)

    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for folder in (
        "JPEGImages",
        "Annotations",
        "SegmentationClass",
        "ImageSets/Main",
        "ImageSets/Segmentation",
    ):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-10, 11, size=(512, 512, 3), dtype=np.int16)
    for plan in plans:
        _write_image(voc, plan, rng, noise)

    trainval = sorted(train_ids + val_ids)
    lists = {
        "train": (train_ids, sorted(seg_train)),
        "val": (val_ids, sorted(seg_val)),
        "trainval": (trainval, sorted(seg_train | seg_val)),
    }
    by_id = {plan.image_id: plan for plan in plans}
    for split, (main_ids, seg_ids) in lists.items():
        _write_list(voc / "ImageSets" / "Main" / f"{split}.txt", main_ids)
        _write_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt", seg_ids)
        for cls, name in enumerate(VOC_CLASSES):
            (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(
                "".join(f"{i} {_class_label(by_id[i], cls):2d}\n" for i in main_ids)
            )
    return Path(root)
