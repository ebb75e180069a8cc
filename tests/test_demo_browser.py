"""End to end: the web demo served on 127.0.0.1 and used in a real headless browser, as a person would.

Debian's ``chromium`` and ``chromium-driver`` driven by selenium (``apt-get install chromium chromium-driver``;
``.ci/run`` installs them). The test is skipped, saying why, where gradio, selenium or the browser is missing.
It starts the demo with the packaged model, checks that start-up makes no network connection, clicks
Generate and the stepped comparison, uploads an image to Invert (and a wrong T and a corrupted file, which
must give messages while the app keeps serving), interpolates and starts an edit. Every wait is bounded.

Screenshots go to a temporary folder, or to the folder named by ``LINEARIZER_DEMO_SCREENSHOTS``: the README's
pictures are remade with ``LINEARIZER_DEMO_SCREENSHOTS=docs/images python -m pytest tests/test_demo_browser.py``
(a plain test run leaves the checkout as it was).
"""

import os
import re
import shutil
import socket

import pytest

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install '.[demo]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install '.[test]'")

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 60  # the longest any single step may take on a slow, shared CPU
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _find(*names):
    for name in names:
        path = shutil.which(name) or (name if os.path.isfile(name) else None)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _find("chromedriver", "/usr/lib/chromium/chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no chromium/chromedriver on this machine (apt-get install chromium chromium-driver)",
    ),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # gradio's own use of pandas
]


class NetworkGuard:
    """Refuses and records every socket connection to anything but the loopback interface."""

    def __init__(self):
        self.attempts = []
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex

    def _check(self, sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            self.attempts.append(address)
            raise OSError(f"network access during start-up refused by the test: {address}")

    def __enter__(self):
        guard = self

        def connect(sock, address):
            guard._check(sock, address)
            return guard._connect(sock, address)

        def connect_ex(sock, address):
            guard._check(sock, address)
            return guard._connect_ex(sock, address)

        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        return self

    def __exit__(self, *exc):
        socket.socket.connect, socket.socket.connect_ex = self._connect, self._connect_ex


@pytest.fixture(scope="module")
def server():
    from diffusers_linearizer.demo import get_demo, launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with NetworkGuard() as guard:
        demo = get_demo()  # the packaged model
        blocks = launch(demo=demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo, guard.attempts
    finally:
        blocks.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1200", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_text(driver, elem_id, pattern, timeout=WAIT_S):
    """Wait until the element's text matches ``pattern``; return the match."""
    def found(d):
        elements = d.find_elements(By.ID, elem_id)
        return re.search(pattern, elements[0].text) if elements else None
    try:
        return WebDriverWait(driver, timeout).until(found)
    except TimeoutException:
        elements = driver.find_elements(By.ID, elem_id)
        raise AssertionError(f"#{elem_id} never showed {pattern!r}; it shows {elements[0].text if elements else None!r}")


def wait_image(driver, elem_id, timeout=WAIT_S):
    return WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img[src]") or None)[0]


def click(driver, elem_id):
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, elem_id).is_enabled())
    driver.find_element(By.ID, elem_id).click()


def open_tab(driver, title):
    tab = WebDriverWait(driver, WAIT_S).until(
        lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == title] or None)
    tab[0].click()


def upload(driver, elem_id, path):
    field = WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.ID, elem_id) or None)[0]
    for button in field.find_elements(By.CSS_SELECTOR, "button[aria-label=Clear]"):
        button.click()  # replace an earlier upload
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.ID, elem_id).find_elements(By.CSS_SELECTOR, "input[type=file]") or None
    )[0].send_keys(str(path))


def type_number(driver, elem_id, value):
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def psnr_of(match, group: int = 1) -> float:
    return float("inf") if match.group(group) == "∞" else float(match.group(group))


