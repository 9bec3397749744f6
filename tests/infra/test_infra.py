"""Offline checks of infra/: Ray's own cluster-config validation, the KubeRay manifests, the MLflow server
deployment, the project Dockerfile, no literal credentials, and that every `dept-pipeline` command and
option named in infra/, the root README or docs/ exists in the CLI (so renaming an option breaks this test, not a
lab's cluster run)."""
from __future__ import annotations

import configparser
import copy
import fnmatch
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
CLUSTER_YAML = INFRA / "ray" / "cluster.yaml"
KUBERAY = INFRA / "kuberay"
MLFLOW_DIR = INFRA / "mlflow"
DOCKERFILE = INFRA / "Dockerfile"

YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
# A filled-in infra/mlflow/.env is git-ignored local configuration, not part of the repository.
TEXT_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file() and p.name != ".env")
# The root README's longer pages (cluster use, protocols, the UI, ...): their commands are checked as the README's.
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))


def _load_one(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.relative_to(REPO)}: expected one YAML document, found {len(docs)}"
    return docs[0]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---------------------------------------------------------------------------------------------- every file


def test_infra_has_the_expected_files():
    for name in ("Dockerfile", "README.md", "ray/cluster.yaml", "kuberay/raycluster.yaml",
                 "kuberay/rayjob-featurize.yaml", "kuberay/rayjob-tune.yaml", "mlflow/docker-compose.yaml",
                 "mlflow/helm-values.yaml", "mlflow/basic_auth.ini", "mlflow/.env.example"):
        assert (INFRA / name).is_file(), f"infra/{name} is missing"


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_file_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{_rel(path)} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{_rel(path)}: every document must be a mapping"


# ---------------------------------------------------------------------------------------------- ray up


def test_ray_cluster_yaml_passes_rays_validation():
    """The same two steps `ray up` runs before touching AWS: merge Ray's provider defaults, then validate
    against Ray's JSON schema and its cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load_one(CLUSTER_YAML)
    validate_config(copy.deepcopy(config))
    validate_config(prepare_config(copy.deepcopy(config)))


def test_rays_validation_is_not_vacuous():
    # The check above only means something if Ray's validator rejects a broken copy of the same file.
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = _load_one(CLUSTER_YAML)
    worker = next(n for n in broken["available_node_types"] if n != broken["head_node_type"])
    broken["available_node_types"][worker]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_ray_cluster_has_a_cpu_head_and_a_gpu_worker_type():
    config = _load_one(CLUSTER_YAML)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node type should not be a GPU node"
    gpu_workers = {name: t for name, t in types.items()
                   if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "cluster.yaml has no worker node type with GPU resources"
    for name, t in gpu_workers.items():
        assert t.get("max_workers", 0) >= 1, f"GPU worker type {name} can never start (max_workers < 1)"
        assert t["resources"].get("CPU", 0) >= 1, f"GPU worker type {name} advertises no CPU for trials"
    assert config["docker"]["image"] == _project_image(), "cluster.yaml runs another image than KubeRay"


def test_ray_head_keeps_the_dashboard_on_loopback():
    config = _load_one(CLUSTER_YAML)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in start


# ---------------------------------------------------------------------------------------------- KubeRay


def _ray_cluster_specs() -> dict[str, dict]:
    """RayCluster specs by file: a RayCluster's spec, or the cluster a RayJob creates."""
    specs = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        doc = _load_one(path)
        specs[path.name] = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return specs


def _containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_manifests_have_the_expected_kinds():
    kinds = {p.name: (_load_one(p)["apiVersion"], _load_one(p)["kind"]) for p in sorted(KUBERAY.glob("*.yaml"))}
    assert kinds == {
        "raycluster.yaml": ("ray.io/v1", "RayCluster"),
        "rayjob-featurize.yaml": ("ray.io/v1", "RayJob"),
        "rayjob-tune.yaml": ("ray.io/v1", "RayJob"),
    }


