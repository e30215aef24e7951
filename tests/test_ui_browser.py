"""The /ui page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
against a real uvicorn on loopback. A screenshot of each step is saved under the test's temp folder."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api_fixtures import ApiServer, Media, make_media

pytestmark = pytest.mark.slow

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMEDRIVER is None or CHROMIUM is None:
    pytest.skip("needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

API_KEY = "ui-test-key-0123456789"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("ui-media"), seconds=2.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ApiServer]:
    with ApiServer(env={"LIPSYNC_TEST_FAKE_SECONDS": "3"}, work_dir=tmp_path_factory.mktemp("ui") / "work") as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[ApiServer]:
    with ApiServer(env={"LIPSYNC_TEST_FAKE_SECONDS": "0.2"}, work_dir=tmp_path_factory.mktemp("uik") / "work",
                   api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,2400", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Steps:
    """Screenshots of each step, kept under the pytest temp directory as the test's artifacts."""

    def __init__(self, driver, folder: Path) -> None:
        self.driver, self.folder, self.n = driver, folder / "screenshots", 0
        self.folder.mkdir(exist_ok=True)

    def shot(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the element may not exist yet
            last_error = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" ({last_error})" if last_error else ""))


def open_page(driver, server: ApiServer) -> None:
    driver.get(server.url + "/ui")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), what="page ready")


def add_character(driver, cid: str, name: str, photo: Path) -> None:
    driver.find_element(By.ID, "add-character").click()
    node = driver.find_elements(By.CSS_SELECTOR, "#character-list .character")[-1]
    node.find_element(By.CSS_SELECTOR, ".char-id").send_keys(cid)
    node.find_element(By.CSS_SELECTOR, ".char-name").send_keys(name)
    node.find_element(By.CSS_SELECTOR, ".char-refs").send_keys(str(photo))


def status(driver) -> str:
    return driver.find_element(By.ID, "job-status").text


def test_upload_preview_run_and_play(browser, server, media, tmp_path):
    steps = Steps(browser, tmp_path)
    open_page(browser, server)
    # The form follows the options model: names, defaults and ranges from GET /options.
    crossfade = browser.find_element(By.ID, "opt-crossfade_frames")
    assert crossfade.get_attribute("value") == "10" and crossfade.get_attribute("max") == "250"
    assert Select(browser.find_element(By.ID, "opt-loop_mode")).first_selected_option.text == "crossfade"
    label = browser.find_element(By.CSS_SELECTOR, "label[for='opt-loop_mode']")
    assert label.text == "loop_mode"
    steps.shot("loaded")

    browser.find_element(By.ID, "video").send_keys(str(media.video))
    browser.find_element(By.ID, "audio").send_keys(str(media.audio))
    add_character(browser, "speaker", "Main Speaker", media.reference)
    Select(browser.find_element(By.ID, "opt-loop_mode")).select_by_visible_text("pingpong")
    steps.shot("filled")

    browser.find_element(By.ID, "preview").click()
    wait_for(lambda: browser.find_element(By.ID, "job-status").get_attribute("data-status") == "succeeded",
             timeout=60, what="tracking preview")
    counts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".track-count")]
    assert counts == ["Main Speaker (speaker): 0 frames"]  # the fake engine's tracks JSON has no frames
    wait_for(lambda: browser.execute_script("return document.getElementById('result').readyState") >= 2,
             what="preview video")
    steps.shot("preview")

    browser.find_element(By.ID, "run").click()
    # The progress bar advances while the job runs (the fake engine reports 5 steps over 3 s).
    seen = set()

    def advancing():
        value = browser.execute_script(
            "const b = document.getElementById('stage-lipsync'); return b ? b.value : null")
        if value is not None:
            seen.add(value)
        return len({v for v in seen if 0 < v < 5}) >= 1 and status(browser).startswith("running")

    wait_for(advancing, timeout=60, what="progress")
    steps.shot("progress")
    wait_for(lambda: browser.find_element(By.ID, "job-status").get_attribute("data-status") == "succeeded"
             and "Lip-sync" in browser.find_element(By.ID, "job-title").text, timeout=60, what="lip-sync job")
    ready = wait_for(lambda: browser.execute_script(
        "const v = document.getElementById('result'); return v.readyState >= 2 ? [v.readyState, v.duration] : null"),
        what="result video")
    assert ready[0] >= 2 and abs(ready[1] - 2.0) < 0.25, ready  # the fake result is the 2 s input video
    assert browser.find_element(By.ID, "download").is_displayed()
    steps.shot("result")
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs-body tr")
    assert len(rows) >= 2 and "lipsync" in rows[0].text and "face_tracking" in rows[1].text


def test_cancel_a_running_job(browser, tmp_path, media):
    steps = Steps(browser, tmp_path)
    with ApiServer(env={"LIPSYNC_TEST_FAKE_SECONDS": "30"}, work_dir=tmp_path / "work") as srv:
        open_page(browser, srv)
        browser.find_element(By.ID, "video").send_keys(str(media.video))
        browser.find_element(By.ID, "audio").send_keys(str(media.audio))
        browser.find_element(By.ID, "run").click()
        wait_for(lambda: status(browser).startswith("running"), timeout=30, what="running")
        steps.shot("running")
        started = time.monotonic()
        browser.find_element(By.ID, "cancel").click()
        wait_for(lambda: browser.find_element(By.ID, "job-status").get_attribute("data-status") == "cancelled",
                 timeout=15, what="cancelled")
        assert time.monotonic() - started < 10
        steps.shot("cancelled")


