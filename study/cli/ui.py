"""``apc ui``: the MLflow UI over the study store, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import sys


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def ui(args: argparse.Namespace) -> int:
    import subprocess

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
    ]
    if not is_loopback(args.host):
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
