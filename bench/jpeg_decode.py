"""Throughput of JPEG decoding for the VOC loader: PIL against torchvision.io, side by side.

Run ``python -m bench.jpeg_decode [--images 300] [--size 224] [--repeats 3] [--threads 1]``.

It writes a generated VOC 2012 tree (:func:`trainables.data.voc_tree.write_voc_tree`: VOC's
image sizes, JPEG quality 75-95) into a temporary folder and times, over all its JPEGs, in
interleaved rounds (PIL, then torchvision, per stage, so drift hits both alike):

* ``decode``: ``Image.open`` + ``convert("RGB")`` + a uint8 tensor [3, H, W]
  (:func:`trainables.data.decode.read_image_pil`, what the loaders did before) against
  ``torchvision.io.read_file`` + ``decode_jpeg`` (:func:`~trainables.data.decode.read_image`);
* ``decode_eval``: the same plus the evaluation transform (resize to ``size``, scale,
  normalise; :class:`~trainables.data.transforms.ImageMaskTransform`);
* ``decode_train``: the same plus the training transform (random resized crop + flip);
* ``dataset_val``: ``VOCMultiLabel(root, "val", size)[i]`` for every image, XML labels
  included, with its decoder set to each in turn.

``--threads`` sets torch's threads (default 1: what a DataLoader worker runs with), so the
figures are per loader worker; a GPU is fed by several. It also compares the two decoders'
outputs (max abs difference of the uint8 pixels, and of the normalised evaluation tensors)
and prints one JSON object per line, each with the command and the date; the last line is the
summary. Exit status 1 if the decoded pixels differ by more than ``TOLERANCE`` grey levels.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import torch

from bench._common import emit, environment, median, time_interleaved
from trainables.data.decode import read_image, read_image_pil
from trainables.data.transforms import ImageMaskTransform
from trainables.data.voc import VOCMultiLabel
from trainables.data.voc_tree import write_voc_tree

BENCH = "jpeg_decode"
#: Grey levels two libjpeg builds may differ by (the same build gives 0).
TOLERANCE = 2
DECODERS: dict[str, Callable[[Path], torch.Tensor]] = {
    "pil": read_image_pil,
    "torchvision": read_image,
}


Decoder = Callable[[Path], torch.Tensor]


def _decoding(decoder: Decoder, paths: Sequence[Path]) -> Callable[[], object]:
    return lambda: [decoder(p) for p in paths]


def _transforming(
    decoder: Decoder, paths: Sequence[Path], transform: ImageMaskTransform
) -> Callable[[], object]:
    return lambda: [transform(decoder(p))[0] for p in paths]


def _loading(decoder: Decoder, dataset: VOCMultiLabel) -> Callable[[], object]:
    def run() -> object:
        # The loader's decoder, swapped for this case only.
        with mock.patch("trainables.data.voc.read_image", decoder):
            return [dataset[i]["image"] for i in range(len(dataset))]

    return run


def _cases(paths: Sequence[Path], size: int, root: Path) -> dict[str, Callable[[], object]]:
    """``<stage>/<decoder>`` -> a no-argument call that runs the stage over every image."""
    evaluation = ImageMaskTransform(size, train=False)
    training = ImageMaskTransform(size, train=True)
    dataset = VOCMultiLabel(root, "val", size)
    cases: dict[str, Callable[[], object]] = {}
    for name, decoder in DECODERS.items():
        cases[f"decode/{name}"] = _decoding(decoder, paths)
        cases[f"decode_eval/{name}"] = _transforming(decoder, paths, evaluation)
        cases[f"decode_train/{name}"] = _transforming(decoder, paths, training)
        cases[f"dataset_val/{name}"] = _loading(decoder, dataset)
    # Interleave PIL and torchvision within each stage.
    return dict(sorted(cases.items(), key=lambda item: _STAGES.index(item[0].split("/")[0])))


_STAGES = ("decode", "decode_eval", "decode_train", "dataset_val")


def _differences(paths: Sequence[Path], size: int) -> dict[str, float]:
    """Max abs difference of the two decoders' pixels and of their evaluation tensors."""
    transform = ImageMaskTransform(size, train=False)
    pixels = normalised = 0.0
    for path in paths:
        a, b = read_image_pil(path), read_image(path)
        pixels = max(pixels, float((a.int() - b.int()).abs().max()))
        ta, tb = transform(a)[0], transform(b)[0]
        normalised = max(normalised, float((ta - tb).abs().max()))
    return {"max_abs_diff_uint8": pixels, "max_abs_diff_normalised": normalised}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=300, help="JPEGs in the generated tree")
    parser.add_argument("--size", type=int, default=224, help="transform output side, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 40 or args.size < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--images must be >= 40; --size, --repeats and --threads >= 1")
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m bench.jpeg_decode", *map(shlex.quote, given)])
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    torch.set_num_threads(args.threads)

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apc-jpeg-")))
        half = args.images // 2
        write_voc_tree(
            root,
            train=args.images - half,
            val=half,
            segmented_train=20,
            segmented_val=20,
            seed=args.seed,
        )
        paths = sorted((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
        val_count = len(VOCMultiLabel(root, "val", args.size))
        cases = _cases(paths, args.size, root)
        load_before = os.getloadavg()[0]
        times = time_interleaved(cases, rounds=args.repeats, warmup=1)
        load_after = os.getloadavg()[0]
        differences = _differences(paths, args.size)

    env = environment("cpu")
    common = {"command": command, "date": date, "size": args.size}
    rates: dict[str, float] = {}
    for name, values in times.items():
        stage, decoder = name.split("/")
        count = val_count if stage == "dataset_val" else len(paths)
        seconds = median(values)
        rates[name] = count / seconds
        emit(
            {
                "bench": BENCH,
                "stage": stage,
                "impl": decoder,
                "images_per_s": round(rates[name], 1),
                "ms_per_image": round(1e3 * seconds / count, 3),
                "images": count,
                "runs": [round(t, 4) for t in values],
                **common,
                **env,
            }
        )
    stages = dict.fromkeys(name.split("/")[0] for name in times)
    summary = {
        "bench": BENCH,
        "summary": True,
        "speedup": {s: round(rates[f"{s}/torchvision"] / rates[f"{s}/pil"], 3) for s in stages},
        **differences,
        "tolerance_uint8": TOLERANCE,
        "loadavg_1m_before_after": [round(load_before, 2), round(load_after, 2)],
        **common,
        **env,
    }
    emit(summary)
    return 0 if differences["max_abs_diff_uint8"] <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