def test_demo_in_a_browser(server, browser, tmp_path):
    url, demo, network_attempts = server
    assert network_attempts == [], f"start-up tried to reach the network: {network_attempts}"
    shots = os.environ.get("LINEARIZER_DEMO_SCREENSHOTS") or str(tmp_path / "screenshots")
    os.makedirs(shots, exist_ok=True)
    examples = demo.examples()
    image_a, image_b = tmp_path / "a.png", tmp_path / "b.png"
    names = list(examples)
    examples[names[-1]].save(image_a)  # a Fashion-MNIST test image when installed, else a generated one
    examples[names[0]].save(image_b)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    d = browser
    d.get(url)

    # 1. Generate, then the stepped comparison
    click(d, "generate-button")
    wait_text(d, "generate-status", r"16 image\(s\) in \d+ ms")
    wait_image(d, "generate-grid")
    click(d, "compare-button")
    assert psnr_of(wait_text(d, "generate-status", r"PSNR ≥ ([0-9.]+|∞) dB")) > 60
    wait_image(d, "stepped-grid")
    d.save_screenshot(os.path.join(shots, "demo_generate.png"))

    # 2. Invert an uploaded image; bad input gives messages and the app keeps serving
    open_tab(d, "2. Invert")
    upload(d, "invert-upload", image_a)
    wait_text(d, "invert-status", r"Loaded a\.png: 32×32 L")
    type_number(d, "invert-steps", 1)
    click(d, "invert-button")
    wait_text(d, "invert-status", r"Steps T must be between 2 and \d+")
    upload(d, "invert-upload", broken)
    wait_text(d, "invert-status", r"Could not read broken\.png .*corrupted")
    type_number(d, "invert-steps", 100)
    click(d, "invert-button")  # the last good image is still loaded
    assert psnr_of(wait_text(d, "invert-status", r"Regeneration PSNR: ([0-9.]+|∞) dB")) > 60
    wait_text(d, "invert-status", r"(Typical|Not typical): the recovered noise")  # analysis_view.typicality_note
    wait_image(d, "invert-noise")
    wait_image(d, "invert-regen")
    wait_text(d, "invert-stats", r"excess kurtosis")
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(os.path.join(shots, "demo_invert.png"))

    # 3. Interpolate between two uploads
    open_tab(d, "3. Interpolate")
    upload(d, "interpolate-a-upload", image_a)
    wait_text(d, "interpolate-status", r"Loaded a\.png")
    upload(d, "interpolate-b-upload", image_b)
    wait_text(d, "interpolate-status", r"Loaded b\.png")
    click(d, "interpolate-button")
    match = wait_text(d, "interpolate-status", r"PSNR ([0-9.]+|∞) dB and ([0-9.]+|∞) dB")
    assert min(psnr_of(match, 1), psnr_of(match, 2)) > 60
    wait_image(d, "interpolate-strip")
    wait_image(d, "interpolate-gif")
    d.save_screenshot(os.path.join(shots, "demo_interpolate.png"))

    # 4. Edit: at the start (all sliders at 0) the image comes back
    open_tab(d, "4. Edit")
    upload(d, "edit-upload", image_a)
    wait_text(d, "edit-status", r"Loaded a\.png")
    click(d, "edit-start")
    assert psnr_of(wait_text(d, "edit-status", r"gives back the original, PSNR ([0-9.]+|∞) dB")) > 60
    wait_image(d, "edit-image")
    wait_image(d, "edit-directions")
    type_number(d, "edit-alpha-1", 1)  # move along v1 …
    wait_text(d, "edit-status", r"Moved by \+1\.00, \+0\.00")
    d.save_screenshot(os.path.join(shots, "demo_edit.png"))
    type_number(d, "edit-alpha-1", 0)  # … and back
    assert psnr_of(wait_text(d, "edit-status", r"gives back the original, PSNR ([0-9.]+|∞) dB")) > 60
    # the local directions at this image (diffusers_linearizer.analysis through demo/analysis_view.py)
    d.find_element(By.ID, "edit-directions-set").find_element(
        By.XPATH, ".//label[contains(., 'local directions at this image')]").click()
    click(d, "edit-start")
    wait_text(d, "edit-status", r"local directions\)")
    assert psnr_of(wait_text(d, "edit-status", r"gives back the original, PSNR ([0-9.]+|∞) dB")) > 60

    # 5. Project: generate on P's range, then project a noisy upload and apply f again
    open_tab(d, "5. Project")
    click(d, "project-generate")
    moved = float(wait_text(d, "project-status", r"moves them by at most ([0-9]\.[0-9]e[+-][0-9]+)").group(1))
    assert moved < 1e-3
    wait_image(d, "project-samples")
    upload(d, "project-upload", image_a)
    wait_text(d, "project-status", r"Loaded a\.png")
    click(d, "project-button")
    again = wait_text(d, "project-status", r"f\(f\(x̃\)\) − f\(x̃\): at most ([0-9]\.[0-9]e[+-][0-9]+)")
    assert float(again.group(1)) < 1e-3
    wait_image(d, "project-output")
    wait_image(d, "project-again")
    d.save_screenshot(os.path.join(shots, "demo_project.png"))

    # 6. Style: take the sample photo, stylise it, then the un-stylisation round trip
    open_tab(d, "6. Style")
    click(d, "style-sample")
    wait_image(d, "style-photo")
    click(d, "style-button")
    wait_text(d, "style-status", r"Stylised with .* at strength 1\.00")
    wait_image(d, "style-output")
    click(d, "style-unstylize")
    assert float(wait_text(d, "style-status", r"Round trip .*: ([0-9.]+) dB PSNR to the photo").group(1)) > 40
    wait_image(d, "style-recovered")
    d.save_screenshot(os.path.join(shots, "demo_style.png"))
