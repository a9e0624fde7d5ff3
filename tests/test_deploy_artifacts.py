"""Static checks of the deployment artifacts: Dockerfile, .dockerignore, deploy/, docker-compose.yml.

No Docker engine runs on the development machines or in CI, so nothing here builds or starts a container. Instead:

- the Dockerfile is parsed with BuildKit's own parser (the ``dockerfile`` package) and checked for a pinned base, a
  non-root user, the JRE, no build tools in the final stage, the health check and the entry point;
- the IAM policies are compared with the AWS calls the code makes (found by scanning the sources for boto3
  operations) plus the KCL's documented calls: every call is allowed, and nothing else is;
- the ECS task definition and the Compose file are checked against the CLI and the Settings they configure, and the
  Compose file against the Compose Specification schema (and ``docker compose config`` when a Compose v2 CLI exists).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import botocore.session
import click
import dockerfile
import jsonschema
import pytest
import yaml
from botocore import xform_name
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from clickstream import cli
from consumer.kcl_worker import kcl_properties
from runtime.settings import (
    AWS_LEASE_ASSIGNMENT_MILLIS,
    AWS_SHARD_SYNC_MILLIS,
    Settings,
    env_var_name,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}

#: Template tokens of deploy/*.json (rendered with e.g. envsubst); deploy/README.md documents each one.
PLACEHOLDERS = {
    "AWS_REGION": "eu-west-1",
    "AWS_ACCOUNT_ID": "123456789012",
    "STREAM_NAME": DEFAULTS["stream_name"],
    "KCL_APPLICATION_NAME": DEFAULTS["application_name"],
    "BUCKET": DEFAULTS["bucket"],
    "PREFIX": DEFAULTS["prefix"],
    "IMAGE_URI": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/clickstream-rfm:0.1.0",
    "LOG_GROUP": "/ecs/clickstream-rfm",
    "KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab",
    "ALARM_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:clickstream-alarms",
    "SHARD_COUNT": "4",
}
REGION, ACCOUNT = PLACEHOLDERS["AWS_REGION"], PLACEHOLDERS["AWS_ACCOUNT_ID"]
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{PLACEHOLDERS['STREAM_NAME']}"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{PLACEHOLDERS['KCL_APPLICATION_NAME']}"
BUCKET_ARN = f"arn:aws:s3:::{PLACEHOLDERS['BUCKET']}"
OBJECTS_ARN = f"{BUCKET_ARN}/{PLACEHOLDERS['PREFIX']}/*"
RESOURCE_OF_KIND = {
    "stream": STREAM_ARN,
    "bucket": BUCKET_ARN,
    "object": OBJECTS_ARN,
    "table": TABLE_ARN,
    "none": "*",
}

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|[\w.+-]+-dev|git|curl|wget)\b")


def render(text: str) -> str:
    unknown = set(re.findall(r"\$\{(\w+)\}", text)) - set(PLACEHOLDERS)
    assert not unknown, f"undocumented placeholders: {sorted(unknown)}"
    return re.sub(r"\$\{(\w+)\}", lambda match: PLACEHOLDERS[match.group(1)], text)


def load_json(name: str) -> Any:
    return json.loads(render((DEPLOY / name).read_text(encoding="utf-8")))


@functools.cache
def cli_env_vars() -> frozenset[str]:
    """Environment variables the CLI reads: one per Settings field (and its aliases), plus click options'."""
    names = {env_var_name(field) for field in Settings.model_fields}
    for field in Settings.model_fields.values():
        choices = getattr(field.validation_alias, "choices", [])
        names |= {choice for choice in choices if isinstance(choice, str) and choice.isupper()}

    def walk(command: click.Command) -> Iterator[click.Command]:
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    for command in walk(cli.main):
        names |= {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}
    return frozenset(names)


def clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CLICKSTREAM_", "AWS_")):
            monkeypatch.delenv(name)


