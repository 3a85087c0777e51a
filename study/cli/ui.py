"""``apc ui [NAME]``: the MLflow UI over the study store, on 127.0.0.1 unless told otherwise.

It prints a link per study that opens the study's runs (its study run with the trials nested
under it) in the UI's model-training view: MLflow 3.17's UI otherwise opens an experiment on
an "Overview" of GenAI traces, empty for a study (:func:`analysis.layout.ui_runs_url`).

``mlflow ui`` starts a server of several processes (its CLI, uvicorn and uvicorn's workers).
They run in a process group of their own, which Ctrl-C (SIGINT) or SIGTERM to ``apc ui`` ends
as a whole: a signal to ``apc ui`` alone (a supervisor, ``kill``, a test) used to leave them
serving, and a group of their own is one ``apc ui`` can end without signalling itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from study.cli._common import usage

if TYPE_CHECKING:
    import subprocess

#: The shell's convention for a process ended by SIGINT (as study.cli's EXIT_INTERRUPTED).
_EXIT_INTERRUPTED: Final = 130
#: How long the server's processes get to end after SIGTERM before they are killed.
_STOP_GRACE_S: Final = 10.0


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def ui(args: argparse.Namespace) -> int:
    server = _server_url(args.host, args.port)
    try:
        links = study_links(args.tracking_uri, server, names=args.name)
    except LookupError as error:
        return usage("ui", [str(error)])
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        args.tracking_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        # One user's browser: MLflow's default of four workers costs four more imports of
        # MLflow before the UI answers (a minute on a busy 2-core machine).
        "--workers",
        "1",
    ]
    if not is_loopback(args.host):
        print(
            f"apc ui: warning: --host {args.host} serves the MLflow UI without authentication "
            "to every machine that reaches this one: anyone there can read, change and delete "
            "the studies. For a shared UI run MLflow's auth app instead (docs/operations.md, "
            '"Network and security"), or keep 127.0.0.1 and reach it through an SSH tunnel.',
            file=sys.stderr,
        )
    print(f"MLflow UI on {server} (Ctrl-C stops it)", file=sys.stderr)
    for name, link in links:
        print(f"  study {name!r}, its runs: {link}", file=sys.stderr)
    return serve(command)


def study_links(
    tracking_uri: str, server: str, *, names: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """(study, link to its runs in the UI at ``server``) for ``names``, or for every study in
    the store (an experiment holding a study run), by name. Raises ``LookupError`` naming a
    study of ``names`` the store does not hold; a store that cannot be read has no links."""
    from analysis.layout import STUDY_ROLE, role_filter, ui_runs_url

    missing_file = (
        tracking_uri.startswith("sqlite:///")
        and not Path(tracking_uri.removeprefix("sqlite:///")).exists()
    )
    if missing_file and not names:
        return []  # `mlflow ui` creates the store; nothing in it to link
    if missing_file:
        raise LookupError(f"{names[0]}: no such study in {tracking_uri} (no store there)")
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if names:
        links = []
        for name in dict.fromkeys(names):
            experiment = client.get_experiment_by_name(name)
            if experiment is None or experiment.lifecycle_stage != "active":
                raise LookupError(f"{name}: no such study in {tracking_uri}")
            links.append((name, ui_runs_url(server, experiment.experiment_id)))
        return links
    try:
        experiments = {}
        token = None
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
            experiments.update({e.experiment_id: e.name for e in page})
            token = page.token
            if not token:
                break
        studies: set[str] = set()
        ids = list(experiments)
        for start in range(0, len(ids), 100):  # MLflow's limit of experiments per search
            runs = client.search_runs(
                ids[start : start + 100], filter_string=role_filter(STUDY_ROLE), max_results=50000
            )
            studies.update(run.info.experiment_id for run in runs)
    except Exception as error:  # the UI may still serve what the links could not find
        print(f"apc ui: warning: cannot list the studies: {error}", file=sys.stderr)
        return []
    return sorted((experiments[i], ui_runs_url(server, i)) for i in studies)


def serve(command: Sequence[str]) -> int:
    """Run the server ``command`` in a process group of its own until it exits, or until
    SIGINT or SIGTERM ends the whole group; returns 130 after SIGINT (Ctrl-C: interrupted,
    as every ``apc`` command), 0 after SIGTERM (asked to stop, it stopped), else its code."""
    import subprocess

    received: list[int] = []
    process: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)

    # Installed before the server starts: a signal in between must not orphan its group.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        process = subprocess.Popen(command, start_new_session=True)
        # Not one blocking wait: the server's CLI waits for uvicorn, which waits for workers
        # that may still be starting; after a signal _end_group gives them a grace period.
        while not received:
            try:
                code = process.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process is not None:
            _end_group(process)
    if signal.SIGINT in received:
        print("apc ui: interrupted; the MLflow UI stopped", file=sys.stderr)
        return _EXIT_INTERRUPTED
    if received:
        print("apc ui: the MLflow UI stopped", file=sys.stderr)
        return 0
    return code


def _server_url(host: str, port: int) -> str:
    # A wildcard address serves this machine too: the link is one a browser here opens.
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has ended
        os.killpg(pgid, sig)


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """End what is left of the server's group (its CLI may have died before uvicorn and its
    workers did): SIGTERM, a grace period, then SIGKILL."""
    pgid = process.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while _group_alive(pgid) and time.monotonic() < deadline:
        if process.returncode is None:
            process.poll()
        time.sleep(0.05)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 2.0  # SIGKILL is not instant either
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` still runs (a zombie, waiting for a parent
    that is gone to be reaped, runs no longer)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """The pids of the processes of group ``pgid`` that still run (Linux: read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members
