"""The ``apc`` command line.

Exit codes: 0 done; 2 the user's input is wrong (one message per problem, no traceback);
1 anything else (an unexpected error prints one line and writes its traceback to a file);
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from study.presets import DEMO_SPEC
from trainables._version import __version__

if TYPE_CHECKING:
    from study.runner import StudyOutcome
    from study.spec import Spec

__all__ = ["main"]

EXIT_USAGE = 2
#: The shell's convention for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def _models(args: argparse.Namespace) -> int:
    import torch

    from trainables.models import ARCHITECTURES, WIDTH_DIVISORS, build_model, forward_features

    problems = []
    if args.image_size < 7:
        problems.append(f"--image-size: must be an integer >= 7, got {args.image_size}")
    if args.num_classes < 1:
        problems.append(f"--num-classes: must be a positive integer, got {args.num_classes}")
    if problems:
        for problem in problems:
            print(f"apc models: {problem}", file=sys.stderr)
        return EXIT_USAGE
    header = f"{'arch':<10} {'matched layer':<14} {'map':>7}  " + "  ".join(
        f"{'/' + str(d) + ' params':>11}" for d in WIDTH_DIVISORS
    )
    print(header)
    probe = torch.zeros(1, 3, args.image_size, args.image_size)
    for name, spec in ARCHITECTURES.items():
        counts = []
        side = ""
        for divisor in WIDTH_DIVISORS:
            model = build_model(
                name,
                num_classes=args.num_classes,
                image_size=args.image_size,
                width_divisor=divisor,
            ).eval()
            counts.append(f"{sum(p.numel() for p in model.parameters()) / 1e6:>10.2f}M")
            if divisor == 1:
                with torch.no_grad():
                    h, w = forward_features(model, probe).shape[-2:]
                side = f"{h}x{w}"
        print(f"{name:<10} {spec.matched_layer:<14} {side:>7}  " + "  ".join(counts))
    return 0


def _tracking_problems(uri: str) -> list[str]:
    """The store behind --tracking-uri, probed for a few seconds: MLflow's client would retry
    an unreachable server for minutes without a word."""
    from study.preflight import tracking_problems

    return [p.replace("tracking_uri:", "--tracking-uri:", 1) for p in tracking_problems(uri)]


def _validate(args: argparse.Namespace) -> int:
    from study.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        for problem in error.problems:
            print(f"{args.spec}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.spec}: valid study {spec.name!r}: {spec.method}, {spec.trials} trials "
        f"({len(spec.enqueue)} enqueued), objectives "
        + ", ".join(f"{m}:{d}" for m, d in spec.objectives.items())
    )
    for line in _path_lines(spec, base_dir=Path(args.spec).parent):
        print(f"  {line}")
    return 0


def _path_lines(spec: Spec, *, base_dir: Path) -> list[str]:
    """What ``apc validate`` says of the spec's paths: the rule, then each path as resolved."""
    from study.spec import PATH_RULE, Spec

    space = spec.search_space_ref
    defaults = Spec(name=spec.name)
    resolved: dict[str, str | None] = {
        "search_space": space if isinstance(space, str) else "(inline)",
        "dataset.root": spec.dataset.root,
        "teacher.checkpoint": spec.teacher.checkpoint,
        "storage_path": spec.storage_path,
        "tracking_uri": spec.tracking_uri,
    }
    for key, default in (
        ("storage_path", defaults.storage_path), ("tracking_uri", defaults.tracking_uri)
    ):  # fmt: skip
        if resolved[key] == default:  # not in the spec: MLflow and Tune take the working folder
            resolved[key] = f"{default} (default, from the working folder)"
    shown = ", ".join(f"{key}={value}" for key, value in resolved.items() if value is not None)
    return [PATH_RULE, f"this spec's folder is {base_dir.resolve()}: {shown}"]