def assert_env_configures_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every CLICKSTREAM_* name is one the CLI reads, and the values pass Settings validation."""
    unknown = {name for name in env if name.startswith("CLICKSTREAM_")} - cli_env_vars()
    assert not unknown, f"not a setting: {sorted(unknown)}"
    clear_environment(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


def invoke_args(command: list[str]) -> click.Context:
    """Parse a `clickstream ...` command line with the real CLI (options and values checked, nothing run)."""
    name, *args = command
    assert name in cli.main.commands, f"no such command: clickstream {name}"
    return cli.main.commands[name].make_context(name, list(args))


# ====================================================================================================== Dockerfile
@functools.cache
def dockerfile_stages() -> list[list[dockerfile.Command]]:
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    stages: list[list[dockerfile.Command]] = [[]]
    for command in commands:
        if command.cmd == "FROM":
            stages.append([])
        stages[-1].append(command)
    return stages  # stages[0]: global ARGs before the first FROM


def global_args() -> dict[str, str]:
    return dict(command.value[0].split("=", 1) for command in dockerfile_stages()[0] if command.cmd == "ARG")


def base_image(stage: list[dockerfile.Command]) -> str:
    image = stage[0].value[0]
    return re.sub(r"\$\{(\w+)\}", lambda match: global_args()[match.group(1)], image)


def env_of(stage: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def runtime_stage() -> list[dockerfile.Command]:
    return dockerfile_stages()[-1]


def test_base_images_are_pinned_python_matching_pyproject() -> None:
    requires_python = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in dockerfile_stages()[1:]:
        image = base_image(stage)
        match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", image)
        assert match, f"{image}: pin python:X.Y.Z-slim-bookworm (optionally @sha256:...), never :latest"
        assert Version(match.group(1)) in requires_python


def test_final_stage_runs_as_non_root_user_created_for_the_state_dir() -> None:
    stage = runtime_stage()
    names = [command.cmd for command in stage]
    users = [command.value[0] for command in stage if command.cmd == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit()
    assert max(i for i, name in enumerate(names) if name == "USER") < names.index("ENTRYPOINT")
    setup = " ".join(command.value[0] for command in stage if command.cmd == "RUN")
    assert f"useradd --system --uid {uid}" in setup
    state_dir = env_of(stage)["CLICKSTREAM_STATE_DIR"]
    assert state_dir == "/var/lib/clickstream"
    assert re.search(rf"install -d -o clickstream -g clickstream -m 0750 {state_dir}", setup)
    volumes = [json.loads(command.original.split(None, 1)[1]) for command in stage if command.cmd == "VOLUME"]
    # Bind mounts (ECS) and named volumes (Compose) of declared volumes inherit the image's ownership.
    assert [state_dir, "/tmp"] in volumes


def test_final_stage_has_the_jre_and_no_build_tools() -> None:
    stage = runtime_stage()
    installs = [c.value[0] for c in stage if c.cmd == "RUN" and "apt-get install" in c.value[0]]
    assert len(installs) == 1
    install = installs[0]
    assert "openjdk-17-jre-headless" in install
    assert "--no-install-recommends" in install and "rm -rf /var/lib/apt/lists/*" in install
    packages = re.search(r"apt-get install (.*?);", install).group(1)
    assert not BUILD_TOOLS.search(packages), packages
    copies_from_builder = [
        c for c in stage if c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags)
    ]
    assert [c.value for c in copies_from_builder] == [("/opt/venv", "/opt/venv")]
    builder = dockerfile_stages()[1]
    assert "pip check" in " ".join(c.value[0] for c in builder if c.cmd == "RUN")


def test_health_check_entry_point_and_default_command() -> None:
    stage = runtime_stage()
    (healthcheck,) = [command for command in stage if command.cmd == "HEALTHCHECK"]
    assert healthcheck.json and healthcheck.value == ("CMD", "clickstream", "health")
    assert "health" in cli.main.commands
    (entrypoint,) = [command for command in stage if command.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value[-1] == "clickstream"
    (default_command,) = [command for command in stage if command.cmd == "CMD"]
    assert default_command.json and list(default_command.value) == ["worker"]
    invoke_args(list(default_command.value))


def test_image_environment_has_no_secrets_and_only_real_settings() -> None:
    for stage in dockerfile_stages()[1:]:
        env = env_of(stage)
        assert not [name for name in env if SECRET_NAME.search(name)]
        assert {n for n in env if n.startswith("CLICKSTREAM_")} <= cli_env_vars()
    assert env_of(runtime_stage())["PATH"].startswith("/opt/venv/bin:")


def copy_sources() -> list[str]:
    builder = dockerfile_stages()[1]
    return [source for c in builder if c.cmd == "COPY" and not c.flags for source in c.value[:-1]]


#: Packages for development and demos only: never in the image, and no runtime package imports them at load time.
DEV_ONLY_PACKAGES = {"emulator"}


def test_builder_copies_every_runtime_package_and_the_pins_and_not_the_emulator() -> None:
    sources = set(copy_sources())
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    runtime_packages = packages - DEV_ONLY_PACKAGES
    assert runtime_packages <= sources, (
        f"packages not copied into the image build: {sorted(runtime_packages - sources)}"
    )
    assert not DEV_ONLY_PACKAGES & sources, "the emulator is for development and demos"
    assert {"pyproject.toml", "README.md", "deploy/constraints.txt"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_runtime_packages_load_without_the_emulator_and_its_dependencies() -> None:
    for package in set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]) - DEV_ONLY_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            top_level = re.findall(
                r"^(?:from|import) (emulator|moto|hypercorn)\b", path.read_text(), re.MULTILINE
            )
            assert not top_level, f"{path.relative_to(ROOT)} imports {top_level} at load time"
    pinned = pins()
    assert not {"moto", "hypercorn"} & set(pinned), "dev-only distributions in the image"


def test_runtime_dependencies_are_imported_by_the_product() -> None:
    """Every runtime dependency is used (kept to what the worker, producer and CLI import)."""
    import_names = {
        "kclpy-ext": "amazon_kclpy",
        "pydantic-settings": "pydantic_settings",
        "localstack-client": "localstack_client",
    }
    sources = "\n".join(
        path.read_text()
        for package in set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]) - DEV_ONLY_PACKAGES
        for path in (ROOT / package).rglob("*.py")
    )
    for text in PYPROJECT["project"]["dependencies"]:
        name = canonicalize_name(Requirement(text).name)
        module = import_names.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(from|import) {module}\b", sources, re.MULTILINE), f"{name} is never imported"


# ==================================================================================================== .dockerignore
def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().lstrip("/") for line in lines if line.strip() and not line.lstrip().startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus ``**``) as a regex over context-relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """A path is left out if it or one of its parent directories matches (no ``!`` exceptions are used)."""
    assert not any(pattern.startswith("!") for pattern in dockerignore_patterns())
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(pattern_regex(p).fullmatch(prefix) for p in dockerignore_patterns() for prefix in prefixes)


def test_dockerignore_keeps_secrets_state_and_tests_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/test_settings_and_cli.py",
        "state/shards/a.duckdb",
        "demo-output/worker.log",
        "consumer/__pycache__/x.cpython-311.pyc",
        ".env",
        ".mypy_cache/x",
        "deploy/iam-task-role-policy.json",
        "docs/clv_example.md",
    ):
        assert ignored(path), path


def test_dockerignore_keeps_everything_the_build_copies() -> None:
    for source in copy_sources():
        files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert not ignored(relative), relative


# ==================================================================================================== constraints
def pins() -> dict[str, Version]:
    lines = (DEPLOY / "constraints.txt").read_text(encoding="utf-8").splitlines()
    result = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            assert canonicalize_name(name) not in result, f"pinned twice: {name}"
            result[canonicalize_name(name)] = Version(version)
    return result


def test_constraints_pin_every_runtime_dependency_within_pyproject() -> None:
    pinned = pins()
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"runtime dependency not pinned: {requirement}"
        assert pinned[name] in requirement.specifier, f"{name}=={pinned[name]} violates {requirement}"


def test_constraints_are_closed_under_dependencies() -> None:
    """Every requirement of a pinned distribution is pinned too (checked where the test env has that version)."""
    pinned = pins()
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.14",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "extra": "",
    }
    checked = 0
    for name, version in pinned.items():
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(distribution.version) != version:
            continue
        checked += 1
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in pinned, f"{name} needs {requirement} but it is not pinned"
            assert pinned[dependency] in requirement.specifier, f"{name} needs {requirement}"
    assert checked >= len(PYPROJECT["project"]["dependencies"])


# ============================================================================================================= IAM
SERVICES = ("s3", "kinesis", "dynamodb", "cloudwatch")

#: IAM action and resource kind of each boto3 operation whose IAM action is not simply service:Operation.
IAM_OF_OPERATION = {
    ("s3", "PutObject"): ("s3:PutObject", "object"),
    ("s3", "GetObject"): ("s3:GetObject", "object"),
    ("s3", "HeadObject"): ("s3:GetObject", "object"),
    ("s3", "DeleteObject"): ("s3:DeleteObject", "object"),
    ("s3", "DeleteObjects"): ("s3:DeleteObject", "object"),
    ("s3", "ListObjectsV2"): ("s3:ListBucket", "bucket"),
    ("s3", "HeadBucket"): ("s3:ListBucket", "bucket"),
    ("s3", "CreateBucket"): ("s3:CreateBucket", "bucket"),
    ("s3", "PutBucketEncryption"): ("s3:PutEncryptionConfiguration", "bucket"),
    ("s3", "GetBucketEncryption"): ("s3:GetEncryptionConfiguration", "bucket"),
    ("s3", "PutPublicAccessBlock"): ("s3:PutBucketPublicAccessBlock", "bucket"),
    ("s3", "GetPublicAccessBlock"): ("s3:GetBucketPublicAccessBlock", "bucket"),
}
#: boto3's managed-transfer methods and the operations they call.
TRANSFER_METHODS = {
    "download_file": [("s3", "HeadObject"), ("s3", "GetObject")],
    "download_fileobj": [("s3", "HeadObject"), ("s3", "GetObject")],
    "upload_file": [("s3", "PutObject")],
    "upload_fileobj": [("s3", "PutObject")],
}
#: Which IAM policy covers the AWS calls of each module (the worker role also runs replay and summary).
ROLE_OF_MODULE = {
    "consumer/": "worker",
    "clickstream/replay.py": "worker",
    "clickstream/outputs.py": "worker",
    "clickstream/manifest.py": "worker",
    "clickstream/summary.py": "worker",
    "clickstream/score.py": "worker",
    "clickstream/current_rows.py": "worker",
    "clickstream/kept_reads.py": "worker",
    "clickstream/commit_ledger.py": "worker",
    "clickstream/html_report.py": "worker",
    "clickstream/resources.py": "setup",
    "producer/": "producer",
}
#: Functions of another role's module that a role's modules run: their calls need that role's grants too.
BORROWED_BY_ROLE = {"setup": ["producer.kinesis_put.wait_until_writable"]}
POLICY_OF_ROLE = {
    "worker": "iam-task-role-policy.json",
    "setup": "iam-setup-policy.json",
    "producer": "iam-producer-policy.json",
}
#: What the KCL MultiLangDaemon (Java, not scanned) calls with the worker's role. Source: "IAM permissions required
#: for KCL consumer applications" (Kinesis Data Streams developer guide) for KCL 3.x, polling retrieval (the worker
#: sets retrievalMode = POLLING, so the enhanced fan-out actions SubscribeToShard, RegisterStreamConsumer and
#: DescribeStreamConsumer are not granted), default metadata table names, no point-in-time recovery and no tags on
#: the tables (so no UpdateContinuousBackups / TagResource).
LEASE_TABLE_ACTIONS = (
    "CreateTable",
    "DescribeTable",
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Scan",
)
KCL_CALLS = {
    # Stream checks and shard discovery before reading; ListShards also finds child shards after a reshard.
    *((f"kinesis:{a}", STREAM_ARN) for a in ("DescribeStream", "DescribeStreamSummary", "ListShards")),
    # Polling reads.
    *((f"kinesis:{a}", STREAM_ARN) for a in ("GetShardIterator", "GetRecords")),
    # Lease table: created on first start; UpdateTable adds the lease-owner index to a table made by KCL 2.x.
    *((f"dynamodb:{a}", TABLE_ARN) for a in (*LEASE_TABLE_ACTIONS, "UpdateTable")),
    ("dynamodb:Query", f"{TABLE_ARN}/index/*"),  # lease discovery through the LeaseOwnerToLeaseKeyIndex GSI
    # KCL 3.x's coordinator state (leader election, migration state) and worker metrics (CPU for lease balancing).
    *((f"dynamodb:{a}", f"{TABLE_ARN}-CoordinatorState") for a in LEASE_TABLE_ACTIONS),
    *((f"dynamodb:{a}", f"{TABLE_ARN}-WorkerMetricStats") for a in LEASE_TABLE_ACTIONS),
    # KCL metrics (metricsLevel SUMMARY in AWS), namespace = application name; the resource must be "*".
    ("cloudwatch:PutMetricData", "*"),
}


@functools.cache
def operation_names() -> dict[str, list[tuple[str, str]]]:
    session = botocore.session.get_session()
    names: dict[str, list[tuple[str, str]]] = {}
    for service in SERVICES:
        for operation in session.get_service_model(service).operation_names:
            names.setdefault(xform_name(operation), []).append((service, operation))
    return names


def aws_calls(source: str) -> set[tuple[str, str]]:
    """(service, operation) of every boto3 client call in a Python source (method calls and paginators)."""
    operations = operation_names()
    calls: set[tuple[str, str]] = set()
    for method in re.findall(r"\.(\w+)\(", source):
        if method in TRANSFER_METHODS:
            calls.update(TRANSFER_METHODS[method])
        elif method in operations:
            assert len(operations[method]) == 1, f"{method} is ambiguous: {operations[method]}"
            calls.add(operations[method][0])
    for method in re.findall(r"get_paginator\(\s*[\"'](\w+)[\"']", source):
        calls.update(operations[method])
    return calls


SCANNED_PACKAGES = ("clickstream", "consumer", "producer", "aggregators", "schemas")


def modules() -> list[Path]:
    return sorted(path for package in SCANNED_PACKAGES for path in (ROOT / package).rglob("*.py"))


def role_of(path: Path) -> str | None:
    relative = path.relative_to(ROOT).as_posix()
    return next((role for prefix, role in ROLE_OF_MODULE.items() if relative.startswith(prefix)), None)


def needed_by_code(role: str) -> dict[tuple[str, str], str]:
    """(IAM action, resource) -> why, for the AWS calls of the modules of one role."""
    needed: dict[tuple[str, str], str] = {}
    sources = [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for path in modules()
        if role_of(path) == role
    ]
    for name in BORROWED_BY_ROLE.get(role, []):
        module, function = name.rsplit(".", 1)
        sources.append((name, inspect.getsource(getattr(importlib.import_module(module), function))))
    for where, source in sources:
        for service, operation in aws_calls(source):
            action, kind = IAM_OF_OPERATION.get((service, operation), (f"{service}:{operation}", None))
            if kind is None:
                assert service != "s3", f"map s3 {operation} in IAM_OF_OPERATION"
                kind = {"kinesis": "stream", "cloudwatch": "none", "dynamodb": "table"}[service]
            needed[(action, RESOURCE_OF_KIND[kind])] = f"{where} calls {operation}"
        if re.search(r"exceptions\.NoSuchKey", source):
            # S3 answers GetObject on a missing key with 404 NoSuchKey only to a caller allowed to ListBucket;
            # without it the answer is 403 AccessDenied and the "missing" branch never runs.
            needed[("s3:ListBucket", BUCKET_ARN)] = f"{where} expects NoSuchKey"
    return needed


def as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def granted(policy: dict[str, Any]) -> set[tuple[str, str]]:
    pairs = set()
    for statement in policy["Statement"]:
        actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        pairs |= {(action, resource) for action in actions for resource in resources}
    return pairs


POLICY_FILES = sorted(path.name for path in DEPLOY.glob("iam-*.json"))


def test_the_policy_files_are_the_roles_and_the_kms_option() -> None:
    assert sorted([*POLICY_OF_ROLE.values(), "iam-kms-policy.json"]) == POLICY_FILES


@pytest.mark.parametrize("name", POLICY_FILES)
def test_policy_is_valid_and_least_privilege_shaped(name: str) -> None:
    policy = load_json(name)
    assert policy["Version"] == "2012-10-17"
    sids = [statement["Sid"] for statement in policy["Statement"]]
    assert len(sids) == len(set(sids))
    operations = {f"{service}:{op}" for service, op in {o for ops in operation_names().values() for o in ops}}
    known_other = {action for action, _ in IAM_OF_OPERATION.values()} | {"kms:Decrypt", "kms:GenerateDataKey"}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "NotPrincipal", "Principal"} & set(statement)
        actions = statement["Action"]
        assert isinstance(actions, list) and actions == sorted(actions)
        for action in actions:
            assert "*" not in action, f"{name}: wildcard action {action}"
            assert action in operations or action in known_other, f"{name}: unknown action {action}"
        for resource in as_list(statement["Resource"]):
            if resource == "*":
                # The one AWS-mandated exception: PutMetricData has no resource; a namespace condition limits it.
                assert actions == ["cloudwatch:PutMetricData"], f"{name}: Resource * for {actions}"
                assert statement["Condition"] == {
                    "StringEquals": {"cloudwatch:namespace": PLACEHOLDERS["KCL_APPLICATION_NAME"]}
                }
            else:
                assert resource.startswith("arn:aws:")
                assert "*" not in resource or resource in (OBJECTS_ARN, f"{TABLE_ARN}/index/*"), resource


@pytest.mark.parametrize("role", sorted(POLICY_OF_ROLE))
def test_policy_grants_exactly_what_the_code_calls(role: str) -> None:
    needed = needed_by_code(role)
    if role == "worker":
        needed.update(dict.fromkeys(KCL_CALLS, "KCL MultiLangDaemon"))
    have = granted(load_json(POLICY_OF_ROLE[role]))
    missing = {pair: why for pair, why in needed.items() if pair not in have}
    assert not missing, f"{role}: calls without permission: {missing}"
    assert not have - set(needed), f"{role}: permissions no call needs: {sorted(have - set(needed))}"


def test_every_module_with_aws_calls_has_a_role_and_the_core_has_none() -> None:
    for path in modules():
        calls = aws_calls(path.read_text(encoding="utf-8"))
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("aggregators/", "schemas/")):
            assert not calls, f"{relative}: the domain core must not call AWS"
        elif calls:
            assert role_of(path), f"{relative} calls {sorted(calls)}: add it to ROLE_OF_MODULE"
    assert needed_by_code("worker") and needed_by_code("setup") and needed_by_code("producer")


def test_kcl_assumptions_behind_the_worker_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_environment(monkeypatch)
    settings = Settings()  # as in AWS: no endpoint override, defaults
    properties = kcl_properties(settings, "python -m consumer.record_processor")
    assert re.search(r"^retrievalMode = POLLING$", properties, re.MULTILINE)  # no enhanced fan-out actions
    # In AWS the KCL publishes metrics (PutMetricData), under the default namespace and table names.
    assert settings.effective_metrics_level != "NONE"
    assert not re.search(r"^(leaseTableName|tableName|namespace)\b", properties, re.MULTILINE)


def test_kms_policy_covers_sse_kms_puts_and_gets_through_s3_only() -> None:
    (statement,) = load_json("iam-kms-policy.json")["Statement"]
    assert statement["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]  # GetObject / PutObject with SSE-KMS
    assert statement["Resource"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{PLACEHOLDERS['KMS_KEY_ID']}"
    assert statement["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}


def test_readme_documents_every_placeholder_and_policy() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for name in PLACEHOLDERS:
        assert f"${{{name}}}" in readme, name
    for name in [*POLICY_FILES, "ecs-task-definition.json", "constraints.txt", "cloudwatch-alarms.json"]:
        assert name in readme, name


def test_the_render_command_of_the_readme_names_every_placeholder() -> None:
    """envsubst with a list of names renders only those: a token left out stays ``${...}`` in the rendered file."""
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    (names,) = re.findall(r"^VARS='([^']*)'$", readme, flags=re.MULTILINE)
    assert set(re.findall(r"\$\{(\w+)\}", names)) == set(PLACEHOLDERS)
    (exported,) = re.findall(r"^export (.*?)(?<!\\)$", readme, flags=re.MULTILINE | re.DOTALL)
    assert set(re.findall(r"(\w+)=", exported)) == set(PLACEHOLDERS)


# ====================================================================================================== CloudWatch
def alarms() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = load_json("cloudwatch-alarms.json")
    return found


def alarm_metrics(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm reads: its own, or those of its metric math."""
    if "MetricName" in alarm:
        return [{key: alarm[key] for key in ("Namespace", "MetricName", "Dimensions")}]
    return [query["MetricStat"]["Metric"] for query in alarm["Metrics"] if "MetricStat" in query]


