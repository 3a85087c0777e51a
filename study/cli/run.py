"""``apc run [SPEC]``: run a study (the embedded demo when SPEC is omitted), then print what
it found; :func:`finish` is also how ``apc resume`` ends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from study.cli._common import crash, tracking_problems, usage
from study.presets import DEMO_SPEC

if TYPE_CHECKING:
    from study.runner import StudyOutcome
    from study.spec import Spec


def run(args: argparse.Namespace) -> int:
    from study.spec import SpecError, apply_overrides, parse_spec, read_spec_text

    path = Path(args.spec) if args.spec else DEMO_SPEC
    overrides = list(args.set)
    for flag, key in (
        ("name", "name"),
        ("trials", "trials"),
        ("ray_address", "ray_address"),
        ("tracking_uri", "tracking_uri"),
        ("storage", "storage_path"),
    ):
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
        return usage("run", error.problems)
    from study.preflight import preflight

    problems = preflight(spec)  # the store, Ray, the data, the teacher: before anything starts
    if problems:
        return usage("run", problems)
    from study.lifecycle import LifecycleError
    from study.runner import effective_spec_text, run_problems, run_study

    # Checked before anything is written; run_study checks again under the study's lock.
    problems = run_problems(spec)
    if problems:
        return usage("run", problems)
    assert isinstance(data, dict)  # parse_spec accepted it
    effective = effective_spec_text(data, base_dir=path.parent)
    try:
        outcome = run_study(spec, spec_text=text, effective_text=effective)
    except LifecycleError as error:
        return usage("run", error.problems)
    return finish(spec, outcome)


def finish(spec: Spec, outcome: StudyOutcome) -> int:
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
    # The study is complete and recorded: a front that cannot be shown is reported as
    # `apc pareto` reports it and does not fail the run.
    try:
        _print_front(spec, outcome)
    except Exception as error:
        crash("pareto", error)
    code = 0
    if not outcome.unlogged:  # else MLflow lacks some trials: the plots and models wait too
        try:
            _log_front_plots(spec, outcome)
        except Exception as error:
            crash("report", error)
        if spec.registry:
            from study.cli.register import register_study

            print(f"\nregistering the front's models (registry: true in {spec.name!r}'s spec):")
            code = register_study(spec.tracking_uri, spec.name, command="register")
    if spec.enqueue and not outcome.unlogged:
        from analysis.effect import effect_table, render_effect_table

        rows = effect_table(spec.tracking_uri, spec.name, parent_run_id=outcome.parent_run_id)
        print("\nThe enqueued settings beside the teacher (last epoch):\n")
        sys.stdout.write(render_effect_table(rows))
    print(f"\nbrowse it: apc ui {spec.name} --tracking-uri {spec.tracking_uri}")
    link = _runs_link(spec)
    if link:
        print(f"  and open {link} (the study run, its trials nested under it)")
    return code


def _log_front_plots(spec: Spec, outcome: StudyOutcome) -> None:
    """The Pareto matrix and hypervolume plots on the study run, under ``report/``."""
    from analysis.record import load_study_record
    from analysis.report import log_front_plots

    record = load_study_record(
        spec.name, tracking_uri=spec.tracking_uri, parent_run_id=outcome.parent_run_id
    )
    logged = log_front_plots(record)
    if logged:
        print(f"\nlogged to study run {outcome.parent_run_id}: {', '.join(logged)}")


def _runs_link(spec: Spec) -> str | None:
    """The page of the study's runs in the UI ``apc ui`` serves (its default address), or
    None when the store cannot say the experiment's id now."""
    from study.cli.ui import study_links

    try:
        links = study_links(spec.tracking_uri, "http://127.0.0.1:5000", names=[spec.name])
    except Exception:  # the study is recorded; a link is a convenience
        return None
    return links[0][1] if links else None


def _print_front(spec: Spec, outcome: StudyOutcome) -> None:
    """The study's Pareto table, as ``apc pareto NAME --objectives (the spec's) --filter (this
    study run's FINISHED trials)`` prints it."""
    from analysis.layout import finished_trials_filter
    from study.cli.pareto import show_front

    problems = tracking_problems(spec.tracking_uri)
    if problems:
        usage("pareto", problems)
        return
    # Trials that ended FAILED (diverged) or KILLED (stopped early by ASHA) have no
    # measurement of a trained student; their runs stay browsable in MLflow.
    finished = finished_trials_filter(outcome.parent_run_id)
    show_front(
        spec.tracking_uri,
        [spec.name],
        spec.objectives,
        filter_string=finished,
        selected="finished",
    )