@pytest.mark.parametrize("name, command", [("rayjob-featurize.yaml", "featurize"), ("rayjob-tune.yaml", "tune")])
def test_rayjobs_run_one_command_and_shut_down(name, command):
    spec = _load_one(KUBERAY / name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["entrypoint"].split()[:2] == ["dept-pipeline", command]
    if command == "tune":
        assert "--dataset all" in spec["entrypoint"]


def test_kuberay_clusters_have_gpu_workers_and_the_project_image():
    ray_version = _dockerfile_ray_version()
    for name, spec in _ray_cluster_specs().items():
        assert str(spec["rayVersion"]) == ray_version, f"{name}: rayVersion differs from the image's Ray"
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: the head Service must stay internal"
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                             for c in g["template"]["spec"]["containers"])]
        assert gpu_groups, f"{name}: no worker group has an nvidia.com/gpu limit"
        for g in gpu_groups:
            assert g["maxReplicas"] >= 1 and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        for group, container in _containers(spec):
            assert container["image"] == _project_image(), f"{name} ({group}) runs another image"
            for res in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][res]), f"{name} ({group}) {res}"


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|MLFLOW_TRACKING_URI")


def test_kuberay_credentials_come_from_secrets():
    seen = set()
    for name, spec in _ray_cluster_specs().items():
        for group, container in _containers(spec):
            for var in container.get("env", []):
                if SECRET_NAME.search(var["name"]):
                    seen.add(var["name"])
                    assert "value" not in var, f"{name} ({group}): {var['name']} has a literal value"
                    assert "secretKeyRef" in var.get("valueFrom", {}), \
                        f"{name} ({group}): {var['name']} does not come from a Secret"
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"} <= seen


def test_tune_job_gets_mlflow_settings_on_the_head():
    # The driver (which logs to MLflow) runs on the head pod.
    head = _ray_cluster_specs()["rayjob-tune.yaml"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    names = {v["name"] for v in head["env"]}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names


# ---------------------------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, out = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if not logical and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            word, _, rest = logical.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def _dockerfile_ray_version() -> str:
    for word, rest in _dockerfile_instructions():
        if word == "ARG" and rest.startswith("RAY_IMAGE="):
            match = re.match(r"RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-", rest)
            assert match, f"cannot read the Ray version from {rest!r}"
            return match.group(1)
    raise AssertionError("infra/Dockerfile has no ARG RAY_IMAGE=rayproject/ray:<version>-...")


def _project_image() -> str:
    return _load_one(KUBERAY / "raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def _copy_sources() -> list[str]:
    sources = []
    for word, rest in _dockerfile_instructions():
        if word not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            args = json.loads(rest)
        else:
            args = shlex.split(rest)
        if any(a.startswith("--from") for a in args):
            continue  # from another build stage, not the build context
        args = [a for a in args if not a.startswith("--")]
        sources += args[:-1]
    return sources


def test_every_file_the_dockerfile_copies_exists():
    sources = _copy_sources()
    assert {"pyproject.toml", "dept/", "pipelines/", "tune_spaces/"} <= set(sources)
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing, f"infra/Dockerfile copies paths that are not in the repository: {missing}"


def test_dockerignore_does_not_hide_what_the_dockerfile_copies():
    patterns = [p.strip() for p in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for source in _copy_sources():
        path = source.rstrip("/")
        hits = [p for p in patterns if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p)]
        assert not hits, f"{source} is copied by infra/Dockerfile but excluded by {hits}"


def test_dockerfile_runs_as_non_root_and_installs_the_package():
    instructions = _dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install" in runs and "'.[s3]'" in runs


# ---------------------------------------------------------------------------------------------- MLflow server


def _compose() -> dict:
    return _load_one(MLFLOW_DIR / "docker-compose.yaml")


def _mlflow_server_args() -> list[str]:
    command = _compose()["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    return command[2:]


def test_compose_mlflow_server_flags_parse_with_the_installed_mlflow():
    from mlflow.cli import server

    # Compose interpolation (${VAR:-default}) happens before the server sees its arguments.
    args = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", a) for a in _mlflow_server_args()]
    params = server.make_context("server", args).params
    assert params["host"] == "0.0.0.0"
    assert params["backend_store_uri"].startswith("postgresql")
    assert params["artifacts_destination"].startswith("s3://")
    assert params["serve_artifacts"] is True
    assert params["app_name"] == "basic-auth"


def test_compose_publishes_ports_on_loopback_only():
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    published = [(name, p) for name, s in services.items() for p in s.get("ports", [])]
    assert ("mlflow", "127.0.0.1:5000:5000") in published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"compose service {name} publishes {port} beyond loopback"


def test_compose_credentials_come_from_the_env_file():
    for name, service in _compose()["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|USER", var):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:[?-][^}]*)?\}", str(value)), \
                    f"compose service {name}: {var} is not taken from .env"
    env_example = (MLFLOW_DIR / ".env.example").read_text()
    for line in env_example.splitlines():
        var, sep, value = line.partition("=")
        if sep and not line.startswith("#") and re.search(r"PASSWORD|SECRET_KEY", var):
            assert value == "", f".env.example ships a value for {var}"
    assert ".env" in (MLFLOW_DIR / ".gitignore").read_text().split()


