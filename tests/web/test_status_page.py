"""The status page of a real node: a CT study stored over DIMSE, its job run and its results delivered to a
dcmtk storescp; the page rendered by headless Chromium (screenshot kept under the test's tmp_path), its HTML
checked, its thumbnails fetched, the login, the cookie and the re-run button's CSRF protection exercised."""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from neuronova.phantoms.dicom import make_ct_study, write_series
from tests.conftest import DCMTK_ENV, NodeProcess, get_port, storescu, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PIPELINE = "ct_classification"


wait_for_node = partial(wait_for, interval=0.5)  # polls the node over HTTP: twice a second is enough


class Page(HTMLParser):
    """What the tests look for in a rendered page: images, forms' hidden inputs, job rows, meta refresh."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.hidden: dict[str, str] = {}
        self.job_rows: list[str] = []
        self.refresh: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a.get("value", "")
        elif tag == "tr" and "job" in a.get("class", "").split():
            self.job_rows.append(a.get("data-job", ""))
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content")


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A node whose CT study was classified and delivered to a storescp (shared by the module's tests; the re-run
    test comes last)."""
    tmp_path = tmp_path_factory.mktemp("web")
    dest_port = get_port()
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(received), str(dest_port)], env=DCMTK_ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "node" / "data").mkdir(parents=True)
    node = NodeProcess(data_dir=tmp_path / "node" / "data", http_port=get_port(), dimse_port=get_port(),
                       secret=secrets.token_hex(32),
                       extra_args=["--stable-seconds", "1", "--allowed-ae", "STORESCU",
                                   "--destination", f"dimse://DEST@127.0.0.1:{dest_port}"])
    try:
        node.start(timeout=180)
        study = make_ct_study(7, n_slices=16, matrix=128, tumour_class="Glioma", patient_id="NN-WEB-1")
        assert storescu(node.dimse_port, write_series(study.datasets, tmp_path / "ct")).returncode == 0
        study_uid = str(study.datasets[0].StudyInstanceUID)

        def done() -> dict | None:
            r = httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10)
            jobs = r.json().get("jobs", []) if r.status_code == 200 else []
            assert not [j for j in jobs if j["state"] == "failed"], jobs
            return next((j for j in jobs if j["pipeline"] == PIPELINE and j["state"] == "done"), None)

        job = wait_for_node(done, 240, "the CT job done and delivered")
        yield {"node": node, "study_uid": study_uid, "job": job}
    finally:
        node.stop()
        scp.terminate()
        scp.wait(10)


def test_page_in_headless_chromium(processed: dict[str, Any], tmp_path: Path) -> None:
    node, study_uid, job = processed["node"], processed["study_uid"], processed["job"]
    page_url = f"{node.url}/ui/studies/{study_uid}"
    # Chromium follows the ?token= link: the node sets the session cookie and redirects to the page without it.
    shot = tmp_path / "study.png"
    proc = chromium([f"--screenshot={shot}", "--window-size=1400,1300", f"{page_url}?token={node.token('viewer')}"],
                    tmp_path / "profile")
    assert shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot)
    assert image.size == (1400, 1300)
    # more than a blank page: the header's dark blue and the overlays' colours are there
    colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200
    # the thumbnails were drawn: the overlays' red "NOT FOR CLINICAL USE" band is the only pure red on the page
    red = sum(n for n, (r, g, b) in colours if r > 200 and g < 80 and b < 80)
    assert red > 200, red

    # the same page's DOM as Chromium rendered it, with the cookie of the same profile
    dom = chromium(["--dump-dom", page_url], tmp_path / "profile").stdout
    page = Page(dom)
    assert page.job_rows == [job["job_id"]], dom[:3000]
    assert "Log in" not in dom
    assert "done" in dom and PIPELINE in dom
    assert page.refresh in ("5", "30")  # 30 once the study is stable and its jobs final
    overlays = [r["sop_instance_uid"] for r in job["results"] if r["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.7"]
    assert overlays
    assert [img["src"] for img in page.images] == [f"/ui/instances/{uid}/thumbnail.png" for uid in overlays]
    # deliveries per destination: every result sent
    assert re.search(rf"dimse://DEST@127\.0\.0\.1:\d+</code>: {len(job['results'])} sent", dom), dom[:4000]

    # the list of recent studies, in the same browser session (the cookie is in the profile)
    index_shot = tmp_path / "index.png"
    chromium([f"--screenshot={index_shot}", "--window-size=1400,700", f"{node.url}/ui/"], tmp_path / "profile")
    assert index_shot.is_file()
    index = chromium(["--dump-dom", f"{node.url}/ui/"], tmp_path / "profile").stdout
    assert f'href="/ui/studies/{study_uid}"' in index and "1 done" in index


def test_login_cookie_thumbnails_and_rerun(processed: dict[str, Any]) -> None:
    node, study_uid, job = processed["node"], processed["study_uid"], processed["job"]
    with httpx.Client(base_url=node.url, timeout=30) as anonymous:
        r = anonymous.get(f"/ui/studies/{study_uid}")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
        assert anonymous.get(f"/ui/instances/{job['results'][0]['sop_instance_uid']}/thumbnail.png").status_code == 401
        r = anonymous.post("/ui/login", data={"token": "not-a-token", "next": "/ui/"})
        assert r.status_code == 401 and "not a well-formed JWT" in r.text
        r = anonymous.post(f"/ui/studies/{study_uid}/reprocess", data={"csrf": "x"})
        assert r.status_code == 401

    with httpx.Client(base_url=node.url, timeout=30) as browser:
        r = browser.post("/ui/login", data={"token": node.token("nurse"), "next": f"/ui/studies/{study_uid}"})
        assert r.status_code == 303 and r.headers["location"] == f"/ui/studies/{study_uid}"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        index = browser.get("/ui/")
        assert index.status_code == 200 and f"/ui/studies/{study_uid}" in index.text
        assert "script" not in index.headers["content-security-policy"]
        page = Page(browser.get(f"/ui/studies/{study_uid}").text)
        for img in page.images:
            r = browser.get(img["src"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            thumb = Image.open(io.BytesIO(r.content))
            assert max(thumb.size) <= 320 and thumb.mode == "RGB"
            assert len(thumb.getcolors(maxcolors=1_000_000) or []) > 20  # an image, not a blank

        csrf = page.hidden["csrf"]
        assert browser.post(f"/ui/studies/{study_uid}/reprocess", data={"csrf": ""}).status_code == 403
        assert browser.post(f"/ui/studies/{study_uid}/reprocess", data={"csrf": csrf},
                            headers={"Origin": "https://elsewhere.example"}).status_code == 403
        run = job["run"]
        r = browser.post(f"/ui/studies/{study_uid}/reprocess", data={"csrf": csrf, "pipeline": PIPELINE})
        assert r.status_code == 303 and r.headers["location"] == f"/ui/studies/{study_uid}?rerun=1"
        again = httpx.get(f"{node.url}/api/v1/jobs/{job['job_id']}", headers=node.headers, timeout=10).json()
        assert again["run"] == run + 1
        after = browser.get(r.headers["location"]).text
        assert "Re-run asked: 1 job(s) queued" in after
        assert Page(after).refresh == "5"  # a job is moving again: the page follows it closely

        r = browser.post("/ui/logout", data={"csrf": csrf})
        assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]