def test_every_alarm_is_a_valid_put_metric_alarm_input() -> None:
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricAlarm")
    names = [alarm["AlarmName"] for alarm in alarms()]
    assert len(names) == len(set(names))
    for alarm in alarms():
        validate_parameters(alarm, shape.input_shape)  # raises on a wrong name, type or a missing field
        assert alarm["AlarmActions"] == alarm["OKActions"] == [PLACEHOLDERS["ALARM_TOPIC_ARN"]]
        assert alarm["TreatMissingData"] in {"breaching", "notBreaching"}, "said, not left to the default"
        assert alarm["AlarmName"].startswith(PLACEHOLDERS["KCL_APPLICATION_NAME"] + "-")


def test_alarms_read_the_metrics_the_worker_writes_by_the_dimensions_it_writes() -> None:
    from consumer.metrics import NAMESPACE, UNITS, emf_document

    settings = load_settings(
        stream_name=PLACEHOLDERS["STREAM_NAME"], application_name=PLACEHOLDERS["KCL_APPLICATION_NAME"]
    )
    document = emf_document(dict.fromkeys(UNITS, 1.0), settings.metric_dimensions)
    (directive,) = document["_aws"]["CloudWatchMetrics"]  # type: ignore[index]
    written = {
        tuple(sorted((name, str(document[name])) for name in names)) for names in directive["Dimensions"]
    }
    for alarm in alarms():
        for metric in alarm_metrics(alarm):
            if metric["Namespace"] == "AWS/Kinesis":  # what producers put, as Kinesis counts it
                assert metric["Dimensions"] == [{"Name": "StreamName", "Value": PLACEHOLDERS["STREAM_NAME"]}]
                continue
            assert metric["Namespace"] == NAMESPACE
            assert metric["MetricName"] in UNITS, alarm["AlarmName"]
            dimensions = tuple(sorted((item["Name"], item["Value"]) for item in metric["Dimensions"]))
            assert dimensions in written, alarm["AlarmName"]


