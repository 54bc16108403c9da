"""The workbook as a user meets it: a real JupyterLab server and headless Chromium (Debian's, driven by playwright)
on the notebooks the pipeline executed for the tiny preset."""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pandas as pd
import pytest

from conftest import REPO
from distillspec.study.inspector import entropy_range_label
from test_pipeline import RUNS

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium not found: `make test` installs Debian's chromium; elsewhere set CHROMIUM=/path/to/it."
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tiny_run, tmp_path_factory):
    """`make lab` on 127.0.0.1 with a token, serving the tiny run's executed notebooks; stopped by its PID (the
    process group: make and the server it started)."""
    _, run_dir, _ = tiny_run
    home = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), os.urandom(12).hex()
    lab_args = (f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} "
                f"--LabApp.workspaces_dir={home / 'workspaces'}")
    cmd = ["make", "--no-print-directory", "-C", str(REPO), "lab", f"LAB_DIR={run_dir}", f"LAB_ARGS={lab_args}"]
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"))  # no user settings; the signatures stay shared
    log = open(home / "server.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            assert server.poll() is None, f"JupyterLab exited: {(home / 'server.log').read_text()[-2000:]}"
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail(f"JupyterLab did not answer on {base}: {(home / 'server.log').read_text()[-2000:]}")
        yield base, token, home
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the process group make leads (JupyterLab shuts its kernels down on it), SIGKILL if it hangs."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def _open(browser, lab, notebook: str):
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    return page


def _visible_text(page, selector: str) -> str:
    return "\n".join(el.inner_text() for el in page.locator(selector).all() if el.is_visible())


def _visible_text_once(page, selector: str, wanted: str, timeout_s: float = 15.0) -> str:
    """The visible text under selector once it contains `wanted` (widgets render their outputs one by one), or
    what is there when the time is up."""
    deadline = time.monotonic() + timeout_s
    text = _visible_text(page, selector)
    while wanted not in text and time.monotonic() < deadline:
        page.wait_for_timeout(200)
        text = _visible_text(page, selector)
    return text


def _screenshot(page, lab, name: str) -> None:
    page.screenshot(path=str(lab[2] / f"{name}.png"))


def test_saved_bin_inspector_renders_and_follows_the_slider(lab, browser, tiny_run):
    """The executed 04 opens trusted: the inspector is a real slider and dropdown (not the widget's text repr),
    and moving the slider shows the next bin's numbers, with no kernel running the notebook's code."""
    _, run_dir, _ = tiny_run
    bins = pd.read_csv(run_dir / "entropy_bins.csv")
    first, second = sorted(bins["bin"].unique())[:2]
    labels = {b: entropy_range_label(*bins.loc[bins["bin"] == b, ["lo", "hi"]].iloc[0]) for b in (first, second)}
    page = _open(browser, lab, "04_entropy_analysis.ipynb")
    slider = page.locator(".widget-slider .noUi-handle").first
    slider.wait_for(timeout=60_000)
    assert page.get_by_text("VBox(children=").count() == 0  # the untrusted fallback
    dropdown = page.locator(".widget-dropdown select").first
    assert dropdown.is_visible()
    panel = ".widget-vbox .jp-RenderedHTMLCommon"
    page.locator(".widget-readout").first.scroll_into_view_if_needed()
    before = _visible_text_once(page, panel, labels[first])
    assert labels[first] in before and labels[second] not in before
    assert page.locator(".widget-readout").first.inner_text() == labels[first]
    _screenshot(page, lab, "04_before")

    slider.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("([el, label]) => el.innerText === label",
                           arg=[page.locator(".widget-readout").first.element_handle(), labels[second]], timeout=10_000)
    after = _visible_text_once(page, panel, labels[second])
    assert labels[second] in after and labels[first] not in after
    row = bins[bins["bin"] == second].iloc[0]
    assert f"{row['accept_rate']:.3f}" in after and str(int(row["n"])) in after  # the new bin's own numbers
    _screenshot(page, lab, "04_after_slider")

    drafts = dropdown.locator("option").all_inner_texts()
    assert f"Examples from {drafts[0]}" in after or f"No verified tokens of {drafts[0]}" in after
    dropdown.select_option(drafts[-1])
    page.wait_for_timeout(300)
    switched = _visible_text(page, panel)
    assert f"Examples from {drafts[-1]}" in switched or f"No verified tokens of {drafts[-1]}" in switched
    assert labels[second] in switched  # the dropdown keeps the bin
    page.close()


def test_saved_progress_bars_render(lab, browser):
    """The executed 03 shows its progress bars as widgets (finished), not as frozen '0%' text."""
    page = _open(browser, lab, "03_specdec_eval.ipynb")
    page.locator(".widget-hprogress").first.wait_for(timeout=60_000)
    bars = page.locator(".jp-OutputArea .widget-hprogress")
    assert bars.count() >= 1
    text = " ".join(_visible_text(page, ".jp-OutputArea .widget-hbox").split())  # tqdm pads with figure spaces
    assert "drafts: 100%" in text and f"{len(RUNS) + 1}/{len(RUNS) + 1}" in text, text[:300]
    assert page.get_by_text("0%|").count() == 0
    _screenshot(page, lab, "03_progress")
    page.close()


def test_rerun_in_lab_gives_a_live_inspector(lab, browser, tiny_run):
    """Run All in JupyterLab re-executes 04 on the project's kernel; the new inspector is live (connected to the
    kernel) and follows the slider too."""
    _, run_dir, _ = tiny_run
    bins = pd.read_csv(run_dir / "entropy_bins.csv")
    last = sorted(bins["bin"].unique())[-1]
    label = entropy_range_label(*bins.loc[bins["bin"] == last, ["lo", "hi"]].iloc[0])
    page = _open(browser, lab, "04_entropy_analysis.ipynb")
    page.locator(".widget-slider").first.wait_for(timeout=60_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    live = page.locator(".distillspec-inspector:not(.jupyter-widgets-disconnected)")
    live.wait_for(timeout=120_000)
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert stderr.count() == 0, [el.inner_text()[:300] for el in stderr.all()]
    handle = live.locator(".widget-slider .noUi-handle").first
    handle.focus()
    page.keyboard.press("End")  # the last bin
    page.wait_for_function("([el, label]) => el.innerText === label",
                           arg=[live.locator(".widget-readout").first.element_handle(), label], timeout=10_000)
    text = "\n".join(el.inner_text() for el in live.locator(".jp-RenderedHTMLCommon").all() if el.is_visible())
    assert label in text
    _screenshot(page, lab, "04_rerun_live")
    page.close()
