"""The web UI's pages on the fake driver: everything a user can do that needs no real guest, at desktop and phone
width, keyboard included; and what each role may not do, in the browser and through the API."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, PHONE, Ui

pytestmark = pytest.mark.browser


def wait_metrics(ui: Ui, vm: str, points: int = 2) -> None:
    """Until the agent has sampled the VM enough for a line (the daemon samples every 0.5 s)."""
    page = ui.page
    page.wait_for_function(
        """async ([vm, points]) => {
             const response = await fetch(`/api/v1/vms/${vm}/metrics`);
             return response.ok && (await response.json()).length >= points;
           }""", arg=[vm, points], polling=200)


def test_admin_walks_every_page(fake_ui: Ui) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("alice", "admin")

    # Login: a wrong password says so and changes nothing; the right one opens the VM list.
    ui.goto("vms")
    expect(page.get_by_role("heading", name="Log in to virtfleet")).to_be_visible()
    ui.shot("login")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    ui.login("alice")
    expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
    expect(page.get_by_text("No VMs yet.")).to_be_visible()

    # Hosts: this host and its images.
    ui.nav("Hosts")
    expect(page.locator(".facts")).to_contain_text("fake")
    expect(page.get_by_role("cell", name="tiny", exact=True)).to_be_visible()
    ui.shot("hosts")

    # Networks: an admin creates a user-mode one (no host changes needed).
    ui.nav("Networks")
    page.get_by_label("Network name").fill("lab")
    page.get_by_label("Mode").select_option("user")
    page.get_by_role("button", name="Create network").click()
    expect(page.get_by_role("cell", name="lab", exact=True)).to_be_visible()
    # A bad subnet: the server's message, naming the field, shows at the form.
    page.get_by_label("Network name").fill("bad")
    page.get_by_label("Mode").select_option("nat")
    page.get_by_label("Subnet").fill("8.8.8.0/24")
    page.get_by_role("button", name="Create network").click()
    expect(page.locator("form .inline-error")).to_contain_text("subnet")
    ui.shot("networks")

    # Storage: the default pool, a new volume made by a job.
    ui.nav("Storage")
    expect(page.get_by_role("cell", name="default", exact=True)).to_be_visible()
    page.get_by_label("Volume name").fill("data1")
    page.get_by_label("Size").fill("64M")
    page.get_by_role("button", name="Create volume").click()
    expect(page.get_by_role("cell", name="default/data1", exact=True)).to_be_visible()
    ui.shot("storage")

    # Create a VM with that volume, a NIC on lab and cloud-init, started at once.
    ui.nav("Create VM")
    page.get_by_label("Name", exact=True).fill("web1")
    page.get_by_label("CPUs").fill("2")
    page.get_by_label("Memory (MiB)").fill("512")
    page.get_by_role("button", name="Add disk").click()
    page.get_by_label("Disk 1", exact=True).select_option("vol:default/data1")
    page.get_by_role("button", name="Add network card").click()
    page.get_by_label("Network card 1", exact=True).select_option("lab")
    page.get_by_label("User data").fill("#cloud-config\nhostname: web1\n")
    ui.shot("create")
    page.get_by_role("button", name="Create VM").click()

    # The detail page: state goes to running by itself, the console shows the guest, charts fill in.
    expect(page.get_by_role("heading", name="web1", exact=True)).to_be_visible()
    head = page.locator(".page-head")
    expect(head.locator(".badge")).to_have_text("running")
    expect(page.locator(".facts")).to_contain_text("512 MiB")
    expect(page.get_by_role("cell", name="default/data1", exact=True)).to_be_visible()
    expect(page.locator(".events")).to_contain_text("started")
    page.get_by_role("button", name="Open console").click()
    terminal = page.locator(".serial-screen .xterm-rows")
    expect(terminal).to_contain_text("VIRTFLEET-READY hostname=web1")
    page.locator(".serial-screen").click()
    page.keyboard.type("hello-from-the-browser")
    expect(terminal).to_contain_text("hello-from-the-browser")  # the fake guest echoes like a tty
    wait_metrics(ui, "web1")
    page.reload()  # the charts of a freshly loaded page, with samples in them
    expect(page.locator("svg.chart polyline").first).to_be_attached()
    expect(page.locator("figure.chart-box")).to_have_count(4)
    page.get_by_role("button", name="Open console").click()
    expect(terminal).to_contain_text("VIRTFLEET-READY")
    ui.shot("vm-detail")
    ui.shot("vm-charts", page.locator(".charts"))

    # Snapshots: take one (disk-only) and see it listed.
    page.get_by_label("Snapshot name").fill("before-upgrade")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page.get_by_role("cell", name=re.compile("^before-upgrade"))).to_be_visible()

    # The list with its live state and buttons; pause and resume from there.
    ui.nav("VMs")
    row = page.locator("tr[data-vm='web1']")
    expect(row.locator(".badge")).to_have_text("running")
    row.get_by_role("button", name="Pause web1").click()
    expect(row.locator(".badge")).to_have_text("paused")
    row.get_by_role("button", name="Resume web1").click()
    expect(row.locator(".badge")).to_have_text("running")
    expect(page.locator(".notice", has_text="Resume web1")).to_contain_text("done")  # the job's notice follows it
    ui.shot("vms")

    # Jobs: running and past ones, each with its progress.
    ui.nav("Jobs")
    finished = page.locator("section", has=page.get_by_role("heading", name="Finished"))
    expect(finished.get_by_role("cell", name="vm.start", exact=True)).to_be_visible()
    expect(finished.get_by_role("cell", name="vm.pause", exact=True)).to_be_visible()
    ui.shot("jobs")

    # Users and tokens: an admin adds a user and makes a token whose secret is shown once.
    ui.nav("Users")
    form = page.get_by_role("form", name="Add a user")
    form.get_by_label("User name").fill("bob")
    form.get_by_label("Role").select_option("operator")
    form.get_by_label("Password").fill("bob-password-1")
    form.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("cell", name="bob", exact=True)).to_be_visible()
    expect(page.locator("section", has_text="Audit log")).to_contain_text("POST /api/v1/users")
    ui.shot("users")
    ui.nav("API tokens")
    page.get_by_label("Token name").fill("ci")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_role("textbox", name="New token")
    expect(secret).to_have_value(re.compile(r"^vf_"))
    expect(page.get_by_role("cell", name="ci", exact=True)).to_be_visible()
    ui.shot("tokens")

    # Phone width: the same pages in one column, nothing wider than the screen.
    page.set_viewport_size(PHONE)
    ui.goto("vms")
    expect(page.locator("tr[data-vm='web1'] .badge")).to_have_text("running")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    ui.shot("phone-vms")
    page.locator("tr[data-vm='web1']").get_by_role("link", name="web1").click()
    expect(page.get_by_role("heading", name="web1", exact=True)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    ui.shot("phone-vm-detail")

    # Force off and delete (with its volume) from the detail page, through the confirmation dialog.
    page.get_by_role("button", name="Force off web1").click()
    expect(page.locator(".page-head .badge")).to_have_text("stopped")
    page.get_by_role("button", name="Delete web1").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Also delete its volumes").check()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
    expect(page.locator("tr[data-vm='web1']")).to_have_count(0)
    response = ui.daemon.call("GET", "/volumes")
    assert [v["name"] for v in response.json()] == [], response.text


def test_keyboard_only(fake_ui: Ui) -> None:
    """Log in, reach a page and start a VM with the keyboard alone; the focus is always visible."""
    ui, page = fake_ui, fake_ui.page
    ui.add_user("kim", "operator")
    assert ui.daemon.call("POST", "/vms", json={"name": "kbd1"}).status_code == 201
    ui.goto("login")
    expect(page.get_by_label("User name")).to_be_focused()
    page.keyboard.type("kim")
    page.keyboard.press("Tab")
    page.keyboard.type("correct-horse-battery")
    page.keyboard.press("Enter")
    expect(page.locator("#whoami")).to_contain_text("kim")
    # Each page puts the focus on its heading, so the next Tab goes on from there.
    expect(page.get_by_role("heading", name="Virtual machines")).to_be_focused()
    # Tab to the VM's Start button, then press it.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == "Start kbd1":
            break
    else:
        pytest.fail("the Start button is not reachable with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Enter")
    expect(page.locator("tr[data-vm='kbd1'] .badge")).to_have_text("running")


def test_roles_in_the_browser_and_the_api(fake_ui: Ui) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("vic", "viewer")
    ui.add_user("olga", "operator")
    assert ui.daemon.call("POST", "/vms", json={"name": "ro1"}).status_code == 201
    ui.daemon.ok("POST", "/vms/ro1/start")

    # A viewer sees VMs but no button, no create link, no console; the API refuses a start with 403.
    ui.login("vic")
    row = page.locator("tr[data-vm='ro1']")
    expect(row.locator(".badge")).to_have_text("running")
    expect(page.locator("[data-action]")).to_have_count(0)
    expect(page.get_by_role("link", name="Create VM")).to_have_count(0)
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    row.get_by_role("link", name="ro1").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_role("heading", name="Serial console")).to_have_count(0)
    expect(page.locator("[data-action]")).to_have_count(0)
    answer = ui.api("POST", "/vms/ro1/stop")
    assert answer["status"] == 403, answer
    assert json.loads(answer["body"])["error"]["code"] == "forbidden"
    # Nor a console, even when the page's script opens the WebSocket itself: 4403 = forbidden.
    code = page.evaluate("""() => new Promise((resolve) => {
        const ws = new WebSocket(`ws://${location.host}/api/v1/vms/ro1/console`);
        ws.onclose = (event) => resolve(event.code);
    })""")
    assert code == 4403
    ui.shot("viewer-vm-detail")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to virtfleet")).to_be_visible()
    assert ui.api("GET", "/vms")["status"] == 401

    # An operator has the buttons and the console, but not the users page (nor the API behind it).
    ui.login("olga")
    expect(page.locator("tr[data-vm='ro1'] [data-action='stop']")).to_be_visible()
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    ui.goto("users")
    expect(page.get_by_role("alert")).to_contain_text("Only admins manage users")
    expect(page.get_by_role("cell", name="olga", exact=True)).to_have_count(0)
    answer = ui.api("GET", "/users")
    assert answer["status"] == 403, answer
    answer = ui.api("POST", "/users", {"name": "mallory", "role": "admin", "password": "password-123"})
    assert answer["status"] == 403, answer
    # A write without the CSRF header is refused even with a valid session.
    status = page.evaluate("async () => (await fetch('/api/v1/vms/ro1/stop', {method: 'POST'})).status")
    assert status == 403
    assert ui.daemon.vm("ro1")["state"] == "running"


def test_graphical_console(fake_ui: Ui) -> None:
    """noVNC in the page, over the /vnc WebSocket, through to the (fake) VNC server's screen."""
    ui, page = fake_ui, fake_ui.page
    ui.add_user("olga", "operator")
    spec = {"name": "desk", "machine": "q35", "display": "vnc"}
    assert ui.daemon.call("POST", "/vms", json=spec).status_code == 201
    assert ui.daemon.call("POST", "/vms", json={"name": "plain"}).status_code == 201
    ui.daemon.ok("POST", "/vms/desk/start")
    ui.login("olga")
    ui.goto("vms/plain")
    expect(page.get_by_role("heading", name="Serial console")).to_be_visible()
    expect(page.get_by_role("heading", name="Graphical console")).to_have_count(0)  # display none: no VNC
    ui.goto("vms/desk")
    expect(page.locator(".facts")).to_contain_text("vnc")
    page.get_by_role("button", name="Open graphical console").click()
    expect(page.locator(".console-status", has_text="Connected. Keyboard and mouse")).to_be_visible()
    expect(page.locator(".vnc-screen canvas")).to_be_attached()
    page.get_by_role("button", name="Disconnect").click()
    expect(page.get_by_role("button", name="Open graphical console")).to_be_enabled()