def test_the_readme_s_suggested_alarms_are_all_templated() -> None:
    """Every metric the README's table suggests an alarm for has one, but the two said not to be templated."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("| metric | unit | from | meaning | suggested alarm |\n", 1)[1].split("\n\n", 1)[0]
    suggested = set()
    for row in table.splitlines()[1:]:
        cells = row.strip("|").split(" | ")
        if cells[-1].strip() not in {"", "—"}:
            suggested.update(re.findall(r"`(\w+)`", cells[0]))
    assert len(suggested) > 10, "the README's metric table was found"
    templated = {metric["MetricName"] for alarm in alarms() for metric in alarm_metrics(alarm)}
    assert suggested - templated == {"DuplicateEvents", "ParentStateMissing"}


#: How often the worker writes its gauges (CheckpointAgeSeconds among them): consumer/kcl_worker.py's run loop.
GAUGE_INTERVAL_SECONDS = 60


def test_thresholds_that_follow_settings_are_those_of_the_defaults_and_the_task() -> None:
    by_metric = {alarm["AlarmName"].rsplit("-", 1)[1]: alarm for alarm in alarms()}
    flush_max = float(ecs_env()["CLICKSTREAM_FLUSH_MAX_SECONDS"])
    assert flush_max == DEFAULTS["flush_max_seconds"]
    stuck = float(ecs_env().get("CLICKSTREAM_STUCK_SHARD_SECONDS", DEFAULTS["stuck_shard_seconds"]))
    assert stuck == DEFAULTS["stuck_shard_seconds"]
    # A warning before the stuck-shard exit: above the flush age limit (a healthy shard checkpoints at least that
    # often, plus one flush), below the age at which the worker exits 3 and stops writing the gauge, by enough for
    # a gauge or two to see it. At or above the stuck limit, the alarm could fire only if a gauge fell in the 5 s
    # between the limit and the worker's next stuck check.
    checkpoint_age = by_metric["CheckpointAgeSeconds"]["Threshold"]
    assert checkpoint_age == 3 * flush_max
    assert flush_max < checkpoint_age < stuck
    assert stuck - checkpoint_age >= GAUGE_INTERVAL_SECONDS
    assert by_metric["ArrivalToDurableP99"]["Threshold"] == 2 * flush_max + 30
    assert by_metric["ArrivalToDurableP99"]["ExtendedStatistic"] == "p99"
    memory_mib = int(load_json("ecs-task-definition.json")["memory"])
    leases = int(ecs_env()["CLICKSTREAM_KCL_MAX_LEASES_FOR_WORKER"])
    assert by_metric["StateBytes"]["Threshold"] == 0.8 * (memory_mib - 1536 - leases * 250) * 2**20
    shards = by_metric["ShardsProcessing"]
    assert shards["Threshold"] == int(PLACEHOLDERS["SHARD_COUNT"])
    assert shards["ComparisonOperator"] == "LessThanThreshold" and shards["TreatMissingData"] == "breaching"


# ============================================================================================================= ECS
FARGATE_MEMORY = {
    "256": range(512, 2049, 512),
    "512": range(1024, 4097, 1024),
    "1024": range(2048, 8193, 1024),
    "2048": range(4096, 16385, 1024),
    "4096": range(8192, 30721, 1024),
}


def worker_container() -> dict[str, Any]:
    (container,) = load_json("ecs-task-definition.json")["containerDefinitions"]
    return container


def ecs_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in worker_container()["environment"]}


def test_task_definition_is_a_fargate_task_sized_for_jvm_and_python() -> None:
    task = load_json("ecs-task-definition.json")
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    assert int(task["memory"]) in FARGATE_MEMORY[task["cpu"]]
    # JVM -Xmx1g + non-heap + the supervisor + one Python process per shard.
    assert int(task["memory"]) >= 4096
    assert 21 <= task["ephemeralStorage"]["sizeInGiB"] <= 200
    assert task["taskRoleArn"].startswith(f"arn:aws:iam::{ACCOUNT}:role/")
    assert task["executionRoleArn"].startswith(f"arn:aws:iam::{ACCOUNT}:role/")
    container = worker_container()
    assert container["name"] == "worker" and container["essential"] is True
    assert container["image"] == PLACEHOLDERS["IMAGE_URI"]


def test_task_sizes_the_readme_suggests_are_fargate_sizes() -> None:
    """A `"memory"` the README suggests, with the `"cpu"` named beside it or else the template's, is a size Fargate
    runs: beyond 16 GiB, 2 vCPU is not enough."""
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    template_cpu = load_json("ecs-task-definition.json")["cpu"]
    suggested = [line for line in readme.splitlines() if re.search(r'"memory": "\d+"', line)]
    assert suggested, "the sizing table was found"
    for line in suggested:
        (memory,) = re.findall(r'"memory": "(\d+)"', line)
        (cpu,) = re.findall(r'"cpu": "(\d+)"', line) or [template_cpu]
        assert int(memory) in FARGATE_MEMORY[cpu], line


def test_task_definition_caps_the_leases_a_task_takes_at_what_its_memory_holds() -> None:
    """Without a cap, the last task standing after a scale-in or a failure takes every shard and runs out of
    memory, and so does its replacement (deploy/README.md, leases per task). The cap fits the task by the README's
    sizing rule, 1.5 GiB for the JVM and shared libraries plus 250 MiB and the state a shard, with room for a
    state of 256 MiB a shard (about 8 M remembered event ids)."""
    task = load_json("ecs-task-definition.json")
    cap = int(ecs_env()["CLICKSTREAM_KCL_MAX_LEASES_FOR_WORKER"])
    assert cap >= 1 and 1536 + cap * (250 + 256) <= int(task["memory"])


def test_stop_timeout_covers_the_graceful_stop() -> None:
    container = worker_container()
    context = invoke_args(container["command"])
    assert container["command"][0] == "worker"
    stop_deadline = context.params["stop_deadline_seconds"] or ecs_env().get(
        "CLICKSTREAM_STOP_DEADLINE_SECONDS", DEFAULTS["stop_deadline_seconds"]
    )
    grace_millis = ecs_env().get(
        "CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS", DEFAULTS["kcl_shutdown_grace_millis"]
    )
    grace_seconds = int(grace_millis) / 1000
    # SIGTERM -> the KCL gives processors grace_seconds to flush and checkpoint -> the worker kills the JVM after
    # stop_deadline -> ECS sends SIGKILL after stopTimeout (at most 120 s on Fargate).
    assert grace_seconds < float(stop_deadline) < container["stopTimeout"] <= 120


def test_health_check_and_logs() -> None:
    container = worker_container()
    health = container["healthCheck"]
    assert health["command"] == ["CMD", "clickstream", "health"]
    assert health["startPeriod"] <= 300 and health["timeout"] < health["interval"]
    logs = container["logConfiguration"]
    assert logs["logDriver"] == "awslogs"
    assert {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"} <= set(logs["options"])


def test_environment_is_real_settings_with_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = ecs_env()
    assert not [name for name in env if SECRET_NAME.search(name)]
    assert "AWS_ENDPOINT_URL" not in env  # real AWS
    settings = assert_env_configures_settings(env, monkeypatch)
    assert settings.stream_name == PLACEHOLDERS["STREAM_NAME"]
    assert settings.application_name == PLACEHOLDERS["KCL_APPLICATION_NAME"]
    assert (settings.bucket, settings.prefix) == (PLACEHOLDERS["BUCKET"], PLACEHOLDERS["PREFIX"])
    assert settings.effective_metrics_level != "NONE"
    for secret in worker_container()["secrets"]:
        assert secret["name"].startswith("CLICKSTREAM_") and secret["name"] in cli_env_vars()
        assert re.match(r"arn:aws:(ssm|secretsmanager):", secret["valueFrom"])


#: The condition key of a bucket policy -> the PutObject argument the sink sends it as.
_ENCRYPTION_HEADER = {
    "s3:x-amz-server-side-encryption": "ServerSideEncryption",
    "s3:x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
}


def denied_puts(policy: dict[str, Any], arguments: dict[str, str]) -> list[str]:
    """The Deny statements of ``policy`` that refuse a TLS PutObject with these encryption arguments."""
    denied = []
    for statement in policy["Statement"]:
        if statement["Effect"] != "Deny" or statement["Action"] not in ("s3:PutObject", "s3:*"):
            continue
        for operator, conditions in statement["Condition"].items():
            if operator == "StringNotEquals" and any(
                arguments.get(_ENCRYPTION_HEADER[key]) != value for key, value in conditions.items()
            ):
                denied.append(statement["Sid"])
    return denied


@pytest.mark.parametrize(
    ("sse", "key", "policy_file", "refused"),
    [
        ("AES256", None, "s3-bucket-policy-sse-s3.json", []),
        (
            "aws:kms",
            f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{PLACEHOLDERS['KMS_KEY_ID']}",
            "s3-bucket-policy-sse-kms.json",
            [],
        ),
        # the policy compares the header as text: a bare key id is another key to it (the README says: an ARN)
        (
            "aws:kms",
            PLACEHOLDERS["KMS_KEY_ID"],
            "s3-bucket-policy-sse-kms.json",
            ["DenyPutsWithAnotherKmsKey"],
        ),
        (
            "AES256",
            None,
            "s3-bucket-policy-sse-kms.json",
            ["DenyPutsWithoutTheWorkersEncryption", "DenyPutsWithAnotherKmsKey"],
        ),
    ],
)
def test_the_offered_bucket_policy_lets_the_workers_own_puts_through(
    sse: str, key: str | None, policy_file: str, refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendered as the README says, each bucket policy refuses no PUT the sink makes with the matching settings
    (and the task definition's own encryption is the SSE-S3 one)."""
    from consumer.s3_sink import S3ParquetSink

    assert ecs_env()["CLICKSTREAM_SSE"] == "AES256"
    clear_environment(monkeypatch)
    settings = load_settings(sse=sse, sse_kms_key_id=key)
    sink = S3ParquetSink(None, settings)
    assert denied_puts(load_json(policy_file), sink._encryption) == refused


