"""The VM list at fleet scale: 10,000 VMs on the fake driver. What must hold is asserted (only the rows in view are
in the DOM, one state change costs O(1) requests, search, sort, bulk actions); how long things took is printed, not
asserted (this machine is shared: a timing would fail for reasons that are not the UI's)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Request, Route, expect

from tests.browser.conftest import Ui, browser
from tests.browser.fleet import seed_vms
from tests.functional.conftest import fake_tiny_builder
from tests.integration.conftest import Daemon
from virtfleet.store.db import Database

pytestmark = pytest.mark.browser

FLEET = 10_000
# Collects the main thread's long tasks (over 50 ms) from the first script on.
LONG_TASKS = """
  window.__longTasks = [];
  new PerformanceObserver((list) => { for (const entry of list.getEntries()) window.__longTasks.push(entry.duration); })
    .observe({ type: "longtask", buffered: true });
"""


@pytest.fixture
def fleet_ui(short_tmp: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Ui]:
    monkeypatch.setenv("VIRTFLEET_DRIVER", "fake")
    fake_tiny_builder(short_tmp / "images" / "tiny")
    started = time.perf_counter()
    db = Database.sqlite(short_tmp / "virtfleet.db")
    db.migrate()
    seed_vms(db, FLEET)
    db.close()
    seeded = time.perf_counter()
    # The server's own loops read every VM on its event loop (the reconciler every second, the metrics sampler every
    # 0.5 s in tests), which at 10,000 VMs takes seconds a pass and leaves no time for requests: run them rarely, so
    # what is measured is the list and the page.
    daemon = Daemon(short_tmp, env={"VIRTFLEET_METRICS_INTERVAL": "600", "VIRTFLEET_RECONCILE_INTERVAL": "600"})
    daemon.start(timeout=120)  # it reads the whole fleet a few times while it starts
    up = time.perf_counter() - seeded
    print(f"\nfleet: {FLEET} VMs seeded in {seeded - started:.1f} s, the server up {up:.1f} s later")
    try:
        with browser(daemon, request) as ui:
            yield ui
    finally:
        daemon.stop()


def long_tasks(ui: Ui, since: int = 0) -> tuple[int, list[float]]:
    tasks: list[float] = ui.page.evaluate("window.__longTasks")
    return len(tasks), tasks[since:]


def say_tasks(what: str, tasks: list[float]) -> None:
    worst = max(tasks, default=0)
    print(f"  long tasks {what}: {len(tasks)}, longest {worst:.0f} ms, total {sum(tasks):.0f} ms")


def test_ten_thousand_vms(fleet_ui: Ui) -> None:
    ui, page = fleet_ui, fleet_ui.page
    ui.add_user("fleet", "operator")
    page.add_init_script(LONG_TASKS)
    ui.login("fleet")
    table = page.get_by_role("table", name="Virtual machines")

    # Time to first rows, from a fresh load of the page (the app, who-am-I, the one GET /vms).
    began = time.perf_counter()
    page.reload()
    expect(page.locator("tr[data-vm='vm-0']")).to_be_visible(timeout=60_000)
    first_rows = time.perf_counter() - began
    list_request: Any = page.evaluate(
        "performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/api/v1/vms'))"
        ".map((e) => [e.duration, e.transferSize])[0]")
    expect(page.get_by_text(f"{FLEET} of {FLEET} VMs")).to_be_visible()
    in_dom = page.locator("tr[data-vm]").count()
    assert 0 < in_dom < 100, f"{in_dom} VM rows in the DOM: the list is not windowed"
    expect(table).to_have_attribute("aria-rowcount", str(FLEET + 1))
    seen, tasks = long_tasks(ui)
    print(f"  time to first rows: {first_rows:.2f} s (GET /vms: {list_request[0] / 1000:.2f} s, "
          f"{list_request[1] / 1e6:.1f} MB); {in_dom} of {FLEET} rows in the DOM")
    say_tasks("while loading", tasks)

    # The last row is reachable: scrolled to, it is rendered with its place in the whole list.
    page.locator(".windowed").evaluate("(box) => { box.scrollTop = box.scrollHeight; }")
    last = page.locator(f"tr[data-vm='vm-{FLEET - 1}']")
    expect(last).to_be_visible()
    expect(last).to_have_attribute("aria-rowindex", str(FLEET + 1))
    assert page.locator("tr[data-vm]").count() < 100

    # Sort by a column header: aria-sort says how.
    memory = page.get_by_role("columnheader", name="Memory")
    memory.get_by_role("button").click()
    expect(memory).to_have_attribute("aria-sort", "ascending")
    memory.get_by_role("button").click()
    expect(memory).to_have_attribute("aria-sort", "descending")
    expect(page.locator("tbody tr[data-vm]").first.locator("td[data-label='Memory']")).to_have_text("2.0 GiB")

    # One state change made elsewhere: the page sends O(1) requests for it, whatever the fleet's size.
    page.get_by_role("columnheader", name="Name").get_by_role("button").click()
    page.locator(".windowed").evaluate("(box) => { box.scrollTop = 0; }")
    row = page.locator("tr[data-vm='vm-1']")
    expect(row.locator(".badge")).to_have_text("stopped")
    sent: list[str] = []

    def record(request: Request) -> None:
        if "/api/v1/" in request.url and not request.url.endswith("/events"):
            sent.append(f"{request.method} {request.url.split('/api/v1', 1)[1]}")

    page.wait_for_timeout(500)  # the observer reports the sort's long task late: not this change's
    seen, _ = long_tasks(ui)
    page.on("request", record)
    ui.daemon.ok("POST", "/vms/vm-1/start")
    expect(row.locator(".badge")).to_have_text("running")
    page.wait_for_timeout(1500)  # the late ones would come now (not a timing: a window to count in)
    page.remove_listener("request", record)
    print(f"  requests for one state change: {len(sent)}: {sent}")
    say_tasks("for one state change", long_tasks(ui, seen)[1])
    assert 1 <= len(sent) <= 3, sent

    # Bulk: select what a search matches, start them with one confirmation; a VM that fails is named.
    search = page.get_by_label("Search VMs")
    search.fill("name:vm-123*")
    expect(page.get_by_text(f"11 of {FLEET} VMs")).to_be_visible()

    def refuse(route: Route) -> None:
        route.fulfill(status=409, content_type="application/json",
                      body='{"error": {"code": "invalid_state", "message": "refused for this test"}}')

    page.route("**/api/v1/vms/vm-1235/start", refuse)
    page.get_by_label("Select all matching VMs").check()
    expect(page.get_by_text("11 selected")).to_be_visible()
    page.get_by_role("group", name="Selected VMs").get_by_role("button", name="Start…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading")).to_have_text("Start 11 VMs?")
    dialog.get_by_role("button", name="Start 11 VMs").click()
    report = page.locator(".bulk-report")
    expect(report).to_contain_text("Start 11 VMs: 10 done, 1 failed.")
    expect(report.locator("li")).to_have_text("vm-1235: refused for this test (invalid_state)")
    page.unroute("**/api/v1/vms/vm-1235/start")
    # Started VMs are left out of a second start, and the dialog says so.
    page.get_by_role("group", name="Selected VMs").get_by_role("button", name="Start…").click()
    expect(dialog.get_by_role("heading")).to_have_text("Start 1 VM?")
    expect(dialog).to_contain_text("10 VMs of the 11 selected cannot be started in their state and are left out.")
    dialog.get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Clear selection").click()

    # Time to a filtered result, measured in the page: from the keystroke to the count that says it.
    seen, _ = long_tasks(ui)
    filtered: float = page.evaluate("""async (count) => {
        const box = document.getElementById("vm-search");
        const status = document.querySelector(".count");
        const began = performance.now();
        box.value = "state:running name:vm-12*";
        box.dispatchEvent(new Event("input"));
        await new Promise((resolve) => new MutationObserver((_, watcher) => {
          if (status.textContent.startsWith(`${count} of`)) { watcher.disconnect(); resolve(); }
        }).observe(status, { childList: true, characterData: true, subtree: true }));
        return performance.now() - began;
    }""", 10)
    expect(page.locator("tr[data-vm]")).to_have_count(10)
    expect(page.locator("tr[data-vm='vm-1235']")).to_have_count(0)
    print(f"  time to a filtered result (state:running name:vm-12*): {filtered:.0f} ms (120 ms of it the typing pause)")
    say_tasks("while filtering", long_tasks(ui, seen)[1])

    # An unknown key is an error in words; the last good result stays.
    search.fill("tag:web")
    expect(page.locator("#vm-search-error")).to_contain_text("unknown search key 'tag'")
    expect(search).to_have_attribute("aria-invalid", "true")
    expect(page.locator("tr[data-vm]")).to_have_count(10)
    ui.shot("fleet-vms")


def test_the_search_syntax(fake_ui: Ui) -> None:
    """parts/query.js on its own, in the browser that runs it: each key, patterns, OR within a key, negation."""
    ui, page = fake_ui, fake_ui.page
    ui.goto("login")
    results = page.evaluate("""async () => {
        const { parseQuery, QueryError } = await import("/ui/js/parts/query.js");
        const vms = [
          { name: "web1", state: "running", host: "node-a", addresses: ["10.0.0.5"] },
          { name: "web2", state: "stopped", host: "node-b", addresses: [] },
          { name: "db1", state: "paused", host: "node-a", addresses: ["10.0.1.7", "192.168.1.9"] },
        ];
        const run = (text) => {
          try { return vms.filter(parseQuery(text)).map((vm) => vm.name).join(","); }
          catch (error) { return `${error instanceof QueryError ? "error" : "BUG"}: ${error.message}`; }
        };
        return Object.fromEntries(["", "web", "state:running", "name:web*", "name:*1", "ip:10.0.", "ip:192.168.*",
          "10.0.1", "host:node-a state:paused", "state:running,paused", "-state:running", "WEB STATE:STOPPED",
          "tag:web", "state:runing", "name:", "-web"].map((text) => [text, run(text)]));
    }""")
    assert results == {
        "": "web1,web2,db1", "web": "web1,web2", "state:running": "web1", "name:web*": "web1,web2",
        "name:*1": "web1,db1", "ip:10.0.": "web1,db1", "ip:192.168.*": "db1", "10.0.1": "db1",
        "host:node-a state:paused": "db1", "state:running,paused": "web1,db1", "-state:running": "web2,db1",
        "WEB STATE:STOPPED": "web2",
        "tag:web": "error: unknown search key 'tag' in 'tag:web' (VMs have no tags yet): use name, state, ip, host",
        "state:runing": "error: unknown state 'runing' (states: stopped, starting, running, paused, stopping, crashed)",
        "name:": "error: 'name:' needs a value after the colon, e.g. name:web*",
        "-web": "db1",
    }
