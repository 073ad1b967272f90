"""deploy/nginx/: the real nginx in front of the real server refuses unsafe prediction ids and
oversized bodies, and passes everything else through unchanged.

Without it, coglet 0.23.1 makes a folder from any id (stray folders wherever the server's user may
write) and takes a slot for good when it cannot (test_training_callers.py shows the wedge).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.parse

import pytest
import requests
from helpers import HTTP_TIMEOUT, PREDICT_TIMEOUT

from musicgen.runtime import PREDICTION_FOLDERS
from musicgen.settings import REPOSITORY

pytestmark = pytest.mark.slow  # the session's real server, and nginx

CONFIG = REPOSITORY / "deploy" / "nginx"
UNSAFE_IDS = ["x" * 300, "a\u0000b", "/etc/hostname/x", "../../proxy-escape", "", "has space", 7]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """nginx with deploy/nginx/nginx.conf, filled in for the session server, on a free port."""
    folder = tmp_path_factory.mktemp("proxy")
    shutil.copy(CONFIG / "prediction_ids.js", folder)
    listen = f"127.0.0.1:{free_port()}"
    values = {
        "${COG_UPSTREAM}": server.url.removeprefix("http://"),
        "${PROXY_LISTEN}": listen,
        "${PROXY_DIR}": str(folder),
    }
    text = (CONFIG / "nginx.conf").read_text()
    for name, value in values.items():
        text = text.replace(name, value)
    (folder / "nginx.conf").write_text(text)
    log = open(folder / "nginx.log", "w")  # noqa: SIM115 (closed at teardown)
    process = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")], stderr=log)
    url = f"http://{listen}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/health-check", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, (folder / "nginx.log").read_text()
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)
    log.close()


def ready(url: str) -> bool:
    return requests.get(f"{url}/health-check", timeout=HTTP_TIMEOUT).json()["status"] == "READY"


@pytest.mark.parametrize("prediction_id", UNSAFE_IDS, ids=range(len(UNSAFE_IDS)))
def test_an_unsafe_id_in_the_body_is_refused_before_the_runtime(proxy, server, prediction_id):
    body = {"id": prediction_id, "input": {"prompt": "calm", "duration": 1}}
    for path in ("/predictions", "/trainings"):
        answer = requests.post(f"{proxy}{path}", json=body, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 400, answer.text
        assert "is not allowed: use 1 to 64 of A-Z a-z 0-9 _ -, or leave it out" in answer.json()["detail"]
    assert ready(server.url)
    assert not (PREDICTION_FOLDERS.parent.parent / "proxy-escape").exists()


@pytest.mark.parametrize("quoted", ["..%2F..%2Fproxy-escape", "a%00b", "x" * 300, "a%20b", "%2Fetc%2Fhostname%2Fx"])
def test_an_unsafe_id_in_the_path_is_refused(proxy, server, quoted):
    for method, path in (("PUT", f"/predictions/{quoted}"), ("POST", f"/predictions/{quoted}/cancel")):
        answer = requests.request(method, f"{proxy}{path}", json={"input": {"prompt": "calm"}}, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 400, (path, answer.text)
        # nginx itself refuses a path that climbs above the root or holds a NUL; the rest, the config
        assert "the id in the path is not allowed" in answer.text or "<center>nginx" in answer.text
    assert ready(server.url)


def test_safe_requests_pass_through_unchanged(proxy, server):
    direct = requests.get(f"{server.url}/openapi.json", timeout=HTTP_TIMEOUT)
    assert requests.get(f"{proxy}/openapi.json", timeout=HTTP_TIMEOUT).json() == direct.json()
    inputs = {"prompt": "calm piano", "duration": 1, "seed": 4}
    through = requests.post(
        f"{proxy}/predictions", json={"id": "job-Safe_1", "input": inputs}, timeout=PREDICT_TIMEOUT
    ).json()
    assert through["status"] == "succeeded", through
    assert through["output"] == server.predict(**inputs)["output"]  # the same server, the same bytes
    refused = requests.post(f"{proxy}/predictions", json={"input": {"duration": "long"}}, timeout=HTTP_TIMEOUT)
    assert refused.status_code == 422  # the runtime's own answer, passed on
    put = requests.put(
        f"{proxy}/predictions/{urllib.parse.quote('put-1')}", json={"input": inputs}, timeout=PREDICT_TIMEOUT
    )
    assert put.status_code == 200 and put.json()["status"] == "succeeded", put.text


def test_a_body_over_the_runtimes_limit_is_refused(proxy, server):
    body = b'{"input": {"prompt": "' + b"x" * (101 * 2**20) + b'"}}'
    answer = requests.post(
        f"{proxy}/predictions", data=body, headers={"Content-Type": "application/json"}, timeout=HTTP_TIMEOUT
    )
    assert answer.status_code == 413
    assert ready(server.url)