def test_read_only_root_with_writable_state_and_tmp() -> None:
    container = worker_container()
    assert container["readonlyRootFilesystem"] is True
    assert container["user"] == next(c.value[0] for c in runtime_stage() if c.cmd == "USER")
    mounts = {mount["containerPath"]: mount for mount in container["mountPoints"]}
    assert set(mounts) == {ecs_env()["CLICKSTREAM_STATE_DIR"], "/tmp"}
    assert not any(mount["readOnly"] for mount in mounts.values())
    volumes = {volume["name"] for volume in load_json("ecs-task-definition.json")["volumes"]}
    assert {mount["sourceVolume"] for mount in mounts.values()} == volumes


# ========================================================================================================= Compose
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def compose_cli() -> list[str] | None:
    """A Compose v2 CLI if installed (``config`` needs no Docker engine)."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        result = subprocess.run([*command, "version"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and re.search(r"\bv?2\.\d+", result.stdout):
            return command
    return None


def test_only_the_worker_service_keeps_the_images_health_check() -> None:
    """The image's HEALTHCHECK is the worker's (`clickstream health` reads its heartbeat): any other service built
    from the image (the one-shot setup, the producer) would turn unhealthy after the start period."""
    on_image = {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image", "").startswith("clickstream-rfm") or "build" in service
    }
    assert set(on_image) == {"init", "worker", "producer"}
    for name, service in on_image.items():
        if name == "worker":
            assert service["healthcheck"]["test"] == ["CMD", "clickstream", "health"]
        else:
            assert service["healthcheck"] == {"disable": True}, name


def test_compose_file_is_valid() -> None:
    schema = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    command = compose_cli()
    if command is None:
        print("no Compose v2 CLI on this machine: validated against the Compose Specification schema only")
        return
    result = subprocess.run(
        [*command, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_localstack_is_pinned_and_healthchecked() -> None:
    localstack = compose()["services"]["localstack"]
    # 4.14.0: the last LocalStack tag that runs without an auth token.
    assert localstack["image"] == "localstack/localstack:4.14.0"
    assert set(localstack["environment"]["SERVICES"].split(",")) == {
        "kinesis",
        "dynamodb",
        "s3",
        "cloudwatch",
    }
    assert "/_localstack/health" in " ".join(localstack["healthcheck"]["test"])
    assert all(port.startswith("127.0.0.1:") for port in localstack.get("ports", []))


def test_startup_order() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown {target}"
    assert services["init"]["depends_on"] == {"localstack": {"condition": "service_healthy"}}
    for name in ("worker", "producer"):
        assert services[name]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}


APP_SERVICES = ("init", "worker", "producer")


def test_app_services_share_the_image_built_here_and_run_real_commands() -> None:
    services = compose()["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    assert [name for name in APP_SERVICES if "build" in services[name]] == ["init"]
    assert services["init"]["build"] == "."
    assert [services[name]["command"][0] for name in APP_SERVICES] == ["setup", "worker", "produce"]
    for name in APP_SERVICES:
        invoke_args(services[name]["command"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_environment_targets_localstack(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {key: str(value) for key, value in compose()["services"][name]["environment"].items()}
    assert env["AWS_ENDPOINT_URL"] == "http://localstack:4566"
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "test"  # dummy credentials only
    settings = assert_env_configures_settings(env, monkeypatch)
    assert settings.aws_endpoint_url == "http://localstack:4566"


def test_worker_service(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = compose()["services"]["worker"]
    env = {key: str(value) for key, value in worker["environment"].items()}
    assert env["AWS_CBOR_ENABLED"] == "false"  # the KCL's Java SDK must not speak CBOR to an emulator
    settings = assert_env_configures_settings(env, monkeypatch)
    assert settings.worker_id == "compose-worker-1"  # stable: a restart reclaims its leases at once
    assert settings.effective_shard_sync_interval_millis < AWS_SHARD_SYNC_MILLIS
    assert settings.effective_lease_assignment_interval_millis < AWS_LEASE_ASSIGNMENT_MILLIS
    assert worker["healthcheck"]["test"] == ["CMD", "clickstream", "health"]
    context = invoke_args(worker["command"])
    grace = settings.kcl_shutdown_grace_millis / 1000
    stop_deadline = context.params["stop_deadline_seconds"] or settings.stop_deadline_seconds
    assert grace < stop_deadline < int(worker["stop_grace_period"].removesuffix("s"))
    state_dir = env_of(runtime_stage())["CLICKSTREAM_STATE_DIR"]
    assert any(volume.endswith(f":{state_dir}") for volume in worker["volumes"])


# ---------------------------------------------------------------------------------------------- make setup's Java
def _fake_java(folder: Path, version: str) -> Path:
    """A ``java`` that reports ``version`` as OpenJDK does (on stderr)."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2024-01-16' >&2\n", encoding="utf-8")
    java.chmod(0o755)
    return java


