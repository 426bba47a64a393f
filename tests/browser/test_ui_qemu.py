"""The issue's scenario in a real browser on a real guest: log in, create a VM from the form, start it, see the
guest's readiness line in the xterm.js console, stop it, delete it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Ui
from tests.integration.conftest import READY

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_create_start_console_stop_delete(qemu_ui: Ui) -> None:
    ui, page = qemu_ui, qemu_ui.page
    ui.add_user("ops", "operator")
    ui.login("ops")

    ui.nav("Create VM")
    page.get_by_label("Name", exact=True).fill("tiny1")
    page.get_by_label("Image").select_option("tiny")
    page.get_by_label("Machine").select_option("microvm")
    page.get_by_label("Memory (MiB)").fill("256")
    expect(page.get_by_label("Start it now")).to_be_checked()
    page.get_by_role("button", name="Create VM").click()

    expect(page.get_by_role("heading", name="tiny1", exact=True)).to_be_visible()
    expect(page.locator(".page-head .badge")).to_have_text("running", timeout=60_000)
    page.get_by_role("button", name="Open console").click()
    terminal = page.locator(".serial-screen .xterm-rows")
    expect(terminal).to_contain_text(f"{READY} hostname=tiny1", timeout=90_000)
    # Typing reaches the guest's shell on the serial port, and its answer comes back.
    page.locator(".serial-screen").click()
    page.keyboard.type("echo browser-$((6*7))\n")
    expect(terminal).to_contain_text("browser-42", timeout=30_000)
    ui.shot("qemu-console")

    page.get_by_role("button", name="Force off tiny1").click()
    expect(page.locator(".page-head .badge")).to_have_text("stopped", timeout=60_000)
    expect(page.get_by_role("button", name="Open console")).to_be_hidden()  # no console without a guest
    page.get_by_role("button", name="Delete tiny1").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
    expect(page.locator("tr[data-vm='tiny1']")).to_have_count(0)
    assert ui.daemon.call("GET", "/vms/tiny1").status_code == 404


def test_graphical_console_of_a_real_guest(qemu_ui: Ui) -> None:
    ui, page = qemu_ui, qemu_ui.page
    ui.add_user("ops", "operator")
    spec = {"name": "desk", "machine": "q35", "accel": "tcg", "memory": "256M", "display": "vnc"}
    assert ui.daemon.call("POST", "/vms", json=spec).status_code == 201
    ui.daemon.ok("POST", "/vms/desk/start")
    ui.login("ops")
    ui.goto("vms/desk")
    page.get_by_role("button", name="Open graphical console").click()
    expect(page.locator(".console-status", has_text="Connected. Keyboard and mouse")).to_be_visible(timeout=30_000)
    canvas = page.locator(".vnc-screen canvas")
    expect(canvas).to_be_visible()
    ui.daemon.wait_ready("desk", timeout=120)  # the guest's boot text is on the VGA screen by now
    ui.shot("qemu-vnc")
