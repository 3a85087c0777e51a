"""``apc report NAME``: the study's table and plots, logged to its study run under
``report/`` and copied to ``--out DIR``; input checked before anything is written."""

from __future__ import annotations

import argparse
import sys

from study.cli._common import tracking_problems, usage


def report(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile
    from pathlib import Path

    # The report downloads a few small artifacts per trial row: one progress bar each is noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    problems: list[str] = []
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            problems.append(f"--out: {out} is a file; give a directory")
        else:
            above = next((p for p in out.parents if p.exists()), None)
            if above is not None and not above.is_dir():
                problems.append(f"--out: {above} is a file; give a directory")
    problems += tracking_problems(args.tracking_uri)
    if problems:
        return usage("report", problems)

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
        return usage("report", [str(error)])
    except MlflowException as error:  # the store answered, but not as an MLflow store
        return usage(
            "report", [f"tracking URI {args.tracking_uri!r}: {str(error.message).strip()}"]
        )
    with tempfile.TemporaryDirectory(prefix="apc-report-") as scratch:
        try:
            written = write_report(
                args.tracking_uri,
                args.name,
                parent_run_id=parent_run_id,
                folder=Path(scratch) / ARTIFACT_DIR,
                trials=trials,
                record=record,
            )
        except RunsQueryError as error:  # no FINISHED trial: refused before writing
            return usage("report", [str(error)])
        except MlflowException as error:
            print(f"apc report: MLflow: {error.message}", file=sys.stderr)
            return 1
        try:
            where = log_report(args.tracking_uri, written, client=record.client)
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
                for path in written.files:
                    shutil.copyfile(path, out / path.name)
            except OSError as error:
                print(f"apc report: --out: cannot write {out}: {error}", file=sys.stderr)
                return 1
    names = ", ".join(path.name for path in written.files)
    print(written.table)
    print(
        f"{written.finished} of {written.trials} trials FINISHED; {written.front} on the Pareto "
        "front of " + ", ".join(f"{n}:{d}" for n, d in written.objectives.items())
    )
    print(f"logged to study run {parent_run_id} under {ARTIFACT_DIR}/: {names} ({where})")
    if out is not None:
        print(f"wrote {names} to {out}")
    return 0
