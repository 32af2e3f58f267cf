"""The Ray Serve application on 127.0.0.1: every output format against a direct Segmenter call,
bad input answered 4xx while the service keeps serving, and concurrent requests batched."""
import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tcl.images import encode_image
from tcl.encoding import run_length_decode
from tcl.segment import Segmenter
from tests.helpers import save_trained_looking_checkpoint
from tests.s3_server import free_port

PROTOCOL = {"short_side": 32, "window": 32, "stride": 16}
TEXTS = ["a red star", "grass", "sky"]


def picture(seed: int, size=(52, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_trained_looking_checkpoint(str(tmp_path_factory.mktemp("serve") / "ckpt"), seed=7)


@pytest.fixture(scope="module")
def service(ray_cluster, checkpoint):
    from ray import serve

    from tcl.ray.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": checkpoint, "device": "cpu", "segmenter": PROTOCOL,
                         "limits": {"max_body_bytes": 2**20, "max_pixels": 300 * 300, "max_texts": 8},
                         "max_batch_size": 16, "batch_wait_timeout_s": 0.05}), name="tcl", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def direct(checkpoint):
    return Segmenter.from_checkpoint(checkpoint, device="cpu", **PROTOCOL)


def segment(url, image_bytes, texts=TEXTS, **fields):
    data = {"texts": ",".join(texts), **{k: str(v) for k, v in fields.items()}}
    return requests.post(f"{url}/v1/segment", files={"image": ("x.png", image_bytes, "image/png")}, data=data, timeout=60)


def test_json_answer_matches_a_direct_segmenter_call(service, direct):
    image = picture(1)
    answer = segment(service, encode_image(image), format="json")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    [expected] = direct.segment(image, TEXTS, background_threshold=0.4, pamr=True)
    assert (body["width"], body["height"]) == (52, 40)
    assert body["classes"] == ["background", *TEXTS] and body["background_threshold"] == 0.4
    labels = run_length_decode(body["labels"])
    assert np.array_equal(labels, expected.labels)
    for i, name in enumerate(body["classes"]):
        assert body["fractions"][name] == pytest.approx(np.mean(expected.labels == i))
    assert len(body["colors"]) == 4 and all(c.startswith("#") and len(c) == 7 for c in body["colors"])


def test_base64_json_request_without_threshold_and_pamr(service, direct):
    image = picture(2)
    payload = {"image": base64.b64encode(encode_image(image)).decode(), "texts": TEXTS, "background_threshold": None,
               "pamr": False, "format": "json", "overlay": True}
    answer = requests.post(f"{service}/v1/segment", json=payload, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    [expected] = direct.segment(image, TEXTS, background_threshold=None, pamr=False)
    assert body["classes"] == TEXTS  # every pixel gets one of the texts
    assert np.array_equal(run_length_decode(body["labels"]), expected.labels)
    with Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))) as overlay:
        assert overlay.width > 52 and overlay.height >= 40  # the image and its legend


def test_png_and_overlay_answers(service, direct):
    image = picture(3)
    [expected] = direct.segment(image, TEXTS, background_threshold=0.4)
    answer = segment(service, encode_image(image), format="png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert json.loads(answer.headers["x-classes"]) == ["background", *TEXTS]
    with Image.open(io.BytesIO(answer.content)) as label_map:
        assert label_map.mode == "P" and np.array_equal(np.asarray(label_map), expected.labels)
    answer = segment(service, encode_image(image), format="overlay")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(answer.content)) as overlay:
        assert overlay.width > 52


