"""cluster.yaml: valid for Ray's cluster launcher, and what the docs promise of it.

Ray validates a launcher config the way `ray up` does: ``prepare_config`` fills in the
provider's defaults, then ``validate_config`` checks it against ``ray-schema.json`` (which
admits no unknown keys) and the node-type rules. Beyond the schema the docs rely on: the
head runs ``mlflow server`` on 127.0.0.1 over a database, the dashboard/job server listens on
127.0.0.1 only, a worker type has a GPU, every node installs requirements.lock before the
project and runs Ray with token authentication, and MLflow runs its auth app over verified TLS
with no secret in the file. The `apc` commands of the "Running on a cluster" sections of
README and docs/operations.md parse with apc's own command line.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
# The schema validate_config reads.
RAY_SCHEMA = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")


def _config() -> dict[str, Any]:
    data = yaml.safe_load(CLUSTER_YAML.read_text())
    assert isinstance(data, dict)
    return data


def _ray_validate(config: dict[str, Any]) -> None:
    """What `ray up` does with the file before it launches anything."""
    validate_config(prepare_config(copy.deepcopy(config)))


def _words(command: str) -> list[str]:
    """Shell words of ``command``, with ; & | < > ( ) as words of their own."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _program_args(commands: list[str], *program: str) -> list[list[str]]:
    """The arguments of each invocation of ``program`` (e.g. "mlflow", "server") in ``commands``,
    up to the end of that simple command."""
    found = []
    for command in commands:
        words = _words(command)
        for i in range(len(words) - len(program) + 1):
            if tuple(words[i : i + len(program)]) == program:
                args = []
                for word in words[i + len(program) :]:
                    if word and set(word) <= set(";&|<>()"):
                        break
                    args.append(word)
                found.append(args)
    return found


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one given)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _head_commands(config: dict[str, Any]) -> list[str]:
    return [
        *config.get("setup_commands", []),
        *config.get("head_setup_commands", []),
        *config.get("head_start_ray_commands", []),
    ]


def test_ray_accepts_the_config() -> None:
    _ray_validate(_config())


def test_config_matches_ray_json_schema_as_written() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    jsonschema.validate(_config(), schema)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c.update(head_nodes={"typo": True}), jsonschema.ValidationError),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(gpus=1),
            jsonschema.ValidationError,
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="one"),
            jsonschema.ValidationError,
        ),
        (lambda c: c.update(head_node_type="no_such_type"), ValueError),
        (lambda c: c.update(max_workers=-1), jsonschema.ValidationError),
    ],
    ids=[
        "unknown-top-level-key",
        "unknown-node-type-key",
        "gpu-count-not-integer",
        "head-type-missing",
        "negative-max-workers",
    ],
)
def test_ray_rejects_a_broken_config(mutate: Any, error: type[Exception]) -> None:
    config = _config()
    mutate(config)
    with pytest.raises(error):
        _ray_validate(config)


def test_head_runs_mlflow_on_loopback_over_a_database() -> None:
    config = _config()
    servers = _program_args(_head_commands(config), "mlflow", "server")
    assert len(servers) == 1, f"expected one `mlflow server` on the head, found {servers}"
    args = servers[0]
    assert _option(args, "--host") == "127.0.0.1"
    assert _option(args, "--port") in (None, "5000")  # README: --tracking-uri http://127.0.0.1:5000
    backend = _option(args, "--backend-store-uri")
    assert backend is not None, "MLflow must not fall back to its default store"
    scheme = urlsplit(backend).scheme.split("+")[0]
    assert scheme in DATABASE_SCHEMES, f"backend store {backend!r} is not a database"
    artifacts = _option(args, "--artifacts-destination")
    assert artifacts is not None
    assert "--no-serve-artifacts" not in args
    assert "--disable-security-middleware" not in args
    # Only the head runs it.
    assert not _program_args(config.get("worker_start_ray_commands", []), "mlflow", "server")


def test_dashboard_and_job_server_bind_to_loopback() -> None:
    config = _config()
    heads = _program_args(config["head_start_ray_commands"], "ray", "start")
    assert heads, "head_start_ray_commands must start Ray"
    for args in heads:
        assert "--head" in args
        assert _option(args, "--dashboard-host") == "127.0.0.1"
        assert _option(args, "--dashboard-port") in (None, "8265")  # `ray dashboard`'s default


