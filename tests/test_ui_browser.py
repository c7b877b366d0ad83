"""The web UI end to end, in a real headless Chromium: type a prompt, run, see previews and the images on disk.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them); skipped without them.
``SDFLOW_UI_SCREENSHOT=docs/images/ui.png`` also saves the README's screenshot of the finished run.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

PROMPT = "a large yellow triangle on the right, purple background"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1150"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-browser")
    saved, cwd = os.environ.get("GRADIO_TEMP_DIR"), os.getcwd()
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # gradio's copies of shown files stay in the test's folder
    os.chdir(root)  # the UI shows run folders relative to where it was started: outputs/ui/...
    import uvicorn

    from sdflow.ui.app import create_app
    from sdflow.ui.limits import Folders

    app, jobs = create_app(Folders("outputs", "outputs/.uploads"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", jobs
    server.should_exit = True
    thread.join(timeout=10)
    os.chdir(cwd)
    if saved is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = saved


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(condition, seconds=60, every=0.1, state=lambda: ""):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            found = condition()
        except StaleElementReferenceException:  # gradio re-rendered the element between finding and reading it
            found = None
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds} s {state()}")


def image_sources(driver, element_id):
    return [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")]


def test_type_a_prompt_run_and_see_previews_and_the_images_on_disk(server, browser):
    url, jobs = server
    browser.get(url)
    prompt = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#field-prompt textarea"))[0]
    prompt.clear()
    prompt.send_keys(PROMPT)
    seed = browser.find_element(By.CSS_SELECTOR, "#field-seed textarea, #field-seed input")
    seed.clear()
    seed.send_keys("0, 1, 2, 3")  # a sweep of seeds: one job, one batch
    steps = browser.find_element(By.CSS_SELECTOR, "#field-steps input")
    steps.clear()
    steps.send_keys("0")
    browser.find_element(By.ID, "run").click()
    # validated before anything runs; the engine's message is shown beside the field it names
    error = wait_for(lambda: "".join(e.text for e in browser.find_elements(By.ID, "error-steps")))
    assert "expected a value >= 1, given 0" in error
    wait_for(lambda: "Not run" in browser.find_element(By.ID, "problems").text)
    assert not jobs.jobs
    steps = browser.find_element(By.CSS_SELECTOR, "#field-steps input")
    steps.clear()
    steps.send_keys("20")
    for _ in range(3):  # gradio ignores a click while the button's last event is still closing (trigger_mode once)
        browser.find_element(By.ID, "run").click()
        try:
            wait_for(lambda: jobs.jobs, seconds=5)
            break
        except AssertionError:
            continue
    wait_for(lambda: "Not run" not in browser.find_element(By.ID, "problems").text,  # the new run's first update
             state=lambda: ([(j.status, j.step) for j in jobs.jobs.values()], browser.find_element(By.ID, "status").text))
    assert not any(e.is_displayed() for e in browser.find_elements(By.ID, "error-steps"))

    statuses = []

    def finished():
        text = browser.find_element(By.ID, "status").text
        if text and (not statuses or statuses[-1] != text):
            statuses.append(text)
        return "done" in text or "failed" in text or "Not run" in browser.find_element(By.ID, "problems").text

    wait_for(finished, seconds=90,  # about 20 s on 2 free cores
             state=lambda: (statuses, [(j.status, j.step, j.error) for j in jobs.jobs.values()]))
    assert statuses[-1].startswith("done"), (statuses, browser.find_element(By.ID, "problems").text)
    assert any("step" in s for s in statuses)  # live progress was shown
    (job,) = jobs.jobs.values()
    assert job.previews >= 4 and [p.name for p in job.images] == [f"text2img_00{i}_seed{i}.png" for i in range(4)]
    assert f"outputs/ui/{job.id}" in statuses[-1] and all(path.name in statuses[-1] for path in job.images)

    previews = wait_for(lambda: image_sources(browser, "preview"))
    shown_preview = np.asarray(Image.open(urllib.request.urlopen(previews[0])).convert("RGB"))
    assert shown_preview.shape[0] >= 128  # the 2x2 grid of the last step's preview, scaled up to be seen

    shown = wait_for(lambda: (lambda s: s if len(s) == 4 else None)(image_sources(browser, "result")))
    for source, path in zip(shown, job.images):
        served = urllib.request.urlopen(source).read()
        assert served == path.read_bytes()  # the very file the run wrote, metadata and all
    metadata = browser.find_element(By.ID, "metadata").text
    assert PROMPT in metadata

    if os.environ.get("SDFLOW_UI_SCREENSHOT"):
        time.sleep(0.5)
        browser.save_screenshot(os.environ["SDFLOW_UI_SCREENSHOT"])