def test_changes_made_elsewhere_show_up_live(fake_ui: Ui) -> None:
    """The CLI (here: the API with a token) changes things; an open page follows through the event stream."""
    ui, page = fake_ui, fake_ui.page
    with httpx.stream("GET", f"{ui.daemon.url}/events", headers=ui.daemon.auth, timeout=10) as stream:
        if stream.status_code == 404:
            pytest.skip("no event stream (GET /api/v1/events) on this branch yet")
        assert stream.status_code == 200
    ui.add_user("alice", "admin")
    assert ui.daemon.call("POST", "/vms", json={"name": "far1"}).status_code == 201
    ui.login("alice")
    row = page.locator("tr[data-vm='far1']")
    expect(row.locator(".badge")).to_have_text("stopped")
    expect(page.locator("#live")).to_have_text("live")

    ui.daemon.ok("POST", "/vms/far1/start")
    expect(row.locator(".badge")).to_have_text("running")
    assert ui.daemon.call("POST", "/vms", json={"name": "far2"}).status_code == 201
    expect(page.locator("tr[data-vm='far2'] .badge")).to_have_text("stopped")

    row.get_by_role("link", name="far1").click()
    events = page.locator(".events")
    expect(events).to_contain_text("started")
    ui.daemon.ok("POST", "/vms/far1/pause")
    expect(page.locator(".page-head .badge")).to_have_text("paused")
    expect(events).to_contain_text("paused")

    ui.nav("Jobs")
    ui.daemon.ok("POST", "/vms/far1/resume")
    finished = page.locator("section", has_text="Finished")
    expect(finished.get_by_role("cell", name="vm.resume", exact=True)).to_be_visible()

    ui.nav("VMs")
    ui.daemon.ok("DELETE", "/vms/far2")
    expect(page.locator("tr[data-vm='far2']")).to_have_count(0)