def _run(args: argparse.Namespace) -> int:
    from study.spec import SpecError, apply_overrides, parse_spec, read_spec_text

    path = Path(args.spec) if args.spec else DEMO_SPEC
    overrides = list(args.set)
    for flag, key in (
        ("name", "name"), ("trials", "trials"), ("ray_address", "ray_address"),
        ("tracking_uri", "tracking_uri"), ("storage", "storage_path"),
    ):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        text, data = read_spec_text(path)
        data, problems = apply_overrides(data, overrides)
        if problems:
            raise SpecError(problems)
        spec = parse_spec(data, base_dir=path.parent)
    except SpecError as error:
        for problem in error.problems:
            print(f"apc run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from study.preflight import preflight

    problems = preflight(spec)  # the store, Ray, the data, the teacher: before anything starts
    if problems:
        for problem in problems:
            print(f"apc run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from study.lifecycle import LifecycleError
    from study.runner import effective_spec_text, run_problems, run_study

    # Checked before anything is written; run_study checks again under the study's lock.
    problems = run_problems(spec)
    if problems:
        for problem in problems:
            print(f"apc run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    assert isinstance(data, dict)  # parse_spec accepted it
    effective = effective_spec_text(data, base_dir=path.parent)
    try:
        outcome = run_study(spec, spec_text=text, effective_text=effective)
    except LifecycleError as error:
        for problem in error.problems:
            print(f"apc run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return _finish(spec, outcome)


def _finish(spec: Spec, outcome: StudyOutcome) -> int:
    """What ``apc run`` and ``apc resume`` print at the end: counts, the Pareto table, the
    enqueued settings beside the teacher, how to resume or browse."""
    print(
        f"\nstudy {spec.name!r}: {outcome.trials} trials ({outcome.failed} failed) in "
        f"{outcome.seconds / 60:.1f} min; MLflow parent run {outcome.parent_run_id}\n"
    )
    if outcome.mlflow_outage_s and not outcome.unlogged:
        print(
            f"apc: MLflow at {spec.tracking_uri} was unreachable for about "
            f"{outcome.mlflow_outage_s:.0f} s; its records waited in the driver and were delivered",
            file=sys.stderr,
        )
    if outcome.unlogged:
        print(
            f"apc: MLflow at {spec.tracking_uri} could not be reached: {outcome.unlogged} records "
            f"are kept in {outcome.spool}; `apc resume {spec.name} --tracking-uri "
            f"{spec.tracking_uri}` delivers them once it is back",
            file=sys.stderr,
        )
    if outcome.quarantined:
        print(
            f"apc: MLflow refused {outcome.quarantined} records; each is kept with its reason "
            f"in {outcome.quarantine}",
            file=sys.stderr,
        )
    if not outcome.complete:
        print(
            f"apc: study {spec.name!r} stopped before all its trials ended; finish it with "
            f"`apc resume {spec.name} --tracking-uri {spec.tracking_uri}`",
            file=sys.stderr,
        )
        return 1
    from analysis.layout import parent_filter

    objectives = ",".join(f"{m}:{d}" for m, d in spec.objectives.items())
    main([
        "pareto", spec.name, "--tracking-uri", spec.tracking_uri, "--objectives", objectives,
        # Trials that ended FAILED (diverged) or KILLED (stopped early by ASHA) have no
        # measurement of a trained student; their runs stay browsable in MLflow.
        "--filter", f"{parent_filter(outcome.parent_run_id)} AND attributes.status = 'FINISHED'",
    ])  # fmt: skip
    if spec.enqueue and not outcome.unlogged:
        from analysis.effect import effect_table, render_effect_table

        rows = effect_table(spec.tracking_uri, spec.name, parent_run_id=outcome.parent_run_id)
        print("\nThe enqueued settings beside the teacher (last epoch):\n")
        sys.stdout.write(render_effect_table(rows))
    print(f"\nbrowse it: apc ui --tracking-uri {spec.tracking_uri}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from study.lifecycle import LifecycleError
    from study.runner import resume_study

    try:
        spec, outcome = resume_study(args.name, tracking_uri=args.tracking_uri)
    except LifecycleError as error:
        for problem in error.problems:
            print(f"apc resume: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return _finish(spec, outcome)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _ui(args: argparse.Namespace) -> int:
    import subprocess

    command = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    if not _is_loopback(args.host):
        print(
            f"apc ui: warning: --host {args.host} serves the MLflow UI without authentication "
            "to every machine that reaches this one: anyone there can read, change and delete "
            "the studies. For a shared UI run MLflow's auth app instead (docs/operations.md, "
            '"Network and security"), or keep 127.0.0.1 and reach it through an SSH tunnel.',
            file=sys.stderr,
        )
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def _pareto(args: argparse.Namespace) -> int:
    from pathlib import Path

    from analysis.pareto import ObjectivesError, parse_objectives
    from search_spaces.space import nearest_name
    from trainables.metric_names import METRICS, valid_metrics_text

    def usage(problems: list[str]) -> int:
        for problem in problems:
            print(f"apc pareto: {problem}", file=sys.stderr)
        return EXIT_USAGE

    problems: list[str] = []
    try:
        objectives = parse_objectives(args.objectives, {m: d for m, (d, _) in METRICS.items()})
    except ObjectivesError as error:
        objectives = error.parsed
        for problem in error.problems:  # "objectives.map: ..." -> "--objectives: map: ..."
            problems.append("--objectives: " + problem.removeprefix("objectives").lstrip(".: "))
    for name in objectives:
        if name not in METRICS:
            close = nearest_name(name, list(METRICS))
            hint = f"did you mean {close!r}?" if close else f"valid: {valid_metrics_text()}"
            problems.append(f"--objectives: unknown metric {name!r} ({hint})")
    out = Path(args.out) if args.out else None
    if args.format == "parquet" and out is None:
        problems.append("--format parquet: needs --out PATH (Parquet is not written to stdout)")
    if out is not None and out.is_dir():
        problems.append(f"--out: {out} is a directory")
    elif out is not None and not out.parent.is_dir():
        problems.append(f"--out: directory {out.parent} does not exist")
    problems += _tracking_problems(args.tracking_uri)
    if problems:
        return usage(problems)

    from mlflow.exceptions import MlflowException

    from analysis.export import ranked_front, render
    from analysis.runs import (
        BadFilterError,
        RunsQueryError,
        load_studies,
        metric_columns,
    )

    try:
        trials = load_studies(args.tracking_uri, args.name, filter_string=args.filter)
    except BadFilterError as error:
        return usage([f"--filter {args.filter!r}: {error.reason}"])
    except RunsQueryError as error:
        return usage([str(error)])
    except MlflowException as error:
        print(f"apc pareto: MLflow: {error.message}", file=sys.stderr)
        return 1
    names = list(dict.fromkeys(args.name))
    which = (
        f"of study {names[0]!r}" if len(names) == 1
        else "of studies " + ", ".join(repr(n) for n in names)
    ) + (f" matching {args.filter!r}" if args.filter else "")  # fmt: skip
    if trials.num_rows == 0:
        print(f"apc pareto: no trial runs {which}", file=sys.stderr)
    else:
        logged = metric_columns(trials)
        unlogged = [
            f"--objectives: metric {name!r} was logged by no trial {which} "
            f"(logged: {', '.join(logged) or 'none'})"
            for name in objectives
            if name not in logged
        ]
        if unlogged:
            return usage(unlogged)
    front = ranked_front(trials, objectives)
    data = render(front, args.format, objectives)
    summary = (
        f"{front.num_rows} of {trials.num_rows} trials {which} on the Pareto front of "
        + ", ".join(f"{name}:{direction}" for name, direction in objectives.items())
    )
    if out is not None:
        try:
            out.write_bytes(data)
        except OSError as error:
            print(f"apc pareto: --out: cannot write {out}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"{summary}: wrote {out}")
    else:
        if args.format == "table":
            print(summary)
        sys.stdout.write(data.decode())
    return 0


def _report(args: argparse.Namespace) -> int:
    """``apc report NAME``: the study's table and plots, logged to its study run under
    ``report/`` and copied to ``--out DIR``; input checked before anything is written."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    # The report downloads a few small artifacts per trial row: one progress bar each is noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def usage(problems: list[str]) -> int:
        for problem in problems:
            print(f"apc report: {problem}", file=sys.stderr)
        return EXIT_USAGE

    problems: list[str] = []
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            problems.append(f"--out: {out} is a file; give a directory")
        else:
            above = next((p for p in out.parents if p.exists()), None)
            if above is not None and not above.is_dir():
                problems.append(f"--out: {above} is a file; give a directory")
    problems += _tracking_problems(args.tracking_uri)
    if problems:
        return usage(problems)

    from mlflow.exceptions import MlflowException

    from analysis.record import load_study_record
    from analysis.report import ARTIFACT_DIR, log_report, write_report
    from analysis.runs import RunsQueryError

    try:
        # The newest study run; why there is none (no store, no such study, no study run)
        # comes as a RunsQueryError.
        record = load_study_record(args.name, tracking_uri=args.tracking_uri)
        parent_run_id = record.parent_run_id
        trials = record.table()
    except RunsQueryError as error:
        return usage([str(error)])
    except MlflowException as error:  # the store answered, but not as an MLflow store
        return usage([f"tracking URI {args.tracking_uri!r}: {str(error.message).strip()}"])
    with tempfile.TemporaryDirectory(prefix="apc-report-") as scratch:
        try:
            report = write_report(
                args.tracking_uri, args.name, parent_run_id=parent_run_id,
                folder=Path(scratch) / ARTIFACT_DIR, trials=trials, record=record,
            )  # fmt: skip
        except RunsQueryError as error:  # no FINISHED trial: refused before writing
            return usage([str(error)])
        except MlflowException as error:
            print(f"apc report: MLflow: {error.message}", file=sys.stderr)
            return 1
        try:
            where = log_report(args.tracking_uri, report, client=record.client)
        except (MlflowException, OSError) as error:
            reason = error.message if isinstance(error, MlflowException) else error
            print(
                f"apc report: cannot log the report to study run {parent_run_id}: {reason}",
                file=sys.stderr,
            )
            return 1
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
                for path in report.files:
                    shutil.copyfile(path, out / path.name)
            except OSError as error:
                print(f"apc report: --out: cannot write {out}: {error}", file=sys.stderr)
                return 1
    names = ", ".join(path.name for path in report.files)
    print(report.table)
    print(
        f"{report.finished} of {report.trials} trials FINISHED; {report.front} on the Pareto "
        "front of " + ", ".join(f"{n}:{d}" for n, d in report.objectives.items())
    )
    print(f"logged to study run {parent_run_id} under {ARTIFACT_DIR}/: {names} ({where})")
    if out is not None:
        print(f"wrote {names} to {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apc", description="Attribution-preserving network compression studies."
    )
    parser.add_argument("--version", action="version", version=f"apc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = commands.add_parser(
        "models", help="list architectures, their matched layer and student sizes"
    )
    models.add_argument("--image-size", type=int, default=224)
    models.add_argument("--num-classes", type=int, default=20)
    models.set_defaults(handler=_models)
    validate = commands.add_parser(
        "validate", help="check a study spec and report every problem at once (exit 2 if any)"
    )
    validate.add_argument("spec", metavar="SPEC", help="path of the study's YAML spec")
    validate.set_defaults(handler=_validate)
    pareto = commands.add_parser(
        "pareto", help="print the Pareto-optimal trials of a study recorded in MLflow"
    )
    pareto.add_argument(
        "name", metavar="NAME", nargs="+",
        help="the study's name (its MLflow experiment); several: one front over their trials, "
        "e.g. of different compression methods",
    )  # fmt: skip
    pareto.add_argument(
        "--objectives",
        # analysis.layout.DEFAULT_OBJECTIVES spelled out: importing the analysis here would slow
        # every command down (tests/analysis/test_layout.py checks that the two agree).
        default="map:max,attr_auc:max,params:min",
        help="comma-separated METRIC:min|max (a bare METRIC takes its usual direction); "
        "default: %(default)s",
    )
    pareto.add_argument(
        "--filter",
        metavar="EXPR",
        help="MLflow search expression the trials must match, e.g. \"params.matching = 'swa'\" "
        "or 'metrics.map > 50 AND attributes.status = \"FINISHED\"' (no OR, no parentheses)",
    )
    pareto.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    pareto.add_argument("--out", metavar="PATH", help="write to PATH instead of stdout")
    pareto.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    pareto.set_defaults(handler=_pareto)
    report = commands.add_parser(
        "report",
        help="the paper's table and plots of a study, logged to its MLflow study run",
    )
    report.add_argument("name", metavar="NAME", help="the study's name (its MLflow experiment)")
    report.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    report.add_argument(
        "--out", metavar="DIR", help="also write the report's files to DIR (created if needed)"
    )
    report.set_defaults(handler=_report)
    run = commands.add_parser("run", help="run a study (the embedded demo when SPEC is omitted)")
    run.add_argument("spec", metavar="SPEC", nargs="?", help="study spec (default: the demo)")
    run.add_argument("--name", help="study name (overrides the spec's)")
    run.add_argument("--trials", type=int, help="number of trials")
    run.add_argument("--ray-address", help="address of a running Ray cluster")
    run.add_argument("--tracking-uri", help="MLflow tracking URI")
    run.add_argument("--storage", help="Ray Tune storage path")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key, e.g. --set dataset.image_size=64 (repeatable)",
    )  # fmt: skip
    run.set_defaults(handler=_run)
    resume = commands.add_parser(
        "resume", help="finish an interrupted study without repeating its finished trials"
    )
    resume.add_argument("name", metavar="NAME", help="the study's name (its MLflow experiment)")
    resume.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    resume.set_defaults(handler=_resume)
    ui = commands.add_parser("ui", help="the MLflow UI over the study store (127.0.0.1)")
    ui.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)
    return parser


def _crash(command: str, error: Exception) -> int:
    """The last resort for an error no handler expected: one line naming it, the traceback in
    a file (a wall of Ray and MLflow frames would bury the one line that matters)."""
    import tempfile
    import time
    import traceback

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"apc-{command}-{stamp}-{os.getpid()}.traceback.txt"
    text = "".join(traceback.format_exception(error))
    try:
        path.write_text(text, encoding="utf-8")
        where = f"full traceback in {path}"
    except OSError as write_error:
        where = f"the traceback could not be written to {path}: {write_error.strerror}"
    message = (str(error).strip().splitlines() or [""])[0][:300]
    print(
        f"apc {command}: unexpected error: {type(error).__name__}"
        + (f": {message}" if message else "") + f" ({where})",
        file=sys.stderr,
    )  # fmt: skip
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``apc`` command line; returns the exit code (see the module's docstring)."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print(f"apc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        return _crash(args.command, error)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
