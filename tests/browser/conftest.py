"""A real JupyterLab 4 / Notebook 7 server and Debian's headless Chromium, driven by Playwright.

The server runs on 127.0.0.1 with a free port and a random token, in its own process group, with its
config, runtime and workspace directories in the test's tmp dir; the test kills the whole group.
Chromium must be installed (``make test`` installs it with apt): if it is missing these tests fail,
they never skip.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
BIN = Path(sys.executable).parent


@dataclass
class Server:
    kind: str  # "lab" or "notebook"
    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]

    def notebook_url(self, name: str) -> str:
        if self.kind == "lab":
            # A unique workspace per page, or Lab restores the last one and shows the previous test's tabs.
            return f"{self.url}/lab/workspaces/{secrets.token_hex(4)}/tree/{name}?token={self.token}"
        return f"{self.url}/notebooks/{name}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(kind: str, root: Path, tmp: Path, nbflow_home: Path) -> Server:
    port = _free_port()
    token = secrets.token_hex(16)
    config = tmp / "jupyter-config"
    (config / "labconfig").mkdir(parents=True, exist_ok=True)
    # Lab's news toast would cover the page.
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "jupyter-workspaces"),
        "NBFLOW_HOME": str(nbflow_home),
    }
    app = "jupyter-lab" if kind == "lab" else "jupyter-notebook"
    app_class = "LabApp" if kind == "lab" else "JupyterNotebookApp"
    expose = f"--{app_class}.expose_app_in_browser=True"
    log = open(tmp / f"{kind}-server.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
    process = subprocess.Popen(
        [str(BIN / app), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", expose],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter {kind} exited: {(tmp / f'{kind}-server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"jupyter {kind} did not answer in 60 s")
        time.sleep(0.25)
    return Server(kind, url, token, root, process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture
def jupyter(tmp_path: Path, nbflow_home: Path) -> Iterator[Callable[[str], Server]]:
    """Start a Lab (``"lab"``) or Notebook 7 (``"notebook"``) server serving ``tmp_path/work``."""
    servers: list[Server] = []
    root = tmp_path / "work"
    root.mkdir()

    def start(kind: str) -> Server:
        server = _start(kind, root, tmp_path, nbflow_home)
        servers.append(server)
        return server

    yield start
    for server in servers:
        _stop(server.process)


# Per module, not per session: Playwright's sync API keeps an asyncio loop running in the main thread
# while it is open, and tests after the browser tests (async tasks, asyncio.run) need none running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        page.screenshot(path=str(tmp_path / "failure.png"))
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