def test_create_from_a_template(fake_ui: Ui) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("olga", "operator")
    ui.daemon.ok("POST", "/pools/default/volumes", json={"name": "base-root", "size": "32M"})
    spec = {"name": "base", "disks": [{"volume": "default/base-root"}]}
    assert ui.daemon.call("POST", "/vms", json=spec).status_code == 201
    assert ui.daemon.call("POST", "/vms/base/template").status_code == 200
    ui.login("olga")
    row = page.locator("tr[data-vm='base']")
    expect(row).to_contain_text("template")
    expect(row.locator("[data-action]")).to_have_count(1)  # a template never runs: only Delete

    ui.nav("Create VM")
    page.get_by_label("Name", exact=True).fill("clone1")
    page.get_by_label("Boot from").select_option("template")
    page.get_by_label("Template", exact=True).select_option("base")
    expect(page.get_by_label("Linked clone of its disks (instant)")).to_be_checked()
    expect(page.get_by_role("group", name="Disks")).to_be_hidden()  # disks come from the template
    page.get_by_label("Start it now").uncheck()
    page.get_by_role("button", name="Create VM").click()
    expect(page.get_by_role("heading", name="clone1", exact=True)).to_be_visible()
    expect(page.locator(".page-head .badge")).to_have_text("stopped")
    clone = ui.daemon.vm("clone1")
    assert clone["spec"]["disks"][0]["volume"] != "default/base-root"
    volumes = {v["name"]: v for v in ui.daemon.call("GET", "/volumes").json()}
    assert volumes[clone["spec"]["disks"][0]["volume"].split("/")[1]]["base"] == "default/base-root"

    # A name already taken: the server's 409 shows at the form, nothing else changes.
    ui.nav("Create VM")
    page.get_by_label("Name", exact=True).fill("clone1")
    page.get_by_role("button", name="Create VM").click()
    expect(page.locator("form .inline-error")).to_contain_text("clone1")
    assert len(ui.daemon.call("GET", "/vms").json()) == 2


