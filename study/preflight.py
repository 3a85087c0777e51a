"""Checks of a validated spec against the world, before a study writes or starts anything.

:func:`preflight` answers "can this study start here?" with one message per problem, in the
spec's style (``tracking_uri: must be reachable, got 'http://127.0.0.1:1' (...)``):

- the MLflow tracking store: a server answers on its port (probed with a short timeout, not
  MLflow's minutes of retries), an SQLite file lies in an existing, writable folder and is an
  SQLite database, a file store's folder can be created;
- the Ray cluster of ``ray_address``: its port answers (``auto``, ``local`` and none mean a
  local or discovered cluster and are not probed);
- the storage folder (``storage_path``) can be created and written;
- the data set: each split the study reads can be opened; for VOC every id its split file
  lists has its image, annotation (and mask) file; the first sample of each split decodes.
  Reading every image would take minutes on real VOC, so a corrupt image further on is only
  found when a trial reads it;
- ``dataset.root`` is an existing folder, ``teacher.checkpoint`` an existing file holding a
  state dict that ``torch.load(weights_only=True)`` reads (so one that carries code is refused
  and never run) with exactly the teacher's parameters (names and shapes);
- the generated data's option values (``context_prob: 2``), found by building it;
- ``teacher.pretrained``: torchvision's ImageNet weights are in the torch hub cache
  (:func:`trainables.models.imagenet_weights_file`), or their download host answers.

The last four (:func:`input_problems`) are the files the spec names, and `apc validate` asks
them too. They need no network but in one case: pretrained weights the cache lacks, where one
probe of the download host (at most ``PROBE_TIMEOUT_S``) tells a run that will download them
from one that would fail in the teacher stage, after its MLflow runs were written. It is in
:func:`input_problems` rather than :func:`preflight` alone because the weights are a file the
spec needs, like a checkpoint, and `apc validate` should answer for them; a spec without
``pretrained: true``, or with the file in place, is never delayed. Nothing else of the file is
checked here: loading it checks its SHA-256. It writes nothing and starts nothing: `apc run`
calls :func:`preflight` after the spec validates (:func:`study.spec.parse_spec`, schema and
values only) and before MLflow, Ray or the disk are touched.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from study.spec import Spec
from trainables.data.descriptors import dataset_descriptor

__all__ = ["PROBE_TIMEOUT_S", "WEIGHTS_HOST", "input_problems", "preflight", "tracking_problems"]

#: Seconds a probe of the tracking server, the Ray cluster or the weights' host waits.
PROBE_TIMEOUT_S: Final = 2.0
#: Host and port torchvision's ImageNet weights download from (every weights url names it),
#: probed when ``teacher.pretrained`` needs a file the torch hub cache lacks.
WEIGHTS_HOST: Final[tuple[str, int]] = ("download.pytorch.org", 443)
#: Ports of tracking URI schemes that name a server, when the URI gives none.
_SERVER_PORTS: Final[dict[str, int]] = {
    "http": 80,
    "https": 443,
    "postgresql": 5432,
    "postgres": 5432,
    "mysql": 3306,
    "mssql": 1433,
}
_RAY_GCS_PORT: Final = 6379
_RAY_CLIENT_PORT: Final = 10001
_SQLITE_HEADER: Final = b"SQLite format 3\x00"


def preflight(spec: Spec, *, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Every problem that would stop ``spec``'s study after it started; empty when none.

    Args:
        spec: a validated spec (:func:`study.spec.parse_spec`).
        timeout_s: how long each network probe waits for an answer.

    Returns:
        One message per problem, ``"<key>: <rule>, got <value> (<detail>)"``.
    """
    problems = [
        *tracking_problems(spec.tracking_uri, timeout_s),
        *_ray_problems(spec.ray_address, timeout_s),
        *_storage_problems(spec.storage_path),
        *input_problems(spec, timeout_s=timeout_s),
    ]
    return list(dict.fromkeys(problems))