def test_make_setup_refuses_an_old_java_the_worker_would_be_told_to_run(tmp_path: Path) -> None:
    """CLICKSTREAM_JAVA and JAVA_HOME name the Java the worker runs (find_java): one older than 17 must fail the
    set-up, naming the variable, not be passed over for a JRE installed beside it."""
    old, new = _fake_java(tmp_path / "jdk11", "11.0.22"), _fake_java(tmp_path / "jdk21", "21.0.2")
    base = {key: value for key, value in os.environ.items() if key not in ("CLICKSTREAM_JAVA", "JAVA_HOME")}
    for variable, value, code, said in (
        ("CLICKSTREAM_JAVA", str(old), 1, f"CLICKSTREAM_JAVA names {old} (Java 11)"),
        ("JAVA_HOME", str(old.parents[1]), 1, f"JAVA_HOME names {old} (Java 11)"),
        ("CLICKSTREAM_JAVA", str(tmp_path / "none"), 1, "(not an executable java)"),
        ("CLICKSTREAM_JAVA", str(new), 0, ""),
        ("JAVA_HOME", str(new.parents[1]), 0, ""),
    ):
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-java.sh")],
            env={**base, variable: value},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code and said in result.stderr, (variable, value, result.stderr)
        assert "installing" not in result.stderr
    # a bare name is looked up on the PATH, as the worker does
    on_path = {**base, "PATH": f"{new.parent}{os.pathsep}{old.parent}{os.pathsep}{base.get('PATH', '')}"}
    for value, code, said in (("java", 0, ""), ("java11-nowhere", 1, "(not an executable java)")):
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-java.sh")],
            env={**on_path, "CLICKSTREAM_JAVA": value},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code and said in result.stderr, (value, result.stderr)


