"""`vsearch ui` and `vsearch daemon`: Dagster's webserver and daemon on a home's instance.

The webserver alone is half a Dagster: the sensors, the schedules and the run queue (runs
launched from the UI wait in it) are ticked by the daemon, so `vsearch ui` runs both under one
parent and stops both, with their code servers and runs, on Ctrl-C or SIGTERM
(`interrupts.run_until_stopped`). `vsearch daemon` runs the daemon alone, for a server where the
UI is not wanted; it is the same as `dagster-daemon run -w workspace.yaml` with DAGSTER_HOME and
VSEARCH_HOME set. Their output goes to files under the home's logs/, not to the terminal.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from vsearch_pipeline.automation import source_sensor_name
from vsearch_pipeline.core.layout import HOME_ENV, HomeLayout
from vsearch_pipeline.interrupts import Server
from vsearch_pipeline.runner import instance_folder
from vsearch_pipeline.settings import Settings

WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"
BIN = Path(sys.executable).parent  # the Dagster commands installed beside this Python


def dagster_env(home: Path) -> dict[str, str]:
    """The environment both commands run in: the home's instance and settings."""
    return {**os.environ, HOME_ENV: str(home), "DAGSTER_HOME": str(instance_folder(home))}


def webserver(home: Path, host: str, port: int) -> Server:
    return Server("dagster-webserver",
                  [str(BIN / "dagster-webserver"), "-w", str(WORKSPACE), "-h", host, "-p", str(port)],
                  HomeLayout(home).webserver_log)


def daemon(home: Path) -> Server:
    return Server("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
                  HomeLayout(home).daemon_log)


def answers(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def what_the_daemon_does(settings: Settings) -> str:
    """One phrase for the ready line: what will happen on its own while the daemon runs."""
    automation = settings.automation
    if not automation.enabled:
        return ("automation.enabled is false, so no sensor or schedule runs; it starts the runs "
                "launched from the UI")
    watch = (f"the sensor {source_sensor_name(settings.source.uri)} looks for new files in "
             f"{settings.source.uri} every {automation.sensor_interval_s} s"
             if settings.source.uri else "no source is set, so no sensor looks for new files")
    return (f"{watch}; recluster at '{automation.recluster_cron}', index rebuild at "
            f"'{automation.index_rebuild_cron}' ({automation.timezone})")


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