def input_problems(spec: Spec, *, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Every problem of the files and data ``spec`` names.

    First whether the named paths exist, the checkpoint is a weights-only state dict and the
    generated data's options hold; when they do, whether the data's splits open (and their
    first samples decode) and the checkpoint fits the teacher. Last, for ``teacher.pretrained``,
    whether the ImageNet weights are cached or can be downloaded: the one network question,
    asked only when the file is missing (one probe of ``timeout_s``, see the module's doc).
    """
    problems = [*_path_problems(spec), *_generated_data_problems(spec)]
    if not problems:  # the data and the checkpoint's fit are asked of sound paths only
        data_problems, num_classes = _data_problems(spec)
        problems.extend(data_problems)
        if spec.teacher.checkpoint is not None and num_classes is not None:
            problems.extend(_checkpoint_fit(spec, num_classes))
    problems.extend(_pretrained_problems(spec, timeout_s))
    return list(dict.fromkeys(problems))


# -- the spec's paths -----------------------------------------------------------------------


def _path_problems(spec: Spec) -> list[str]:
    """``dataset.root`` names a folder, ``teacher.checkpoint`` a readable state dict."""
    problems = []
    for key, value, kind in (
        ("dataset.root", spec.dataset.root, "folder"),
        ("teacher.checkpoint", spec.teacher.checkpoint, "file"),
    ):
        if value is None:
            continue
        path = Path(value)
        try:
            found = path.is_dir() if kind == "folder" else path.is_file()
        except (OSError, ValueError):  # a name too long for the file system names nothing
            found = False
        shown = spec.given_paths.get(key, value)
        if not found:
            problems.append(f"{key}: must be an existing {kind}, got {shown!r} (no {kind} {path})")
        elif key == "teacher.checkpoint":
            problems.extend(_checkpoint_problems(path, shown))
    return problems


_CHECKPOINT_RULE: Final = (
    "teacher.checkpoint: must be a PyTorch state dict (parameter names -> tensors) saved with "
    "torch.save"
)


def _checkpoint_problems(file: Path, shown: str) -> list[str]:
    """Why ``file`` is no state dict that ``torch.load(weights_only=True)`` reads.

    The weights-only unpickler refuses every global other than tensors and plain containers
    before calling it, so a checkpoint that carries code is refused and never run.
    """
    import pickle

    import torch

    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        text = str(error)
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if code:
            return [
                f"{_CHECKPOINT_RULE}, got {shown!r} (it calls {code.group(1)}: a pickle that "
                "may run code, refused by torch.load(weights_only=True) and not loaded)"
            ]
        found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)", text, re.S)
        detail = " ".join((found.group(1) if found else text).split())
        return [f"{_CHECKPOINT_RULE}, got {shown!r} (unreadable: {detail})"]
    except Exception as error:  # zip, EOF, OS errors alike: the file cannot be read
        detail = " ".join(str(error).split()) or "empty or truncated file"
        return [f"{_CHECKPOINT_RULE}, got {shown!r} (unreadable: {detail})"]
    if not isinstance(state, Mapping):
        return [f"{_CHECKPOINT_RULE}, got {shown!r} (it holds a {type(state).__name__})"]
    others = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others or not state:
        held = f"keys {', '.join(others[:4])}" if others else "nothing"
        hint = "; save model.state_dict() alone" if others else ""
        return [f"{_CHECKPOINT_RULE}, got {shown!r} (it holds a mapping with {held}{hint})"]
    return []


# -- services -------------------------------------------------------------------------------


def _probe(host: str, port: int, timeout_s: float) -> str | None:
    """Why nothing answers on ``host:port`` (a TCP connect), or None when something does."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.gaierror:
        return f"unknown host {host!r}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as error:
        return f"{host}:{port}: {(error.strerror or str(error)).lower()}"


def tracking_problems(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Why the MLflow store ``uri`` cannot be used (a server probed for ``timeout_s``)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().partition("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme == "sqlite":
        return _sqlite_problems(uri)
    if scheme in _SERVER_PORTS:
        try:
            host, port = parts.hostname, parts.port or _SERVER_PORTS[scheme]
        except ValueError:
            return [f"tracking_uri: must give its port as a number, got {uri!r}"]
        if not host:
            return [f"tracking_uri: must name a host, got {uri!r}"]
        reason = _probe(host, port, timeout_s)
        if reason is None:
            return []
        return [f"tracking_uri: must be reachable, got {uri!r} ({reason})"]
    if scheme in ("", "file"):  # MLflow's file store: a folder it creates
        folder = Path(parts.path if scheme == "file" else uri).expanduser()
        reason = _folder_problem(folder)
        return [] if reason is None else [f"tracking_uri: {reason}, got {uri!r}"]
    return []  # databricks, plugins: nothing cheap to ask


def _sqlite_problems(uri: str) -> list[str]:
    _, sep, rest = uri.partition(":///")
    text = rest.partition("?")[0]
    if not sep or not text or text == ":memory:":
        return []
    file = Path(text)
    rule = "tracking_uri: must name an SQLite file in an existing, writable folder"
    if not file.parent.is_dir():
        return [f"{rule}, got {uri!r} (no folder {file.parent})"]
    if file.is_dir():
        return [f"{rule}, got {uri!r} ({file} is a folder)"]
    if file.exists():
        try:
            with file.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as error:
            return [f"{rule}, got {uri!r} (cannot read {file}: {error.strerror})"]
        if header and header != _SQLITE_HEADER:
            return [f"{rule}, got {uri!r} ({file} is not an SQLite database)"]
        if not os.access(file, os.R_OK | os.W_OK):
            return [f"{rule}, got {uri!r} ({file} is not writable)"]
    elif not os.access(file.parent, os.W_OK | os.X_OK):
        return [f"{rule}, got {uri!r} (folder {file.parent} is not writable)"]
    return []


def _ray_problems(address: str | None, timeout_s: float) -> list[str]:
    if address is None or address in ("auto", "local"):
        return []
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        return []  # a scheme of a Ray plugin: nothing cheap to ask
    default = _RAY_CLIENT_PORT if sep else _RAY_GCS_PORT
    parts = urlsplit("//" + (rest if sep else address))
    try:
        host, port = parts.hostname, parts.port or default
    except ValueError:
        return [f"ray_address: must be host:port, ray://host:port or auto, got {address!r}"]
    if not host:
        return [f"ray_address: must be host:port, ray://host:port or auto, got {address!r}"]
    reason = _probe(host, port, timeout_s)
    if reason is None:
        return []
    return [f"ray_address: must be a running Ray cluster's address, got {address!r} ({reason})"]


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be used or created as a folder to write in, or None."""
    folder = folder.absolute()
    if folder.exists():
        if not folder.is_dir():
            return f"must be a folder, not a file ({folder})"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"must be a writable folder ({folder} is not writable)"
        return None
    ancestor = next(p for p in folder.parents if p.exists())
    if not ancestor.is_dir():
        return f"must be a folder that can be created ({ancestor} is a file)"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"must be a folder that can be created ({ancestor} is not writable)"
    return None


def _storage_problems(storage_path: str) -> list[str]:
    if "://" in storage_path:
        return []  # cloud storage (s3://, gs://...): Tune reports it
    reason = _folder_problem(Path(storage_path).expanduser())
    return [] if reason is None else [f"storage_path: {reason}, got {storage_path!r}"]


# -- data -----------------------------------------------------------------------------------


def _generated_data_problems(spec: Spec) -> list[str]:
    """Value problems of the generated shapes data's options, found by building it.

    Building a ``ShapesDataset`` checks every option and draws nothing, so a value it would
    refuse mid-study (``context_prob: 2``, ``image_size: 16``) is reported before it starts.
    Unknown option names are the spec's to report; they are skipped here.
    """
    dataset, teacher = spec.dataset, spec.teacher
    descriptor = dataset_descriptor(dataset.name)
    if not descriptor.generated:
        return []  # not generated: its files are checked below
    from trainables.data.registry import dataset_factory, dataset_options

    accepted = set(dataset_options(dataset.name))
    factory = dataset_factory(dataset.name)

    def problem(path: str, options: Mapping[str, Any]) -> str | None:
        known = {k: v for k, v in options.items() if k in accepted}
        try:
            factory(split=descriptor.eval_split, size=1, image_size=dataset.image_size, **known)
        except (TypeError, ValueError) as error:
            message = str(error)
            return f"{'dataset' if message.startswith('image_size') else path}.{message}"
        return None

    found = [problem("dataset.options", dataset.options)]
    if teacher.dataset_options:
        found.append(problem("teacher.dataset_options", teacher.dataset_options))
        if not any(found):  # each valid alone; the teacher's over the study's may still clash
            merged = {**dataset.options, **teacher.dataset_options}
            found.append(problem("teacher.dataset_options", merged))
    return [p for p in dict.fromkeys(found) if p is not None]


def _data_problems(spec: Spec) -> tuple[list[str], int | None]:
    """Problems of the splits the study reads, and its number of classes (None if unknown)."""
    from study.plan import teacher_dataset_options, trial_setup
    from trainables.trial import build_split

    setup = trial_setup(spec, num_classes=1)
    if dataset_descriptor(spec.dataset.name).generated:  # its options: checked before
        try:
            return [], build_split(setup, setup.eval_split, 1).num_classes
        except (TypeError, ValueError):
            return [], None
    splits = [
        ("train", setup.dataset_options, "dataset.options", spec.dataset.options),
        (setup.eval_split, setup.dataset_options, "dataset.options", spec.dataset.options),
    ]
    if spec.teacher.dataset_options:
        teacher_options = {**setup.dataset_options, **teacher_dataset_options(spec)}
        splits.append(
            ("train", teacher_options, "teacher.dataset_options", spec.teacher.dataset_options)
        )
    problems: list[str] = []
    built: dict[str, Any] = {}
    for split, options, path, given in splits:
        try:
            dataset = build_split(replace(setup, dataset_options=options), split, None)
        except Exception as error:  # any failure to open the data is the user's data
            problems.append(_open_problem(spec, error, path, given))
            continue
        built.setdefault(split, dataset)
        problems.extend(_file_problems(spec, split, dataset))
    train, evaluation = built.get("train"), built.get(setup.eval_split)
    problems.extend(_class_problems(spec, train, evaluation))
    return problems, None if evaluation is None else int(evaluation.num_classes)


def _open_problem(spec: Spec, error: Exception, path: str, given: Mapping[str, Any]) -> str:
    """The problem a data set's constructor raised, under the key it is about."""
    message = " ".join(str(error).split()) or type(error).__name__
    name = message.partition(":")[0]
    if isinstance(error, ValueError | TypeError):
        if name == "image_size":
            return f"dataset.{message}"
        if name in given:
            return f"{path}.{message}"
    if isinstance(error, FileNotFoundError) and message.startswith("mask folder"):
        mask_root = given.get("mask_root")
        return f"{path}.mask_root: must hold a folder per split, got {mask_root!r} ({message})"
    root = spec.dataset.root
    return f"dataset.root: must hold the {spec.dataset.name} data set, got {root!r} ({message})"


def _file_problems(spec: Spec, split: str, dataset: Any) -> list[str]:
    """Files a VOC split lists but lacks, and whether the split's first sample decodes."""
    from trainables.data.imagefolder import ImageFolderData
    from trainables.data.voc import VOCMultiLabel

    root = spec.dataset.root
    problems: list[str] = []
    first: Path | None = None
    if isinstance(dataset, VOCMultiLabel):
        listed = "ImageSets/" + ("Segmentation/val" if split == "seg_val" else f"Main/{split}")
        needed = [("JPEGImages", ".jpg"), ("Annotations", ".xml")]
        if dataset.has_masks:
            needed.append(("SegmentationClass", ".png"))
        for folder, suffix in needed:
            try:
                present = set(os.listdir(dataset.voc_dir / folder))
            except OSError as error:
                problems.append(
                    f"dataset.root: must hold a readable {folder} folder, got "
                    f"{root!r} ({error.strerror})"
                )
                continue
            missing = [i for i in dataset.ids if f"{i}{suffix}" not in present]
            if missing:
                problems.append(
                    f"dataset.root: must hold every file its split lists, got {root!r} "
                    f"({len(missing)} of {len(dataset.ids)} ids listed in {listed}.txt lack "
                    f"{folder}/<id>{suffix}, e.g. {missing[0]})"
                )
        first = dataset.voc_dir / "JPEGImages" / f"{dataset.ids[0]}.jpg"
    elif isinstance(dataset, ImageFolderData):
        first = dataset.samples[0][0]
    if problems or len(dataset) == 0:
        return problems
    try:
        dataset[0]
    except Exception as error:  # a broken file: PIL, XML or shape errors alike
        message = " ".join(str(error).split()) or type(error).__name__
        if first is not None and str(root) not in message:  # name the file when it does not
            message = f"{first}: {message}"
        problems.append(
            f"dataset.root: must hold readable samples, got {root!r} "
            f"(the first sample of a split: {message})"
        )
    return problems


def _class_problems(spec: Spec, train: Any, evaluation: Any) -> list[str]:
    """Image folders whose splits name different classes (labels would not agree)."""
    if train is None or evaluation is None or "classes" in spec.dataset.options:
        return []
    if not dataset_descriptor(spec.dataset.name).class_folders:
        return []
    if list(train.classes) == list(evaluation.classes):
        return []
    return [
        "dataset.options.classes: is required when the splits' class folders differ, got "
        f"train {list(train.classes)} and {evaluation.split} {list(evaluation.classes)}"
    ]


# -- teacher --------------------------------------------------------------------------------


def _checkpoint_fit(spec: Spec, num_classes: int) -> list[str]:
    """Whether the checkpoint's parameter names and shapes are exactly the teacher's."""
    import torch

    from trainables.models import build_model

    checkpoint = spec.teacher.checkpoint
    assert checkpoint is not None
    try:
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = build_model(
                spec.teacher.arch,
                num_classes=num_classes,
                image_size=spec.dataset.image_size,
                width_divisor=spec.teacher.width,
            )
    except Exception:  # unreadable: the spec's validation reports it
        return []
    if not isinstance(state, Mapping):
        return []
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {str(k): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    reshaped = [k for k in expected if k in got and got[k] != expected[k]]
    details = []
    if missing:
        details.append(f"{len(missing)} missing, e.g. {missing[0]!r}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    if reshaped:
        key = reshaped[0]
        details.append(
            f"{len(reshaped)} of another shape, e.g. {key!r} {list(got[key])} where "
            f"{list(expected[key])} is expected"
        )
    if not details:
        return []
    return [
        f"teacher.checkpoint: must hold the parameters of teacher.arch {spec.teacher.arch} at "
        f"teacher.width {spec.teacher.width} with {num_classes} classes, got {checkpoint!r} "
        f"({'; '.join(details)})"
    ]


def _pretrained_problems(spec: Spec, timeout_s: float) -> list[str]:
    """Whether ``teacher.pretrained``'s ImageNet weights are cached or their host answers."""
    if not spec.teacher.pretrained or spec.teacher.checkpoint is not None:
        # A checkpoint replaces the ImageNet weights: the teacher stage never reads them then.
        return []
    from trainables.models import imagenet_weights_file

    weights = imagenet_weights_file(spec.teacher.arch)
    if weights.path.is_file():
        return []  # loading it checks its SHA-256 against its name
    host, port, via = _download_route(*WEIGHTS_HOST)
    reason = _probe(host, port, timeout_s)
    if reason is None:
        return []  # the teacher stage downloads it
    return [
        f"teacher.pretrained: needs torchvision's ImageNet weights for {spec.teacher.arch}, got "
        f"no file {weights.path} (offline: {via}{reason}; {weights.offline_hint})"
    ]


def _download_route(host: str, port: int) -> tuple[str, int, str]:
    """Where a download from ``host`` connects first, and ``"proxy "`` when that is a proxy.

    torch.hub downloads through urllib, which goes through ``https_proxy`` (unless
    ``no_proxy`` names the host); probing the host itself there would call a proxied
    cluster offline.
    """
    import urllib.request

    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return host, port, ""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a proxy port that is no number: nothing better to ask than the host
        return host, port, ""
    return parts.hostname or host, proxy_port, "proxy "