def test_no_command_listens_on_every_interface() -> None:
    config = _config()
    everything = [
        command for key, value in config.items() if key.endswith("_commands") for command in value
    ]
    assert everything
    for command in everything:
        assert "0.0.0.0" not in command, command
        assert "::" not in _words(command), command


def test_a_worker_type_has_a_gpu() -> None:
    config = _config()
    workers = {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    gpu_workers = [
        node
        for node in workers.values()
        if node["resources"].get("GPU", 0) >= 1 and node.get("max_workers", 0) >= 1
    ]
    assert gpu_workers, f"no worker type with a GPU and max_workers >= 1 in {sorted(workers)}"
    for node in gpu_workers:
        assert node.get("min_workers", 0) <= node["max_workers"] <= config["max_workers"]


def test_setup_installs_the_lock_then_the_project_without_resolving() -> None:
    setup = _config()["setup_commands"]  # every node: the trials run on the workers
    installs = _program_args(setup, "pip", "install")
    lock_at = [
        i
        for i, args in enumerate(installs)
        if "--require-hashes" in args
        and _option(args, "-r") == "/home/ubuntu/apc/requirements.lock"
    ]
    assert lock_at, f"setup_commands must `pip install --require-hashes -r` the lock: {installs}"
    project_at = [i for i, args in enumerate(installs) if "-e" in args]
    assert project_at, "setup_commands must install the project (`pip install -e ...`)"
    assert lock_at[0] < project_at[0]
    assert "--no-deps" in installs[project_at[0]], "the project must not resolve past the lock"
    # Nothing else is installed by name on every node (it would move a locked version).
    named = [
        args for args in installs if args not in (installs[lock_at[0]], installs[project_at[0]])
    ]
    assert named == [["--upgrade", "pip"]]


def test_ray_token_authentication_is_on_for_every_node() -> None:
    config = _config()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if _program_args([c], "ray", "start")]
        assert starts, key
        for command in starts:
            words = _words(command)
            assert "RAY_AUTH_MODE=token" in words, command
            assert words.index("RAY_AUTH_MODE=token") < words.index("ray"), command
    fetch = " ".join(config["setup_commands"])
    assert "--secret-id apc/ray-auth-token" in fetch
    assert "~/.ray/auth_token" in fetch


def test_mlflow_runs_its_auth_app_over_verified_tls_without_secrets_in_the_file() -> None:
    config = _config()
    (args,) = _program_args(_head_commands(config), "mlflow", "server")
    assert _option(args, "--app-name") == "basic-auth"
    backend = _option(args, "--backend-store-uri")
    assert backend is not None
    assert "sslmode=verify-full" in urlsplit(backend).query
    assert urlsplit(backend).password is None
    text = CLUSTER_YAML.read_text()
    # Secrets come from Secrets Manager at setup time; no literal value is assigned here.
    assert not re.search(r"(PASSWORD|SECRET_KEY|AUTH_TOKEN)=(?![%$\"])", text), (
        "a secret in the file"
    )
    assert "admin_password =" not in text


def test_the_installed_project_is_the_mounted_repository() -> None:
    config = _config()
    installs = _program_args(config["setup_commands"], "pip", "install")
    editable = {args[args.index("-e") + 1] for args in installs if "-e" in args}
    mounts = config.get("file_mounts", {})
    assert editable <= {remote for remote, local in mounts.items() if local in (".", "./")}, (
        f"`pip install -e {editable}` is not a mount of the repository: {mounts}"
    )


def _section(page: str, title: str) -> str:
    text = (ROOT / page).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize("page", ["README.md", "docs/operations.md"])
def test_cluster_commands_in_the_docs_use_flags_apc_has(page: str) -> None:
    """Every `apc ...` command of a "Running on a cluster" section parses with apc's own CLI."""
    from study.cli import _parser

    section = _section(page, "Running on a cluster")
    code = re.sub(r"\\\n\s*", " ", section)  # join backslash continuations
    commands = [
        line[line.index("apc run") :]
        for line in code.splitlines()
        if line.startswith("    ") and "apc run" in line
    ]
    commands += re.findall(r"`(apc pareto [^`]*)`", section)
    assert len(commands) >= 3, commands
    for command in commands:
        words = shlex.split(command)
        try:
            _parser().parse_args(words[1:])
        except SystemExit as error:  # argparse: unknown flag or bad value
            pytest.fail(f"{page} command does not parse ({error}): {command}")