def _load_mlflow_auth_module(name: str):
    # Loaded by path: importing the package mlflow.server.auth needs Flask-WTF (MLflow's optional "auth"
    # extra, installed in the server image, not in the project's environment).
    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_infra_test_mlflow_auth_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_basic_auth_ini_is_read_by_mlflow_and_holds_no_credentials(monkeypatch):
    ini = MLFLOW_DIR / "basic_auth.ini"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = _load_mlflow_auth_module("config").read_auth_config()
    _load_mlflow_auth_module("permissions").get_permission(config.default_permission)  # raises if unknown
    assert config.admin_password is None, "basic_auth.ini must not hold the admin password"
    assert config.database_uri.startswith("postgresql")
    assert "@" not in config.database_uri, "the auth database URI must not carry credentials"
    # The compose file mounts it where MLFLOW_AUTH_CONFIG_PATH points.
    mlflow_service = _compose()["services"]["mlflow"]
    target = mlflow_service["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert f"./basic_auth.ini:{target}:ro" in mlflow_service["volumes"]
    parser = configparser.ConfigParser()
    parser.read(ini)
    assert parser["mlflow"]["database_uri"].endswith("/mlflow_auth")
    assert "mlflow_auth" in (MLFLOW_DIR / "initdb" / "10-auth-database.sql").read_text()


def test_compose_file_passes_docker_compose_config(tmp_path):
    """The real Compose parser, where a compose binary is installed (it is not a Python dependency)."""
    if shutil.which("docker-compose"):
        compose = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                    capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    else:
        pytest.skip("no docker compose binary on this machine")
    env = tmp_path / "test.env"
    lines = []
    for line in (MLFLOW_DIR / ".env.example").read_text().splitlines():
        var, sep, value = line.partition("=")
        lines.append(f"{var}=placeholder-{var.lower()}" if sep and not line.startswith("#") and not value else line)
    env.write_text("\n".join(lines) + "\n")
    result = subprocess.run(compose + ["-f", str(MLFLOW_DIR / "docker-compose.yaml"), "--env-file", str(env),
                                       "config", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # And an unfilled .env stops compose before anything starts.
    result = subprocess.run(compose + ["-f", str(MLFLOW_DIR / "docker-compose.yaml"), "--env-file",
                                       str(MLFLOW_DIR / ".env.example"), "config", "--quiet"],
                            capture_output=True, text=True)
    # (Compose reports whichever empty required variable it meets first.)
    assert result.returncode != 0
    assert re.search(r"required variable \w*(PASSWORD|SECRET_KEY)\w* is missing a value", result.stderr), result.stderr


def test_helm_values_turn_auth_on_and_keep_secrets_out():
    values = _load_one(MLFLOW_DIR / "helm-values.yaml")
    assert values["auth"]["enabled"] is True and values["auth"]["existingAdminSecret"]["name"]
    assert values["backendStore"]["postgres"]["enabled"] is True
    assert values["backendStore"]["existingDatabaseSecret"]["name"]
    assert values["artifactRoot"]["proxiedArtifactStorage"] is True and values["artifactRoot"]["s3"]["enabled"]
    assert values["ingress"]["enabled"] is False
    assert values["service"]["type"] == "ClusterIP"


# ---------------------------------------------------------------------------------------------- no secrets

# A credential-looking key followed by a value. Allowed values are references, not secrets: empty, a shell /
# compose variable, an ALL_CAPS variable or Secret key name, a YAML alias, or an obvious placeholder.
SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|secret|token)[\w.-]*)[\"']?\s*[:=]\s*[\"']?([^\s\"',}]*)")
PLACEHOLDER_VALUE = re.compile(r"(\$.*|[A-Z][A-Z0-9_]*|\*[\w-]+|<[^>]*>?|\.\.\.?.*|[{\[|>].*|)")
# Fields that name a key inside a Kubernetes Secret (the value is a key name such as `password`).
KEY_NAME_FIELDS = re.compile(r"(?i)(usernameKey|passwordKey|keyOf\w+)")


def _secret_findings(path: Path, label: str) -> list[str]:
    text = path.read_text(errors="replace")
    findings = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{label}:{lineno}"
        if re.search(r"AKIA[0-9A-Z]{16}", line):
            findings.append(f"{where}: an AWS access key id")
        if "PRIVATE KEY-----" in line:
            findings.append(f"{where}: a private key")
        for m in re.finditer(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s/]+)@", line):
            if not m.group(1).startswith("$"):
                findings.append(f"{where}: a URI with an embedded password")
        for m in SECRET_ASSIGNMENT.finditer(line):
            key, value = m.group(1), m.group(2)
            if KEY_NAME_FIELDS.fullmatch(key) or PLACEHOLDER_VALUE.fullmatch(value):
                continue
            findings.append(f"{where}: {key} = {value!r}")
    return findings