@pytest.mark.parametrize("case,status,code", [
    ("body_too_large", 413, "body_too_large"),
    ("not_an_image", 400, "bad_image"),
    ("truncated", 400, "bad_image"),
    ("too_many_pixels", 413, "image_too_large"),
    ("no_texts", 400, "no_texts"),
    ("too_many_texts", 400, "too_many_texts"),
    ("text_too_long", 400, "text_too_long"),
    ("bad_format", 400, "bad_option"),
    ("bad_threshold", 400, "bad_option"),
    ("bad_pamr", 400, "bad_option"),
    ("unknown_field", 400, "unknown_option"),
    ("bad_base64", 400, "bad_image"),
    ("plain_text_body", 415, "unsupported_media_type"),
])
def test_bad_input_is_a_4xx_naming_the_problem_and_the_service_keeps_serving(service, case, status, code):
    good = encode_image(picture(4))
    if case == "body_too_large":
        answer = segment(service, b"\0" * (2**20 + 10))
    elif case == "not_an_image":
        answer = segment(service, b"GIF89a but not really an image")
    elif case == "truncated":
        answer = segment(service, good[: len(good) // 2])
    elif case == "too_many_pixels":
        answer = segment(service, encode_image(Image.new("RGB", (301, 300))))
    elif case == "no_texts":
        answer = segment(service, good, texts=[" ", ""])
    elif case == "too_many_texts":
        answer = segment(service, good, texts=[f"thing {i}" for i in range(9)])
    elif case == "text_too_long":
        answer = segment(service, good, texts=["x" * 201])
    elif case == "bad_format":
        answer = segment(service, good, format="jpeg")
    elif case == "bad_threshold":
        answer = segment(service, good, background_threshold="1.5")
    elif case == "bad_pamr":
        answer = segment(service, good, pamr="maybe")
    elif case == "unknown_field":
        answer = segment(service, good, colour="blue")
    elif case == "bad_base64":
        answer = requests.post(f"{service}/v1/segment", json={"image": "not base64!", "texts": TEXTS}, timeout=60)
    else:
        answer = requests.post(f"{service}/v1/segment", data="hello", headers={"content-type": "text/plain"}, timeout=60)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == code and body["message"]
    assert segment(service, good).status_code == 200  # and the next good request still succeeds


def test_concurrent_requests_all_succeed_and_are_batched(service, direct):
    images = [picture(100 + i) for i in range(32)]
    texts = [TEXTS if i % 2 else ["grass", f"a {i} pointed star"] for i in range(32)]  # different texts, one batch
    before = requests.get(f"{service}/v1/info", timeout=30).json()["batches"]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: segment(service, encode_image(images[i]), texts=texts[i]), range(32)))
    assert [a.status_code for a in answers] == [200] * 32
    for image, image_texts, answer in zip(images, texts, answers):
        [expected] = direct.segment(image, image_texts, background_threshold=0.4)
        assert np.array_equal(run_length_decode(answer.json()["labels"]), expected.labels)
    after = requests.get(f"{service}/v1/info", timeout=30).json()["batches"]
    new = {int(size): count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert sum(size * count for size, count in new.items()) == 32  # every request went through a batch
    assert max(new) > 1  # and some batches held several requests


def test_health_info_and_page(service, checkpoint):
    assert requests.get(f"{service}/v1/health", timeout=30).json() == {"status": "ok"}
    info = requests.get(f"{service}/v1/info", timeout=30).json()
    assert info["backbone"] == "tiny-test" and info["device"] == "cpu" and info["checkpoint"] == checkpoint
    assert info["limits"]["max_texts"] == 8 and info["max_batch_size"] == 16
    page = requests.get(f"{service}/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="texts"' in page.text and "/v1/segment" in page.text


def test_web_page_in_a_headless_browser(service, tmp_path):
    """Upload an image and prompts through the page in Debian's Chromium; the overlay and the legend appear."""
    import shutil

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("no browser: install Debian's chromium and chromium-driver (scripts/bootstrap.sh does, as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    picture(9, size=(64, 48)).save(tmp_path / "upload.png")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{service}/")
        driver.find_element(By.ID, "image").send_keys(str(tmp_path / "upload.png"))
        driver.find_element(By.ID, "texts").send_keys("a red star, grass, sky")
        driver.find_element(By.ID, "segment").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend li") or d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == ""
        overlay = driver.find_element(By.ID, "overlay")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 64
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#legend li .class-name")]
        assert sorted(names) == sorted(["background", "a red star", "grass", "sky"])
        areas = [float(e.text.rstrip("%")) for e in driver.find_elements(By.CSS_SELECTOR, "#legend li .area")]
        assert sum(areas) == pytest.approx(100, abs=0.5)

        # a bad request shows the service's message on the page
        driver.find_element(By.ID, "threshold").clear()
        driver.find_element(By.ID, "threshold").send_keys("7")
        driver.find_element(By.ID, "segment").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").text)
        assert "400 bad_option" in driver.find_element(By.ID, "error").text
    finally:
        driver.quit()


@pytest.mark.parametrize("config", ["serve/config.yaml", "serve/config-gpu.yaml"])
def test_serve_configs_are_valid_for_ray_and_for_the_app(config):
    import inspect
    import os

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from tcl.ray.serve import SegmentationService, build_app

    with open(os.path.join(os.path.dirname(__file__), "..", config)) as f:
        raw = yaml.safe_load(f)
    schema = ServeDeploySchema.model_validate(raw)  # Ray's own schema: a wrong key fails here
    [application] = schema.applications
    assert application.import_path == "tcl.ray.serve:build_app"
    assert [d.name for d in application.deployments] == ["SegmentationService"]
    inspect.signature(SegmentationService.func_or_class.__init__).bind(None, **application.args)  # the app takes these args
    build_app(application.args)