def test_text_file_as_video_shows_not_media_beside_the_field(browser, server, media, tmp_path):
    steps = Steps(browser, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("these are meeting notes, not a video\n" * 50)
    open_page(browser, server)
    browser.find_element(By.ID, "video").send_keys(str(notes))
    browser.find_element(By.ID, "audio").send_keys(str(media.audio))
    browser.find_element(By.ID, "run").click()
    error = wait_for(lambda: browser.find_element(By.ID, "video-error").text, what="video error")
    assert "not_media" in error and "notes.txt" in error
    assert browser.find_element(By.ID, "video").get_attribute("aria-invalid") == "true"
    steps.shot("not-media")


def test_out_of_range_setting_shows_the_error_beside_it(browser, server, media, tmp_path):
    open_page(browser, server)
    browser.find_element(By.ID, "video").send_keys(str(media.video))
    browser.find_element(By.ID, "audio").send_keys(str(media.audio))
    field = browser.find_element(By.ID, "opt-crossfade_frames")
    field.clear()
    field.send_keys("251")
    field.send_keys(Keys.ENTER)  # keyboard submit
    error = wait_for(lambda: browser.find_element(By.ID, "opt-crossfade_frames-error").text, what="setting error")
    assert "less than or equal to 250" in error
    Steps(browser, tmp_path).shot("range-error")


def test_api_key_prompt_and_wrong_key(browser, keyed_server, media, tmp_path):
    steps = Steps(browser, tmp_path)
    open_page(browser, keyed_server)
    wait_for(lambda: browser.find_element(By.ID, "auth").is_displayed(), what="key prompt")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("wrong-key")
    key.send_keys(Keys.ENTER)
    error = wait_for(lambda: browser.find_element(By.ID, "api-key-error").text, what="auth error")
    assert "refused" in error.lower()
    steps.shot("wrong-key")
    key.clear()
    key.send_keys(API_KEY)
    browser.find_element(By.ID, "api-key-save").click()
    wait_for(lambda: not browser.find_element(By.ID, "auth").is_displayed(), what="key accepted")
    # Kept for the session only.
    assert browser.execute_script("return sessionStorage.getItem('lipsync.apiKey')") == API_KEY
    assert browser.execute_script("return localStorage.length") == 0
    browser.find_element(By.ID, "video").send_keys(str(media.video))
    browser.find_element(By.ID, "audio").send_keys(str(media.audio))
    browser.find_element(By.ID, "run").click()
    wait_for(lambda: browser.find_element(By.ID, "job-status").get_attribute("data-status") == "succeeded",
             timeout=60, what="job with key")
    steps.shot("with-key")


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    import importlib.util

    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs dlib (pip install 'lipsync[offline]') for an offline real face backend")
    from conftest import shared_file
    from pipeline_fixtures import write_photo_video, write_random_wav2lip, write_speechlike_wav

    d = tmp_path_factory.mktemp("ui-real")
    return d, {
        "wav2lip": write_random_wav2lip(d / "wav2lip_gan.pth", seed=1),
        "video": write_photo_video(d / "obama.mp4", shared_file("obama.jpg"), width=288, height=384, fps=10,
                                   seconds=1.0),
        "audio": write_speechlike_wav(d / "speech.wav", 1.0),
        "reference": shared_file("obama2.jpg"),
    }


def test_real_pipeline_through_the_page(browser, real_files, tmp_path):
    """Once with the real pipeline: dlib faces, a seeded random-weight Wav2Lip of the real layout."""
    d, f = real_files
    env = {"LIPSYNC_FACE_BACKEND": "dlib", "LIPSYNC_OFFLINE": "true", "LIPSYNC_DEVICE": "cpu",
           "LIPSYNC_WAV2LIP_CHECKPOINT": str(f["wav2lip"]), "MODELS_DIR": str(d / "models"),
           "PRELOAD_MODELS": "false"}
    steps = Steps(browser, tmp_path)
    with ApiServer(env=env, work_dir=tmp_path / "work", real=True) as srv:
        open_page(browser, srv)
        browser.find_element(By.ID, "video").send_keys(str(f["video"]))
        browser.find_element(By.ID, "audio").send_keys(str(f["audio"]))
        add_character(browser, "obama", "Barack Obama", f["reference"])
        Select(browser.find_element(By.ID, "opt-enhance")).select_by_visible_text("off")
        browser.find_element(By.ID, "run").click()
        wait_for(lambda: browser.find_element(By.ID, "job-status").get_attribute("data-status"), timeout=240,
                 what="real job")
        assert browser.find_element(By.ID, "job-status").get_attribute("data-status") == "succeeded", (
            browser.find_element(By.ID, "form-error").text + srv.log()[-2000:])
        ready = wait_for(lambda: browser.execute_script(
            "const v = document.getElementById('result'); return v.readyState >= 2 ? v.duration : null"),
            what="real result video")
        assert abs(ready - 1.0) < 0.2, ready
        stages = {e.get_attribute("data-stage") for e in browser.find_elements(By.CSS_SELECTOR, "#stages .stage")}
        assert {"download", "lipsync"} <= stages, stages
        steps.shot("real-result")