def test_no_literal_secrets_in_infra():
    findings = [f for path in TEXT_FILES for f in _secret_findings(path, _rel(path))]
    assert not findings, "literal credentials in infra/:\n" + "\n".join(findings)


def test_secret_scan_catches_literal_credentials(tmp_path):
    leaked = tmp_path / "leak.yaml"
    leaked.write_text("password: hunter2\nuri: postgresql://mlflow:hunter2@db:5432/mlflow\n"
                      "MLFLOW_TRACKING_PASSWORD=hunter2\naws_access_key_id: AKIAABCDEFGHIJKLMNOP\n")
    clean = tmp_path / "clean.yaml"
    clean.write_text("password: ${POSTGRES_PASSWORD}\npasswordKey: password\nPGPASSWORD: \"\"\n"
                     "key: MLFLOW_TRACKING_PASSWORD\nuri: postgresql+psycopg2://postgres:5432/mlflow\n")
    assert len(_secret_findings(leaked, "leak.yaml")) == 4
    assert _secret_findings(clean, "clean.yaml") == []


# ---------------------------------------------------------------------------------------------- CLI options

INVOCATION = re.compile(r"(?<![\w/.:-])dept-pipeline[ \t]+([^\s`'\"]+)")
# Where one shell command ends inside a line: inline-code quotes, shell operators, a comment.
END_OF_COMMAND = re.compile(r"`|&&|\|\||;|\||\s#")
OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def find_invocations(text: str, commands: set[str]) -> list[tuple[int, str, list[str]]]:
    """Every `dept-pipeline COMMAND --option ...` in a text: (line, command, options). Backslash-continued
    lines are joined. A mention followed by neither a known command nor an option is prose and skipped."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, logical = i + 1, lines[i]
        while logical.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical.rstrip()[:-1] + " " + lines[i].strip().lstrip("#").strip()
        i += 1
        for m in INVOCATION.finditer(logical):
            rest = logical[m.end():]
            end = END_OF_COMMAND.search(rest)
            rest = rest[: end.start()] if end else rest
            word = m.group(1)
            options = [o.split("=")[0] for o in OPTION.findall(rest)]
            if word.startswith("--"):
                found.append((start, "", [word.split("=")[0]] + options))
            elif word in commands or options:
                found.append((start, word, options))
    return found


def _yaml_strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _yaml_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _yaml_strings(v)]
    return []


def _documented_invocations(commands: set[str]) -> list[tuple[str, str, list[str]]]:
    sources = TEXT_FILES + ([REPO / "README.md"] if (REPO / "README.md").is_file() else []) + DOC_PAGES
    found = []
    for path in sources:
        text = path.read_text(errors="replace")
        found += [(f"{_rel(path)}:{line}", cmd, opts) for line, cmd, opts in find_invocations(text, commands)]
        if path.suffix in (".yaml", ".yml"):
            # Folded YAML scalars (RayJob entrypoints) span lines without backslashes: read them parsed too.
            for doc in yaml.safe_load_all(text):
                for s in _yaml_strings(doc):
                    found += [(f"{_rel(path)} (parsed)", cmd, opts) for _, cmd, opts in find_invocations(s, commands)]
    return found


def test_find_invocations_reads_shell_markdown_and_continuations():
    text = (
        "ray job submit -- dept-pipeline tune --features s3://b/f \\\n"
        "    --dataset all --space=smoke && echo done --not-an-option\n"
        "Run `dept-pipeline report --format md` and the dept-pipeline image "
        "registry.example.com/lab/dept-pipeline:0.1\n"
        "dept-pipeline featurise --out x\n"
        "dept-pipeline --verbose datasets\n"
    )
    assert find_invocations(text, {"tune", "report", "featurize", "datasets"}) == [
        (1, "tune", ["--features", "--dataset", "--space"]),
        (3, "report", ["--format"]),
        (4, "featurise", ["--out"]),
        (5, "", ["--verbose"]),
    ]


def _cli():
    try:
        from pipelines.cli import main
    except Exception as e:  # the CLI is part of the contract these files rely on
        pytest.fail(f"cannot import the CLI pipelines.cli.main: {e}")
    return main


def _option_names(command) -> set[str]:
    names = {o for p in command.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
             if o.startswith("--")} | {"--help"}
    # A group (`dept-pipeline miniature data --suite ...`): find_invocations does not read the subcommand's
    # name, so an option counts when one of the group's subcommands has it.
    for sub in getattr(command, "commands", {}).values():
        names |= _option_names(sub)
    return names


def test_every_documented_cli_option_exists():
    main = _cli()
    invocations = _documented_invocations(set(main.commands))
    infra_commands = {cmd for where, cmd, _ in invocations if where.startswith("infra/")}
    assert {"featurize", "tune"} <= infra_commands, "found no featurize/tune invocation in infra/"
    problems = set()
    for where, cmd, options in invocations:
        if cmd and cmd not in main.commands:
            problems.add(f"{where}: no command `dept-pipeline {cmd}`")
            continue
        known = _option_names(main.commands[cmd] if cmd else main)
        problems |= {f"{where}: `dept-pipeline {cmd}` has no option {o}" for o in options if o not in known}
    assert not problems, "\n".join(sorted(problems))


def test_tune_reads_the_tracking_uri_from_the_environment(monkeypatch):
    """infra/ passes no --mlflow-uri to `tune` on a cluster: the URI comes from MLFLOW_TRACKING_URI
    (a Kubernetes Secret, or the Ray job's runtime_env). Without --mlflow-uri, tune must use it, either as
    the option's environment variable or through the CLI's default tracking URI; otherwise every trial
    would be logged to a SQLite file on a head node that is deleted after the job."""
    main = _cli()
    assert "tune" in main.commands, "no command `dept-pipeline tune`"
    param = next((p for p in main.commands["tune"].params if "--mlflow-uri" in getattr(p, "opts", ())), None)
    assert param is not None, "`dept-pipeline tune` has no --mlflow-uri option"
    envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    if "MLFLOW_TRACKING_URI" in envvars:
        return
    from pipelines.tracking import client as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.internal:5000")
    default = getattr(tracking, "default_tracking_uri", lambda: None)()
    assert default == "http://mlflow.example.internal:5000", (
        "without --mlflow-uri, `dept-pipeline tune` ignores $MLFLOW_TRACKING_URI (the option has no envvar and "
        f"the default tracking URI is {default!r})")


def _job_submissions(path: Path) -> list[str]:
    """Each `ray job submit ...` command in a file: continuation lines joined, comment cut, spaces squeezed."""
    lines, found, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        logical = lines[i]
        while logical.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if logical.lstrip().startswith("ray job submit"):
            found.append(" ".join(logical.split(" #")[0].split()))
    return found


def test_readme_submits_the_jobs_as_infra_does_with_no_runtime_env():
    """The cluster commands of the root README and its docs/ pages (docs/cluster.md) are infra/README.md's; none
    passes a runtime_env (Ray writes it into the session logs: credentials reach the jobs through the environment
    the cluster's Ray was started with)."""
    readme = [c for page in [REPO / "README.md", *DOC_PAGES] for c in _job_submissions(page)]
    infra = _job_submissions(INFRA / "README.md")
    assert {"featurize", "tune"} <= {c.split()[5] for c in readme}, readme
    assert set(readme) <= set(infra), set(readme) - set(infra)
    assert not [c for c in readme + infra if "--runtime-env" in c]
