"""Study specs: YAML in, typed :class:`Spec` out, every problem reported at once.

A spec opens with the command that runs it, e.g. ``# apc run study/presets/demo.yaml``.
Validation collects one message per problem, each naming the key path, the rule and the value
(``dataset.image_size: must be an integer in [7, 4096], got -3``); unknown keys are reported
with the nearest valid name. Nothing is written or started before a spec validates.

Beyond the YAML's shape: a key given twice is refused (YAML would keep the last silently), as
is a spec over 1 MiB or one that its aliases expand past bounds
(:mod:`search_spaces.bounded_yaml`); every number is finite and within documented bounds
(``MAX_*``, ``SEED_LIMIT``); a search space may name only parameters its method's trainable
reads, within the values it accepts (``drop_p`` in [0, 1), ``prune_rate`` in (0, 1)...), as
may enqueued settings; paths follow one rule (:data:`PATH_RULE`: from the spec's folder, ``~``
expanded) and are kept absolute.

:func:`parse_spec` checks the schema and the values only: it reads the spec's own text and the
search-space file the spec names (part of that text, as an include), and nothing else. It opens
no data set, loads no checkpoint, asks no service and does not ask whether a path exists. All
of that is :mod:`study.preflight`'s: :func:`study.preflight.input_problems` for the files a
spec names (`apc validate` asks it too), :func:`study.preflight.preflight` for those and the
services.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

# The objectives of a spec that names none: the layout's (what a reader assumes then too).
from analysis.layout import DEFAULT_OBJECTIVES
from search_spaces import (
    SearchSpace,
    is_builtin_reference,
    load_search_space,
    nearest_name,
    resolve_path,
)
from search_spaces.bounded_yaml import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    BoundedYamlError,
    load_bounded_yaml,
    read_bounded_yaml,
)
from study.samplers import DEFAULT_SAMPLER, SAMPLERS
from trainables.data.descriptors import DATASETS
from trainables.data.registry import DATASET_NAMES
from trainables.loop import Optimization
from trainables.metric_names import (
    ATTRIBUTION_METHOD_NAMES,
    ATTRIBUTION_METRICS,
    METRICS,
    method_metric,
    valid_metrics_text,
)
from trainables.precision import PRECISIONS, AcceleratorOptions
from trainables.registry import METHODS as REGISTERED_METHODS
from trainables.registry import check_method_options, trainable_names

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_CONCURRENT",
    "MAX_DATASET_SIZE",
    "MAX_EPOCHS",
    "MAX_GRAD_CLIP",
    "MAX_IMAGE_SIZE",
    "MAX_NUM_WORKERS",
    "MAX_OVERLAY_IMAGES",
    "MAX_RESOURCES",
    "MAX_TRIALS",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "METHODS",
    "PATH_KEYS",
    "PATH_RULE",
    "SAMPLERS",
    "SEED_LIMIT",
    "DatasetSpec",
    "EvaluationSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "Spec",
    "SpecError",
    "TeacherSpec",
    "TrainingSpec",
    "absolute_paths",
    "apply_overrides",
    "load_spec",
    "parse_spec",
    "read_spec_text",
    "resolve_path",
]

#: Compression methods a spec may name: those with a trainable in trainables.registry.
METHODS: Final[tuple[str, ...]] = trainable_names()
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # whole names: fullmatch

# -- bounds: a spec's numbers, far above what a 1,000-GPU cluster runs yet finite, so that a
# typo (`epochs: 1e9`, `cpu: .inf`) is refused before anything starts. Every float is finite.

#: ``seed`` lies in [0, SEED_LIMIT): what Optuna's and NumPy's generators take.
SEED_LIMIT: Final = 2**32
#: ``trials``: at most.
MAX_TRIALS: Final = 100_000
#: ``max_concurrent``: at most (a trial a GPU on a 1,000-GPU cluster, ten per GPU with gpu: 0.1).
MAX_CONCURRENT: Final = 10_000
#: ``epochs``, ``teacher.epochs`` and ``scheduler.grace_period``: at most.
MAX_EPOCHS: Final = 10_000
#: ``dataset.image_size``: at most (pixels a side).
MAX_IMAGE_SIZE: Final = 4096
#: ``dataset.train_size`` and ``dataset.val_size`` (generated shapes): at most.
MAX_DATASET_SIZE: Final = 10_000_000
#: ``training.batch_size``: at most.
MAX_BATCH_SIZE: Final = 65_536
#: ``training.grad_clip``: at most (0 turns clipping off; larger is no bound in practice).
MAX_GRAD_CLIP: Final = 1e6
#: ``training.num_workers``: at most (data loader processes a trial).
MAX_NUM_WORKERS: Final = 256
#: ``evaluation.overlay_images``: at most.
MAX_OVERLAY_IMAGES: Final = 1000
#: ``resources_per_trial.cpu`` and ``.gpu``: at most (a trial's share of one node or more).
MAX_RESOURCES: Final = 1024

#: The keys that hold paths; each follows :data:`PATH_RULE`.
PATH_KEYS: Final[tuple[str, ...]] = (
    "search_space",
    "dataset.root",
    "teacher.checkpoint",
    "storage_path",
    "tracking_uri",
)
#: How a spec's paths are read (``apc validate`` says it; docs/design.md, "Paths").
PATH_RULE: Final = (
    "paths: a relative one is taken from the spec's folder (from the working folder when "
    "given with --set, --storage or --tracking-uri), ~ is expanded, an absolute one is kept; "
    "this holds for search_space files, dataset.root, teacher.checkpoint, storage_path and an "
    "sqlite:/// tracking_uri; a built-in search space is a bare name (distillation), anything "
    "with a '/' or a .yaml ending is a file"
)


#: What str.splitlines() breaks a line at, each written as its escape in a message.
_LINE_BREAKS: Final = str.maketrans(
    {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
)


class SpecError(ValueError):
    """A spec with problems; ``problems`` holds one message per problem.

    Each message is one line: a line break in what it quotes (a key ``"a\\nb"``, a
    library's error text) is written as its escape, so that a CLI prints one line a problem.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = [problem.translate(_LINE_BREAKS) for problem in problems]
        super().__init__("\n".join(self.problems))


def _key(key: object) -> str:
    """A key as a message shows it: a plain name as it is, anything else quoted (``''``,
    ``' x'``, ``'\\t'``, ``1``)."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key:
        return key
    return repr(key)


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "shapes"
    image_size: int = 64
    root: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherSpec:
    arch: str = "vgg11_bn"
    width: int = 4
    checkpoint: str | None = None
    epochs: int = 8
    lr: float = Optimization.lr
    pretrained: bool = False
    dataset_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSpec:
    """``training:``: batch size, loader workers, the optimiser/KD settings and the precision
    and memory layout on the trial's device (the last two flat in YAML).

    ``num_workers``: loader processes per trial, or ``auto`` (from the trial's CPUs,
    :func:`trainables.precision.auto_num_workers`).
    """

    batch_size: int = 64
    num_workers: int | Literal["auto"] = 0
    optimization: Optimization = field(default_factory=Optimization)
    accelerator: AcceleratorOptions = field(default_factory=AcceleratorOptions)


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class SchedulerSpec:
    """``scheduler:``: ``asha`` stops trials on one ``metric`` (Ray's ASHA); ``mo_asha`` on
    every objective (:class:`study.schedulers.MultiObjectiveASHA`), so it takes no ``metric``
    or ``mode`` (they keep their defaults, unused)."""

    name: Literal["asha", "mo_asha"] = "asha"
    metric: str = "map"
    mode: Literal["min", "max"] = "max"
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class EvaluationSpec:
    """``evaluation:``: what a trial measures beyond the per-epoch Grad-CAM metrics.

    ``attribution_methods``: further attribution methods whose metrics (``attr_auc_lrp``...)
    the teacher and each trial's last epoch measure; ``overlay_images``: evaluation images in
    each trial's teacher-vs-student overlay (0: none); ``protocol``: ``apc`` or ``official``
    (:mod:`trainables.evaluation_protocol`: whether difficult objects count, and where
    Grad-CAM is taken).
    """

    attribution_methods: tuple[str, ...] = ()
    overlay_images: int = 8
    protocol: str = "apc"


@dataclass(frozen=True)
class Spec:
    """A validated study spec (see docs/design.md#spec)."""

    name: str
    seed: int = 0
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    method: str = "distillation"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    search_space: SearchSpace = field(default_factory=lambda: SearchSpace(()))
    search_space_ref: str | Mapping[str, Any] = "distillation"
    enqueue: tuple[Mapping[str, Any], ...] = ()
    objectives: Mapping[str, Literal["min", "max"]] = field(
        default_factory=lambda: dict(DEFAULT_OBJECTIVES)
    )
    sampler: str = DEFAULT_SAMPLER
    trials: int = 12
    max_concurrent: int = 2
    epochs: int = 3
    training: TrainingSpec = field(default_factory=TrainingSpec)
    resources_per_trial: ResourcesSpec = field(default_factory=ResourcesSpec)
    scheduler: SchedulerSpec | None = None
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    tracking_uri: str = "sqlite:///mlflow.db"
    storage_path: str = "apc_results"
    ray_address: str | None = None
    #: Register the Pareto-front models in MLflow's model registry when the study ends.
    registry: bool = False
    #: ``dataset.root`` and ``teacher.checkpoint`` as the spec wrote them (key -> text), which
    #: preflight's messages quote; the fields above hold them absolute.
    given_paths: Mapping[str, str] = field(default_factory=dict, compare=False)


# -- checks: each returns None when the value is fine, else the rule ("must be ...") ----------

Check = Callable[[Any], str | None]


def _integer(minimum: int, maximum: int) -> Check:
    rule = f"must be an integer in [{minimum}, {maximum}]"

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return rule
        return None if minimum <= value <= maximum else rule

    return check


def _real(value: object) -> float | None:
    """``value`` as a finite float, or None: no bool, no string, no inf or NaN, no int beyond
    any float (YAML reads ``1e999`` as a string but ``1.0e999`` as inf, and ints of any size)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _number(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number between ``low`` and ``high``; ``high`` inf: no bound but finiteness."""
    if math.isinf(high):
        rule = f"must be a finite number {'>' if low_open else '>='} {low:g}"
    else:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        rule = f"must be a number in {left}{low:g}, {high:g}{right}"

    def check(value: Any) -> str | None:
        number = _real(value)
        if number is None:
            return rule
        if (
            number < low
            or (low_open and number == low)
            or number > high
            or (high_open and number == high)
        ):
            return rule
        return None

    return check


def _choice(choices: tuple[Any, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {list(choices)}"

    return check


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _optional(check: Check) -> Check:
    def inner(value: Any) -> str | None:
        return None if value is None else check(value)

    return inner


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _hint(key: str, valid: Sequence[str] | Mapping[str, Any]) -> str:
    names = list(valid)
    close = nearest_name(key, names)
    return f"did you mean {close!r}?" if close else f"valid: {', '.join(names)}"


class _Section:
    """Reads one mapping of the spec, collecting problems with their key paths."""

    def __init__(self, data: object, path: str, problems: list[str], keys: tuple[str, ...]):
        self.path = path
        self.problems = problems
        self.data: Mapping[str, Any] = {}
        if data is None:
            return
        if not isinstance(data, Mapping):
            problems.append(f"{path}: must be a mapping, got {data!r}")
            return
        self.data = data
        for key in data:
            if key not in keys:
                problems.append(f"{self._at(_key(key))}: unknown key ({_hint(str(key), keys)})")

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any, check: Check) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        reason = check(value)
        if reason:
            self.problems.append(f"{self._at(key)}: {reason}, got {value!r}")
            return default
        return value


def _resolved(key: str, value: str, base_dir: Path, problems: list[str], *, kind: str) -> str:
    """``value`` made absolute by :data:`PATH_RULE` (whether it exists is preflight's to
    ask); ``value`` as given, with the problem reported, when it names no path at all."""
    try:
        return str(resolve_path(value, base_dir=base_dir))
    except ValueError as error:
        problems.append(f"{key}: must be an existing {kind}, got {value!r} ({error})")
        return value


def _output_path(key: str, value: str, base_dir: Path, problems: list[str]) -> str:
    """``storage_path`` or ``tracking_uri`` with its local path made absolute by
    :data:`PATH_RULE`: a folder, or the file of an ``sqlite:///`` URI; other URIs as given."""
    if key == "tracking_uri":
        head, sep, rest = value.partition(":///")
        if head.lower() != "sqlite" or not sep:
            return value  # a server, or MLflow's own forms (databricks...): no local path
        file, query_sep, query = rest.partition("?")
        if not file or file == ":memory:":
            return value
    elif "://" in value:
        return value  # s3://, gs://...: Tune's storage as given
    else:
        file, query_sep, query = value, "", ""
    try:
        absolute = str(resolve_path(file, base_dir=base_dir))
    except ValueError as error:
        problems.append(f"{key}: must name a local path or a URI, got {value!r} ({error})")
        return value
    if key == "tracking_uri":
        return f"sqlite:///{absolute}{query_sep}{query}"
    return absolute


_TOP_KEYS = (
    "name",
    "seed",
    "dataset",
    "teacher",
    "method",
    "method_options",
    "search_space",
    "enqueue",
    "objectives",
    "sampler",
    "trials",
    "max_concurrent",
    "epochs",
    "training",
    "resources_per_trial",
    "scheduler",
    "evaluation",
    "tracking_uri",
    "storage_path",
    "ray_address",
    "registry",
)


def _dataset(data: object, problems: list[str], base_dir: Path) -> DatasetSpec:
    keys = ("name", "image_size", "root", "train_size", "val_size", "options")
    s = _Section(data, "dataset", problems, keys)
    name = s.get("name", "shapes", _choice(DATASET_NAMES))
    descriptor = DATASETS[name]
    image_size = s.get("image_size", descriptor.default_image_size, _integer(7, MAX_IMAGE_SIZE))
    root = s.get("root", None, _optional(_string))
    if descriptor.root_required and root is None and isinstance(s.data, Mapping):
        problems.append(f"dataset.root: is required for {name}, got nothing")
    if not descriptor.root_required and root is not None:
        kind = " (generated)" if descriptor.generated else ""
        problems.append(f"dataset.root: does not apply to {name}{kind}, got {root!r}")
    if root is not None and descriptor.root_required:
        # What the study opens, from any working folder; that it exists: preflight's.
        root = _resolved("dataset.root", root, base_dir, problems, kind="folder")
    train_size = s.get("train_size", None, _optional(_integer(1, MAX_DATASET_SIZE)))
    val_size = s.get("val_size", None, _optional(_integer(1, MAX_DATASET_SIZE)))
    if not descriptor.sized:
        sized = " and ".join(d.name for d in DATASETS.values() if d.sized)
        for key, value in (("train_size", train_size), ("val_size", val_size)):
            if value is not None:
                problems.append(f"dataset.{key}: applies only to {sized}, got {value!r}")
    options = _dataset_options(s, "options", "dataset.options", name, problems)
    return DatasetSpec(name, image_size, root, train_size, val_size, options)


def _dataset_options(
    s: _Section, key: str, path: str, dataset: str, problems: list[str]
) -> dict[str, Any]:
    """A mapping of constructor options of ``dataset`` at ``path``, unknown names reported."""
    options = s.get(key, {}, lambda v: None if isinstance(v, Mapping) else "must be a mapping")
    if not isinstance(options, Mapping):
        return {}
    if options and dataset in DATASET_NAMES:
        from trainables.data.registry import dataset_options

        accepted = set(dataset_options(dataset)) - {"root", "image_size", "size"}
        for name in options:
            if name not in accepted:
                hint = _hint(str(name), sorted(accepted))
                problems.append(f"{path}.{_key(name)}: unknown option of {dataset} ({hint})")
    return dict(options)


def _teacher(data: object, problems: list[str], base_dir: Path, dataset: str) -> TeacherSpec:
    from trainables.models import ARCHITECTURES, WIDTH_DIVISORS

    keys = ("arch", "width", "checkpoint", "epochs", "lr", "pretrained", "dataset_options")
    s = _Section(data, "teacher", problems, keys)
    default = TeacherSpec()
    checkpoint = s.get("checkpoint", None, _optional(_string))
    if checkpoint is not None:  # that it exists and what it holds: preflight's
        checkpoint = _resolved("teacher.checkpoint", checkpoint, base_dir, problems, kind="file")
    if checkpoint is not None and "epochs" in s.data:
        problems.append("teacher: give either checkpoint or epochs, got both")
    width = s.get("width", default.width, _choice(WIDTH_DIVISORS))
    pretrained = s.get("pretrained", default.pretrained, _boolean)
    if pretrained and width != 1:
        problems.append(f"teacher.pretrained: ImageNet weights need width 1, got width {width}")
    return TeacherSpec(
        arch=s.get("arch", default.arch, _choice(tuple(ARCHITECTURES))),
        width=width,
        checkpoint=checkpoint,
        epochs=s.get("epochs", default.epochs, _integer(1, MAX_EPOCHS)),
        lr=s.get("lr", default.lr, _number(0, math.inf, low_open=True)),
        pretrained=pretrained,
        dataset_options=_dataset_options(
            s, "dataset_options", "teacher.dataset_options", dataset, problems
        ),
    )


def _workers(value: Any) -> str | None:
    """``num_workers``: a count, or ``auto`` (sized from the trial's CPUs by the plan)."""
    rule = f"must be an integer in [0, {MAX_NUM_WORKERS}] or 'auto'"
    return None if value == "auto" or _integer(0, MAX_NUM_WORKERS)(value) is None else rule


def _training(data: object, problems: list[str]) -> TrainingSpec:
    accelerator_keys = tuple(AcceleratorOptions.__dataclass_fields__)
    keys = ("batch_size", "num_workers", *Optimization.__dataclass_fields__, *accelerator_keys)
    s = _Section(data, "training", problems, keys)
    d = TrainingSpec()
    o = d.optimization
    a = d.accelerator
    positive = _number(0, math.inf, low_open=True)
    return TrainingSpec(
        batch_size=s.get("batch_size", d.batch_size, _integer(1, MAX_BATCH_SIZE)),
        num_workers=s.get("num_workers", d.num_workers, _workers),
        optimization=Optimization(
            optimizer=s.get("optimizer", o.optimizer, _choice(("sgd", "adamw"))),
            lr=s.get("lr", o.lr, positive),
            momentum=s.get("momentum", o.momentum, _number(0, 1, high_open=True)),
            weight_decay=s.get("weight_decay", o.weight_decay, _number(0, math.inf)),
            kd_temperature=s.get("kd_temperature", o.kd_temperature, positive),
            kd_alpha=s.get("kd_alpha", o.kd_alpha, _number(0, 1)),
            grad_clip=s.get("grad_clip", o.grad_clip, _number(0, MAX_GRAD_CLIP)),
        ),
        accelerator=AcceleratorOptions(
            precision=s.get("precision", a.precision, _choice(PRECISIONS)),
            channels_last=s.get("channels_last", a.channels_last, _boolean),
        ),
    )


def _resources(data: object, problems: list[str]) -> ResourcesSpec:
    s = _Section(data, "resources_per_trial", problems, ("cpu", "gpu"))
    return ResourcesSpec(
        cpu=s.get("cpu", 1.0, _number(0, MAX_RESOURCES, low_open=True)),
        gpu=s.get("gpu", 0.0, _number(0, MAX_RESOURCES)),
    )


def _scheduler(data: object, problems: list[str]) -> SchedulerSpec | None:
    if data is None:
        return None
    keys = ("name", "metric", "mode", "grace_period", "reduction_factor")
    s = _Section(data, "scheduler", problems, keys)
    name = s.get("name", "asha", _choice(("asha", "mo_asha")))
    if name == "mo_asha":
        # It ranks by all of the study's objectives: a metric of its own would be ignored,
        # and a spec that names one most likely means something else.
        for key in ("metric", "mode"):
            if key in s.data:
                problems.append(
                    f"scheduler.{key}: must be absent for mo_asha (it ranks by every "
                    f"objective), got {s.data[key]!r}"
                )
        return SchedulerSpec(
            name=name,
            grace_period=s.get("grace_period", 1, _integer(1, MAX_EPOCHS)),
            reduction_factor=s.get("reduction_factor", 3.0, _number(1, math.inf, low_open=True)),
        )
    metric = s.get("metric", "map", _choice(tuple(METRICS)))
    return SchedulerSpec(
        name=name,
        metric=metric,
        mode=s.get("mode", METRICS[metric][0], _choice(("min", "max"))),
        grace_period=s.get("grace_period", 1, _integer(1, MAX_EPOCHS)),
        reduction_factor=s.get("reduction_factor", 3.0, _number(1, math.inf, low_open=True)),
    )


def _evaluation(data: object, problems: list[str]) -> EvaluationSpec:
    from trainables.evaluation_protocol import EVALUATION_PROTOCOLS

    keys = ("attribution_methods", "overlay_images", "protocol")
    s = _Section(data, "evaluation", problems, keys)
    further = ATTRIBUTION_METHOD_NAMES[1:]

    def methods(value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            return "must be a list of method names"
        unknown = [m for m in value if m not in further]
        if unknown:
            return f"must name methods among {', '.join(further)} (Grad-CAM is always on)"
        return None

    d = EvaluationSpec()
    chosen = s.get("attribution_methods", list(d.attribution_methods), methods)
    return EvaluationSpec(
        attribution_methods=tuple(dict.fromkeys(chosen)),
        overlay_images=s.get("overlay_images", d.overlay_images, _integer(0, MAX_OVERLAY_IMAGES)),
        protocol=s.get("protocol", d.protocol, _choice(tuple(EVALUATION_PROTOCOLS))),
    )


def _protocol_problems(evaluation: EvaluationSpec, method: str) -> list[str]:
    """``official`` takes Grad-CAM before pool5, which a quantized network does not have: it
    exists only as two parts split at the matched layer (:class:`trainables.models.SplitModel`)."""
    if evaluation.protocol == "official" and method == "quantization":
        return [
            "evaluation.protocol: must be 'apc' for method quantization (an int8 network "
            "exists only split at its matched layer, so Grad-CAM cannot be taken before "
            f"pool5), got {evaluation.protocol!r}"
        ]
    return []


def _method_metric_problems(
    evaluation: EvaluationSpec,
    objectives: Mapping[str, str],
    scheduler: SchedulerSpec | None,
) -> list[str]:
    """A further method's metric is measured only when the method is on, at the last epoch."""
    problems = []
    owners = {
        method_metric(metric, method): method
        for method in ATTRIBUTION_METHOD_NAMES[1:]
        for metric in ATTRIBUTION_METRICS
    }
    for name in objectives:
        if name in owners and owners[name] not in evaluation.attribution_methods:
            problems.append(
                f"objectives.{name}: needs {owners[name]!r} in evaluation.attribution_methods, "
                f"got {list(evaluation.attribution_methods)}"
            )
    if scheduler is not None and scheduler.name == "mo_asha":
        # Its rungs compare every objective at intermediate epochs.
        problems.extend(
            f"objectives.{name}: must be measured every epoch for scheduler mo_asha; {name} is "
            f"measured with a trial's last epoch only, got {name!r}"
            for name in objectives
            if name in owners
        )
    elif scheduler is not None and scheduler.metric in owners:
        problems.append(
            f"scheduler.metric: must be measured every epoch; {scheduler.metric} is measured "
            f"with a trial's last epoch only, got {scheduler.metric!r}"
        )
    return problems


def _objectives(data: object, problems: list[str]) -> dict[str, Literal["min", "max"]]:
    if data is None:
        return dict(DEFAULT_OBJECTIVES)
    if not isinstance(data, Mapping) or not data:
        problems.append(f"objectives: must map metric names to min or max, got {data!r}")
        return dict(DEFAULT_OBJECTIVES)
    objectives: dict[str, Literal["min", "max"]] = {}
    for metric, mode in data.items():
        if metric not in METRICS:
            close = nearest_name(str(metric), list(METRICS))
            hint = f"did you mean {close!r}?" if close else f"valid: {valid_metrics_text()}"
            problems.append(f"objectives.{_key(metric)}: unknown metric ({hint})")
        elif mode not in ("min", "max"):
            problems.append(f"objectives.{metric}: must be min or max, got {mode!r}")
        else:
            objectives[str(metric)] = mode
    return objectives


def _parameter_domains(teacher_width: int) -> dict[str, tuple[str, Callable[[Any], bool]]]:
    """Searched parameter -> (rule, test): the values a trainable accepts, whatever the space
    (every registered method's, from its descriptor)."""
    domains: dict[str, tuple[str, Callable[[Any], bool]]] = {}
    for descriptor in REGISTERED_METHODS.values():
        for name, domain in descriptor.parameters.items():
            if name not in domains:
                domains[name] = domain(teacher_width)
    return domains


def _space_problems(space: SearchSpace, method: str, teacher_width: int) -> list[str]:
    """Problems of a (well-formed) search space for ``method``: parameters its trainable does
    not read, required ones missing, values outside what the trainable accepts."""
    path = "search_space.parameters"
    problems: list[str] = []
    descriptor = REGISTERED_METHODS.get(method)
    reads = None if descriptor is None else tuple(descriptor.parameters)
    domains = _parameter_domains(teacher_width)
    for parameter in space.parameters:
        here = f"{path}.{parameter.name}"
        if reads is not None and parameter.name not in reads:
            hint = _hint(parameter.name, reads)
            problems.append(f"{here}: unknown parameter of {method} ({hint})")
            continue
        if parameter.name not in domains:
            continue
        rule, valid = domains[parameter.name]
        if parameter.type == "categorical":
            problems.extend(
                f"{here}.choices: {rule}, got {choice!r}"
                for choice in parameter.choices
                if not valid(choice)
            )
        elif parameter.type == "int" and parameter.low is not None and parameter.high is not None:
            values = range(int(parameter.low), int(parameter.high) + 1, parameter.step)
            bad = [v for v in values[:1000] if not valid(v)]
            if bad:
                shown = bad[0] if len(bad) == 1 else bad[:5]
                problems.append(f"{here}: {rule}, got {shown!r} (in its range)")
        else:
            for key, bound in (("low", parameter.low), ("high", parameter.high)):
                if not valid(bound):
                    problems.append(f"{here}.{key}: {rule}, got {bound!r}")
    by_name = {p.name: p for p in space.parameters}
    for name in () if descriptor is None else descriptor.required:
        if name not in by_name:
            problems.append(f"{path}.{name}: is required by {method}, got nothing")
        elif by_name[name].when:
            problems.append(
                f"{path}.{name}.when: must be absent ({method} needs {name} in every trial), "
                f"got {dict(by_name[name].when)!r}"
            )
    drop_p, matching = by_name.get("drop_p"), by_name.get("matching")
    if drop_p is not None:
        # A trial draws drop_p only where `when` allows it; other matchings refuse a drop_p.
        possible = matching.choices if matching is not None else ("none",)
        allowed = drop_p.when.get("matching", possible)
        others = [m for m in allowed if m != "sswa"]
        if others:
            problems.append(
                f"{path}.drop_p.when: must limit drop_p to matching: [sswa] (only SSWA drops "
                f"channels), got drop_p with matching {others!r}"
            )
    return problems


def _enqueue_domain_problems(
    enqueue: Sequence[Mapping[str, Any]], teacher_width: int, reported: Sequence[str]
) -> list[str]:
    """Values of enqueued configurations outside what the trainable accepts (for a space
    whose range is itself too wide); keys already reported are skipped."""
    domains = _parameter_domains(teacher_width)
    problems = []
    for index, point in enumerate(enqueue):
        for key, value in point.items():
            here = f"enqueue[{index}].{key}"
            if key not in domains or any(p.startswith(f"{here}:") for p in reported):
                continue
            rule, valid = domains[key]
            if not valid(value):
                problems.append(f"{here}: {rule}, got {value!r}")
    return problems


def _output_setting(s: _Section, key: str, default: str, base_dir: Path) -> str:
    """``tracking_uri`` or ``storage_path``: given in the spec, its local path is taken from
    the spec's folder; else (or when invalid, reported) the default, which MLflow and Tune
    take from the working folder."""
    value = s.get(key, None, _string)
    return default if value is None else _output_path(key, value, base_dir, s.problems)


def _given_paths(data: Mapping[str, Any]) -> dict[str, str]:
    given = {}
    for key in ("dataset.root", "teacher.checkpoint"):
        section, _, leaf = key.partition(".")
        value = data.get(section)
        if isinstance(value, Mapping) and isinstance(value.get(leaf), str):
            given[key] = value[leaf]
    return given


def parse_spec(data: object, *, base_dir: Path | None = None) -> Spec:
    """Validate a spec mapping's schema and values; raises :class:`SpecError` listing every
    problem. Pure but for reading the search-space file it names (see the module's text)."""
    base = base_dir or Path.cwd()
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise SpecError([f"spec: must be a YAML mapping of keys to values, got {data!r}"])
    s = _Section(data, "", problems, _TOP_KEYS)
    if "name" not in data:
        problems.append("name: is required (the study's name, e.g. name: my-study)")
    name = s.get(
        "name",
        "",
        lambda v: (
            None
            if isinstance(v, str) and _NAME_PATTERN.fullmatch(v)
            else "must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
        ),
    )
    method = s.get("method", "distillation", _choice(trainable_names()))
    descriptor = REGISTERED_METHODS.get(method)
    default_space = descriptor.search_space if descriptor is not None else None
    reference = data.get("search_space", method if default_space is None else default_space)
    space, space_problems = load_search_space(reference, base_dir=base)
    problems.extend(space_problems)
    if isinstance(reference, str) and not is_builtin_reference(reference) and not space_problems:
        reference = str(resolve_path(reference, base_dir=base))  # the file that was read
    enqueue: list[Mapping[str, Any]] = []
    raw_enqueue = data.get("enqueue", [])
    if not isinstance(raw_enqueue, list) or not all(isinstance(p, Mapping) for p in raw_enqueue):
        problems.append(f"enqueue: must be a list of parameter mappings, got {raw_enqueue!r}")
    elif not space_problems:
        for index, point in enumerate(raw_enqueue):
            problems.extend(space.check_point(point, path=f"enqueue[{index}]"))
            enqueue.append(dict(point))
    trials = s.get("trials", 12, _integer(1, MAX_TRIALS))
    if len(enqueue) > trials:
        problems.append(
            f"enqueue: must not hold more entries than trials ({trials}), got {len(enqueue)}"
        )
    dataset = _dataset(data.get("dataset"), problems, base)
    teacher = _teacher(data.get("teacher"), problems, base, dataset.name)
    if not space_problems and data.get("method", method) == method:
        problems.extend(_space_problems(space, method, teacher.width))
        problems.extend(_enqueue_domain_problems(enqueue, teacher.width, problems))
    spec = Spec(
        name=name,
        seed=s.get("seed", 0, _integer(0, SEED_LIMIT - 1)),
        dataset=dataset,
        teacher=teacher,
        method=method,
        search_space=space,
        search_space_ref=reference,
        enqueue=tuple(enqueue),
        objectives=_objectives(data.get("objectives"), problems),
        sampler=s.get("sampler", DEFAULT_SAMPLER, _choice(SAMPLERS)),
        trials=trials,
        max_concurrent=s.get("max_concurrent", 2, _integer(1, MAX_CONCURRENT)),
        epochs=s.get("epochs", 3, _integer(1, MAX_EPOCHS)),
        training=_training(data.get("training"), problems),
        resources_per_trial=_resources(data.get("resources_per_trial"), problems),
        scheduler=_scheduler(data.get("scheduler"), problems),
        evaluation=_evaluation(data.get("evaluation"), problems),
        tracking_uri=_output_setting(s, "tracking_uri", "sqlite:///mlflow.db", base),
        storage_path=_output_setting(s, "storage_path", "apc_results", base),
        ray_address=s.get("ray_address", None, _optional(_string)),
        registry=s.get("registry", False, _boolean),
        given_paths=_given_paths(data),
    )
    method_options = s.get(
        "method_options", {}, lambda v: None if isinstance(v, Mapping) else "must be a mapping"
    )
    if method in trainable_names():
        # After the spec is read: whether the options fit can depend on its epochs.
        problems.extend(
            f"method_options.{problem}"
            for problem in check_method_options(method, method_options, epochs=spec.epochs)
        )
    spec = replace(spec, method_options=dict(method_options))
    problems.extend(_method_metric_problems(spec.evaluation, spec.objectives, spec.scheduler))
    problems.extend(_protocol_problems(spec.evaluation, spec.method))
    if problems:
        raise SpecError(problems)
    return spec


def apply_overrides(
    data: object, assignments: Sequence[str], *, base_dir: Path | None = None
) -> tuple[object, list[str]]:
    """Apply ``key.sub=value`` assignments (values parsed as YAML) to a spec mapping.

    Paths given this way are typed at a shell, so relative ones are taken from ``base_dir``
    (default: the working folder) and stored absolute (:func:`absolute_paths`), not from the
    spec's folder.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        return data, problems
    result: dict[str, Any] = _plain_copy(data)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(
                f"--set: must be key=value (e.g. dataset.image_size=64), got {assignment!r}"
            )
            continue
        try:
            value = load_bounded_yaml(raw) if raw else ""
        except BoundedYamlError:  # not YAML (or out of bounds): the text itself
            value = raw
        *parents, leaf = key.split(".")
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        value = _lookup(absolute_paths(nested, base_dir=base_dir or Path.cwd()), key)
        node = result
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"--set {key}: {part!r} is not a mapping, got {child!r}")
                break
            node = child
        else:
            node[leaf] = value
    return result, problems


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node


def _plain_copy(value: Any) -> Any:
    """A copy of YAML data that shares nothing: what an alias named is copied where it is used
    (bounded: :func:`read_spec_text` refuses a spec that aliases expand past its bounds)."""
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def absolute_paths(data: Mapping[str, Any], *, base_dir: Path) -> dict[str, Any]:
    """A copy of spec mapping ``data`` with each path in it (:data:`PATH_KEYS`) made absolute
    by :data:`PATH_RULE` from ``base_dir``, so that it means the same from any folder.

    A built-in search space's name, a URI other than ``sqlite:///`` and a value that is no
    path at all (validation reports it) are kept as they are.
    """
    result: dict[str, Any] = _plain_copy(data)
    ignored: list[str] = []  # a path that cannot be resolved stays; validation says why
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node: Any = result
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str) or not node[leaf]:
            continue
        value: str = node[leaf]
        if key in ("storage_path", "tracking_uri"):
            node[leaf] = _output_path(key, value, base_dir, ignored)
        elif key != "search_space" or not is_builtin_reference(value):
            with contextlib.suppress(ValueError):
                node[leaf] = str(resolve_path(value, base_dir=base_dir))
    return result


def read_spec_text(path: str | Path) -> tuple[str, object]:
    """The text of a spec file and its parsed YAML; :class:`SpecError` if unreadable.

    The file is read within the bounds of :mod:`search_spaces.bounded_yaml`: at most
    :data:`MAX_YAML_BYTES`, and :data:`MAX_YAML_VALUES` values nested :data:`MAX_YAML_DEPTH`
    deep with its aliases expanded; a key given twice is refused.
    """
    file = Path(path)
    try:
        found = file.is_file()
    except (OSError, ValueError):  # a name too long, a NUL character: no such file either
        found = False
    if not found:
        raise SpecError([f"spec: no such file: {str(file)!r}"])
    try:
        return read_bounded_yaml(file)
    except BoundedYamlError as error:
        raise SpecError([f"spec: {file} {error}"]) from None


def load_spec(path: str | Path, *, overrides: Sequence[str] = ()) -> Spec:
    """Read and validate a YAML spec file; raises :class:`SpecError` listing every problem.

    Relative paths in the file are taken from its folder, those in ``overrides`` from the
    working folder (:data:`PATH_RULE`).
    """
    _, data = read_spec_text(path)
    data, problems = apply_overrides(data, overrides)
    if problems:
        raise SpecError(problems)
    return parse_spec(data, base_dir=Path(path).parent)
