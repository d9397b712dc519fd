"""The hub's status page (``ackbus hub --metrics-port``): ``/status.json`` is what
``ackbus status --json`` prints, ``/metrics`` still parses as Prometheus text, and the page
reads right in headless Chromium, refreshing by itself, with nothing loaded from elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ackbus._version import __version__
from browser import chromium
from proc_harness import Procs, free_port

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "generated")}
SCREENSHOT = os.environ.get("ACKBUS_STATUS_SCREENSHOT")
"""Where to save the page's screenshot (docs/status.png is made so)."""

pytestmark = pytest.mark.timeout(240)


def get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read()


def send_hands(hub: str, n: int) -> None:
    for i in range(n):
        run = subprocess.run(
            [sys.executable, "-m", "ackbus.cli", "send", "poker.StartHand",
             json.dumps({"table_id": f"t{i % 2}"}), "--hub", hub, "--import", "poker.table_pb2",
             "--wait-ack"],
            capture_output=True, text=True, env=ENV, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr


@pytest.fixture
def hub_with_page(procs: Procs, tmp_path: Path) -> tuple[str, str]:
    """A hub with its page on a free port, a table and an audit instance."""
    port, web = free_port(), free_port()
    hub = f"tcp://127.0.0.1:{port}"
    procs.start(
        "-m", "ackbus.cli", "hub", "--bind", hub, "--heartbeat", "0.25",
        "--metrics-port", str(web), "--name", "hub-1",
        ready=b"status page on http://127.0.0.1:%d/status" % web,
    )  # fmt: skip
    procs.service("table", hub, tmp_path / "table.log", "--instance", "table-1")
    procs.service("table", hub, tmp_path / "table2.log", "--instance", "table-2")
    procs.service("audit", hub, tmp_path / "audit.log", "--instance", "audit-1")
    return hub, f"http://127.0.0.1:{web}"


def test_status_json_and_metrics(hub_with_page: tuple[str, str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    hub, web = hub_with_page
    send_hands(hub, 2)
    kind, body = get(f"{web}/status.json")
    assert kind == "application/json"
    status = json.loads(body)
    assert status["hub"]["name"] == "hub-1"
    assert status["hub"]["version"] == __version__
    names = [s["name"] for s in status["services"]]
    assert "table" in names
    assert "audit" in names
    cli = subprocess.run(
        [sys.executable, "-m", "ackbus.cli", "status", "--hub", hub, "--json"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert [s["name"] for s in json.loads(cli.stdout)["services"]] == names

    kind, body = get(f"{web}/metrics")
    assert kind.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    routed = families["ackbus_hub_routed"].samples[0].value
    assert routed >= 4  # two commands, two events
    kind, page = get(f"{web}/status")
    assert kind == "text/html; charset=utf-8"
    assert b"<script" in page
    assert b"src=" not in page  # no external scripts, images or styles
    assert b"http" not in page
    assert page.count(b"href=") == 1  # the icon: data:, so the browser asks for none


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium("1200,760") as chrome:
        yield chrome


def until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.1)


def test_the_page_in_chromium(browser: Any, hub_with_page: tuple[str, str]) -> None:
    from selenium.webdriver.common.by import By

    hub, web = hub_with_page
    browser.get(f"{web}/status")
    assert browser.title == "ackbus hub"

    def rows() -> list[str]:
        return [
            e.get_attribute("data-instance")
            for e in browser.find_elements(By.CSS_SELECTOR, "#services tr.instance")
        ]

    assert until(lambda: rows()) == ["audit/audit-1", "table/table-1", "table/table-2"]
    assert browser.find_element(By.ID, "hub").text == "hub hub-1/" + browser.execute_script(
        "return (await (await fetch('status.json')).json()).hub.instance.slice(0, 8)"
    )
    assert f"ackbus {__version__}" in browser.find_element(By.ID, "meta").text
    table = browser.find_element(By.CSS_SELECTOR, 'tr[data-instance="table/table-1"]').text
    assert f"ackbus-python/{__version__}" in table
    assert "poker.StartHand" in table
    assert "0/" in table  # in flight / max_concurrency

    # it refreshes by itself: traffic sent now shows up without a reload
    def routed() -> int:
        card = browser.find_element(By.CSS_SELECTOR, '.card[data-name="routed"] b').text
        return int(card)

    before = routed()
    send_hands(hub, 4)
    until(lambda: routed() >= before + 8)  # four commands and their four events
    until(lambda: "/s" in browser.find_element(By.CSS_SELECTOR, '.card[data-name="acks"]').text)
    assert "updated" in browser.find_element(By.ID, "state").text

    # one page: everything it loaded came from the hub, and only status.json
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert loaded
    assert {url.split("?")[0] for url in loaded} == {f"{web}/status.json"}
    if SCREENSHOT:
        browser.save_screenshot(SCREENSHOT)