def test_make_setup_checks_the_java_it_installed(tmp_path: Path) -> None:
    """After installing Debian's JRE the PATH's java is asked again: with the alternatives set by hand to an older
    Java, the set-up fails naming it rather than pass and leave the worker to fail later."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "id").write_text("#!/bin/sh\necho 0\n", encoding="utf-8")
    old = _fake_java(tmp_path / "jdk11", "11.0.22")
    base = {key: value for key, value in os.environ.items() if key not in ("CLICKSTREAM_JAVA", "JAVA_HOME")}
    for installs, code, said in (("11.0.22", 1, "is Java 11"), ("17.0.9", 0, "")):
        on_path = tmp_path / f"path-{installs}"
        on_path.mkdir()
        (on_path / "java").symlink_to(old)
        # an apt-get whose install points the PATH's java at the Java the alternatives would select
        (tools / "apt-get").write_text(
            "#!/bin/sh\n"
            f'[ "$1" = install ] && printf \'#!/bin/sh\\necho "openjdk version \\\\"{installs}\\\\"" >&2\\n\''
            f" > {on_path}/java.new && chmod +x {on_path}/java.new && mv {on_path}/java.new {on_path}/java\n"
            "exit 0\n",
            encoding="utf-8",
        )
        for tool in tools.iterdir():
            tool.chmod(0o755)
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-java.sh")],
            env={**base, "PATH": f"{tools}{os.pathsep}{on_path}{os.pathsep}/usr/bin{os.pathsep}/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert "installing openjdk-17-jre-headless" in result.stderr, result.stderr
        assert result.returncode == code and said in result.stderr, (installs, result.stderr)