def test_a_refused_create_with_a_new_disk_shows_at_the_field_and_the_retry_succeeds(fake_ui: Ui) -> None:
    """The create form makes its new disk with the VM in one server call: a refusal leaves no volume behind (it used
    to, and the retry then found the volume's name taken), and the message sits next to the field it is about."""
    ui, page = fake_ui, fake_ui.page
    ui.add_user("olga", "operator")
    ui.login("olga")
    ui.nav("Create VM")
    page.get_by_label("Name", exact=True).fill("web2")
    page.get_by_role("button", name="Add disk").click()
    page.get_by_label("Size (GiB)").fill("1")
    page.get_by_label("SSH keys").fill("not-a-key")
    page.get_by_label("Start it now").uncheck()
    page.get_by_role("button", name="Create VM").click()
    keys = page.get_by_label("SSH keys")
    expect(keys).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field", has=keys).locator(".field-error")).to_contain_text("OpenSSH")
    assert ui.daemon.call("GET", "/volumes").json() == []  # nothing made for the refused VM

    keys.fill("")
    page.get_by_role("button", name="Create VM").click()
    expect(page.get_by_role("heading", name="web2", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="default/web2-disk0", exact=True)).to_be_visible()
    assert [v["name"] for v in ui.daemon.call("GET", "/volumes").json()] == ["web2-disk0"]


def test_consoles_say_what_to_install_without_the_npm_packages(fake_ui: Ui) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("olga", "operator")
    assert ui.daemon.call("POST", "/vms", json={"name": "desk", "machine": "q35", "display": "vnc"}).status_code == 201
    ui.daemon.ok("POST", "/vms/desk/start")
    page.route("**/ui/vendor/**", lambda route: route.fulfill(status=404, body="not installed"))
    ui.login("olga")
    ui.goto("vms/desk")
    page.get_by_role("button", name="Open console").click()
    expect(page.locator(".console-status").first).to_contain_text("npm ci --prefix src/virtfleet/web")
    page.get_by_role("button", name="Open graphical console").click()
    expect(page.locator(".console-status").nth(1)).to_contain_text("scripts/install.sh")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()  # the rest of the page still works


def test_a_user_changes_their_own_password(fake_ui: Ui) -> None:
    ui, page = fake_ui, fake_ui.page
    ui.add_user("pia", "viewer")
    ui.login("pia")
    ui.nav("API tokens")
    form = page.get_by_role("form", name="Change your password")
    form.get_by_label("Current password").fill("not my password")
    form.get_by_label("New password", exact=True).fill("brand new secret")
    form.get_by_label("New password again").fill("brand new secret")
    form.get_by_role("button", name="Change password").click()
    expect(form.get_by_role("alert")).to_contain_text("not your current password")
    form.get_by_label("Current password").fill(PASSWORD)
    form.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Log in to virtfleet")).to_be_visible()
    expect(page.get_by_text("Password changed: log in with the new one.")).to_be_visible()
    ui.login("pia", "brand new secret")
