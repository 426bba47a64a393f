"""The import page on the fake driver: an OVA uploaded from the browser, its plan shown before anything runs, Import
only for a plan without problems and for exactly the inputs it was made for, then the job and the new VM."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Ui
from tests.v2v_stage import make_ova

pytestmark = pytest.mark.browser


def test_upload_an_ova_see_its_plan_and_import_it(fake_ui: Ui, tmp_path: Path) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("olga", "operator")
    assert ui.daemon.call("POST", "/networks", json={"name": "lan", "mode": "user"}).status_code == 201
    ova = make_ova(tmp_path / "vbox.ova")
    ui.login("olga")
    ui.nav("Import VM")
    expect(page.get_by_role("heading", name="Import a VM")).to_be_visible()
    page.get_by_label("Import from").select_option("upload")
    page.get_by_label("OVA file").set_input_files(str(ova))
    page.get_by_label("VM name").fill("appliance")
    page.get_by_role("button", name="Show plan").click()

    # The plan: the VM, its disk and its NIC, whose network is not mapped yet: a problem, so no Import.
    plan = page.locator("section", has=page.get_by_role("heading", name="Plan", exact=True))
    expect(plan).to_be_visible()
    facts = plan.locator(".facts")
    for text in ("appliance", "uploads/vbox.ova (ova)", "192 MiB", "bios", "q35"):
        expect(facts).to_contain_text(text)
    disk = plan.get_by_role("table").first
    for text in ("vbox1.vmdk", "vmdk", "default/appliance (qcow2)", "16.0 MiB"):
        expect(disk).to_contain_text(text)
    expect(plan.get_by_role("cell", name="NAT", exact=True)).to_be_visible()
    expect(plan.locator(".unmapped")).to_have_text("not mapped")
    expect(plan.locator(".plan-problems")).to_contain_text("NAT")
    expect(page.get_by_role("button", name="Import", exact=True)).to_be_disabled()
    assert (ui.daemon.data_dir / "import" / "uploads" / "vbox.ova").read_bytes() == ova.read_bytes()

    # Mapping the network changes the inputs: the old plan goes; the new one has no problem and allows Import.
    page.get_by_role("button", name="Add network mapping").click()
    expect(plan).to_be_hidden()
    page.get_by_label("Source network 1").fill("NAT")
    page.get_by_label("Maps to 1").select_option("lan")
    page.get_by_role("button", name="Show plan").click()
    expect(plan.get_by_role("cell", name="lan", exact=True)).to_be_visible()
    expect(plan.locator(".plan-problems")).to_have_count(0)
    expect(page.get_by_role("button", name="Import", exact=True)).to_be_enabled()
    ui.shot("import-plan")

    # Any change after the plan takes Import away again, until the plan for the new inputs is shown.
    page.get_by_label("VM name").fill("appliance2")
    expect(page.get_by_role("button", name="Import", exact=True)).to_be_disabled()
    expect(plan).to_be_hidden()
    page.get_by_label("VM name").fill("appliance")
    page.get_by_role("button", name="Show plan").click()
    expect(page.get_by_role("button", name="Import", exact=True)).to_be_enabled()
    assert sorted(p.name for p in (ui.daemon.data_dir / "import" / "uploads").iterdir()) == ["vbox.ova"]  # sent once

    page.get_by_role("button", name="Import", exact=True).click()
    done = page.locator("section", has=page.get_by_role("heading", name="Imported", exact=True))
    expect(done).to_contain_text("default/appliance (qcow2)")
    ui.shot("import-done")
    done.get_by_role("link", name="appliance", exact=True).click()
    expect(page.get_by_role("heading", name="appliance", exact=True)).to_be_visible()
    vm = ui.daemon.vm("appliance")
    assert vm["spec"]["nics"][0]["network"] == "lan" and vm["spec"]["memory"] == 192
    ui.nav("VMs")
    expect(page.locator("tr[data-vm='appliance']")).to_be_visible()


def test_refusals_show_at_their_field_and_viewers_see_no_import(fake_ui: Ui, tmp_path: Path) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("olga", "operator")
    ui.add_user("vic", "viewer")
    make_ova(ui.daemon.data_dir / "import" / "vm.ova")
    ui.login("olga")
    ui.nav("Import VM")
    path = page.get_by_label("Path", exact=True)
    path.fill("../../etc/passwd")
    page.get_by_role("button", name="Show plan").click()
    expect(path).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field", has=path).locator(".field-error")).to_contain_text("..")

    # A path the admin put in the import directory: its plan has a problem (an unmapped network), Import stays off.
    path.fill("vm.ova")
    page.get_by_role("button", name="Show plan").click()
    expect(page.locator(".plan-problems")).to_contain_text("NAT")
    expect(page.locator(".field-error")).to_have_count(0)
    expect(page.get_by_role("button", name="Import", exact=True)).to_be_disabled()

    page.get_by_role("button", name="Log out").click()
    ui.login("vic")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Import VM")).to_be_hidden()
    ui.goto("import")
    expect(page.get_by_text("Your role may look at VMs but not import them.")).to_be_visible()
