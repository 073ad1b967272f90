"""Operating replicas (docs/operations.md) through the real server on the demo weights: the worker's
probes answer with status codes (/livez, /readyz; a failed setup's: tests/test_server.py), /metrics
counts what happened, SIGTERM drains without losing an async prediction; and the Kubernetes
manifests validate offline and probe what the worker serves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from helpers import (
    HTTP_TIMEOUT,
    PREDICT_TIMEOUT,
    START_TIMEOUT,
    FileServer,
    Server,
    proxy_passing,
    started_server,
)

from musicgen.serving.runtime_patches import PREDICTION_FOLDERS
from musicgen.settings import REPOSITORY
from tooling.server_process import free_port

pytestmark = pytest.mark.slow

SLOTS = 4
KUBERNETES = REPOSITORY / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")  # validated against (kubernetes-validate's schemas)


def probe(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=HTTP_TIMEOUT)


def samples(port: int) -> dict[str, float]:
    """/metrics as {'name{labels}': value} (Prometheus' text format)."""
    found = {}
    for line in probe(port, "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


@pytest.fixture(scope="module")
def operated(demo_weights, tmp_path_factory):
    """A server with MUSICGEN_MAX_BATCH=4 and its probes port."""
    port = free_port()
    env = {"MUSICGEN_MAX_BATCH": str(SLOTS), "MUSICGEN_METRICS_PORT": str(port)}
    server = Server(demo_weights, tmp_path_factory.mktemp("operated") / "server.log", env)
    try:
        server.ready(START_TIMEOUT)
        server.metrics_port = port
        yield server
    finally:
        server.stop()


def test_metrics_count_each_prediction_once_by_status(operated, tmp_path):
    """Two that succeed, one refused for bad input (our rule: failed), one cancelled: exactly those
    counts, each prediction's seconds and phases, the decode steps, and no caller's text as a label."""
    port, before = operated.metrics_port, samples(operated.metrics_port)
    hooks = FileServer(tmp_path)
    try:
        assert operated.predict(prompt="one", duration=1, seed=1)["status"] == "succeeded"
        assert operated.predict(prompt="two", duration=1, seed=2)["status"] == "succeeded"
        assert operated.predict(prompt="", duration=1)["status"] == "failed"  # no prompt, no input_audio
        body = {"id": "to-cancel", "webhook": f"{hooks.url}/hook", "input": {"prompt": "long", "duration": 60}}
        assert operated.post("/predictions", body, headers={"Prefer": "respond-async"}).status_code == 202
        time.sleep(1.5)
        assert requests.post(f"{operated.url}/predictions/to-cancel/cancel", timeout=HTTP_TIMEOUT).status_code == 200
        assert hooks.wait_for_webhook("to-cancel", {"canceled"}, PREDICT_TIMEOUT)["status"] == "canceled"
    finally:
        hooks.close()
    deadline = time.monotonic() + 10  # the cancelled one is counted as its thread ends
    while (
        samples(port).get('musicgen_predictions_total{model_version="melody",status="canceled"}', 0)
        == before.get('musicgen_predictions_total{model_version="melody",status="canceled"}', 0)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    after = samples(port)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    counts = {status: grew(f'musicgen_predictions_total{{model_version="melody",status="{status}"}}')
              for status in ("succeeded", "failed", "canceled")}  # fmt: skip
    assert counts == {"succeeded": 2, "failed": 1, "canceled": 1}
    assert grew('musicgen_prediction_seconds_count{model_version="melody"}') == 4
    assert grew('musicgen_decode_steps_total{model_version="melody"}') >= 2 * 53  # 1 s: 50 frames + the delay's 3
    for phase in ("queue", "prefill", "decode", "codec", "encode"):
        assert grew(f'musicgen_prediction_phase_seconds_count{{model_version="melody",phase="{phase}"}}') >= 2, phase
    assert after['musicgen_model_loads_total{model_version="melody"}'] >= 1
    assert after['musicgen_memory_budget_bytes{kind="used"}'] < after['musicgen_memory_budget_bytes{kind="limit"}']
    labels = {value for name in after for value in re.findall(r'="([^"]*)"', name)}
    assert labels <= {"melody", "large", "succeeded", "failed", "canceled", "used", "limit", "queue", "prefill",
                      "decode", "codec", "encode", "+Inf"} | {value for value in labels if re.fullmatch(r"[\d.e+]+", value)}  # fmt: skip


def test_readiness_and_the_batch_gauge_follow_the_load(operated):
    """Four requests at once with four batch places: the gauge reaches 4 and /readyz answers 503
    while every place is taken; 200 (and the gauge 0) once they are done."""
    port = operated.metrics_port
    assert probe(port, "/readyz").status_code == 200
    answers: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda seed=seed: answers.append(operated.predict(prompt="busy", duration=8, seed=seed))
        )
        for seed in range(SLOTS)
    ]
    for thread in threads:
        thread.start()
    seen_full = seen_gauge = False
    deadline = time.monotonic() + PREDICT_TIMEOUT
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        ready = probe(port, "/readyz")
        seen_full |= ready.status_code == 503 and "every batch place is taken" in ready.json()["reason"]
        seen_gauge |= samples(port).get('musicgen_batch_slots_in_use{model_version="melody"}') == SLOTS
        time.sleep(0.1)
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    assert [answer["status"] for answer in answers] == ["succeeded"] * SLOTS
    assert seen_full and seen_gauge
    assert probe(port, "/readyz").status_code == 200
    assert samples(port)['musicgen_batch_slots_in_use{model_version="melody"}'] == 0


def test_sigterm_drains_a_sync_and_two_async_predictions_without_losing_one(demo_weights, tmp_path):
    """SIGTERM while a short sync prediction and two long async ones run: the sync one completes,
    each async one gets a terminal webhook (failed, saying the server is shutting down), readiness
    fails at once, the process exits within the grace period and leaves no prediction's files."""
    port, drain = free_port(), 4  # the short one needs about 1 s, the long ones 6 s or more
    env = {"MUSICGEN_MAX_BATCH": str(SLOTS), "MUSICGEN_METRICS_PORT": str(port), "MUSICGEN_DRAIN_SECONDS": str(drain)}
    server = started_server(demo_weights, tmp_path, env)
    hooks = FileServer(tmp_path)
    try:
        ids = ["drained-1", "drained-2"]
        for index, prediction_id in enumerate(ids):
            body = {"id": prediction_id, "webhook": f"{hooks.url}/hook",
                    "input": {"prompt": "long", "duration": 60, "seed": index}}  # fmt: skip
            assert server.post("/predictions", body, headers={"Prefer": "respond-async"}).status_code == 202
        answer: dict = {}
        sync = threading.Thread(target=lambda: answer.update(server.predict(prompt="short", duration=8, seed=9)))
        sync.start()
        deadline = time.monotonic() + START_TIMEOUT
        while samples(port).get('musicgen_batch_slots_in_use{model_version="melody"}') != 3:  # all three decoding
            assert time.monotonic() < deadline
            time.sleep(0.05)
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)  # to `serve` alone, as Kubernetes sends it
        time.sleep(0.3)
        assert probe(port, "/readyz").status_code == 503
        sync.join(PREDICT_TIMEOUT)
        ends = [hooks.wait_for_webhook(pid, {"succeeded", "failed", "canceled"}, drain + 20) for pid in ids]
        server.process.wait(drain + 20)
        exited = time.monotonic() - signalled
    finally:
        hooks.close()
        server.stop()
    assert answer["status"] == "succeeded", answer
    for end in ends:
        assert end["status"] == "failed" and "the server is shutting down" in end["error"], end
    assert server.process.returncode == 0 and exited < drain + 10, exited
    assert not [pid for pid in ids if (PREDICTION_FOLDERS / pid).exists()]
    left = [path for path in server.tmp.rglob("*") if path.is_file()]
    assert all(path.name.startswith("musicgen-melody-9-") for path in left), left  # the sync answer's file at most
    assert "drained: {'finished': 1, 'stopped': 2, 'left': 0}" in (tmp_path / "server.log").read_text()


# --------------------------------------------------------------------------------------------
# deploy/kubernetes/ and deploy/kustomization.yaml


def manifests() -> dict[str, dict]:
    """Every document of deploy/kubernetes/*.yaml by kind."""
    documents = [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    return {document["kind"]: document for document in documents if document}


def pod_containers() -> dict[str, dict]:
    """The Deployment's containers by name, its native sidecars (init containers that keep running) included."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["containers"] + pod.get("initContainers", [])}


def test_the_manifests_validate_offline_against_pinned_kubernetes_versions():
    import kubernetes_validate

    found = manifests()
    assert set(found) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for version in KUBERNETES_VERSIONS:
        for document in found.values():
            kubernetes_validate.validate(document, version, strict=True)  # raises ValidationError
    broken = manifests()["Deployment"]
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}  # a typo is caught
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProb"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_deployment_probes_what_the_worker_serves():
    """The probes point at the worker's port and paths, the grace period covers the drain, the
    nginx front is the only published port, and the HPA reads the batch gauge."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    containers = pod_containers()
    model, front = containers["musicgen"], containers["nginx"]
    assert front["restartPolicy"] == "Always"  # a native sidecar: it outlives the model's drain
    env = {item["name"]: item.get("value") for item in model["env"]}
    metrics_port = int(env["MUSICGEN_METRICS_PORT"])
    ports = {port["name"]: port["containerPort"] for port in model["ports"]}
    assert ports == {"metrics": metrics_port}  # nothing of the model's is published but the probes port
    assert model["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert model["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert model["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    startup = model["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600  # model loading on a cold node
    assert model["command"][:4] == ["python", "-m", "musicgen", "serve"]  # the drain is `serve`'s
    assert model["command"][model["command"].index("--host") + 1] == "127.0.0.1"  # reached through nginx only
    front_env = {item["name"]: item.get("value") for item in front["env"]}
    assert front_env["COG_UPSTREAM"] == f"127.0.0.1:{model['command'][model['command'].index('--port') + 1]}"
    assert pod["terminationGracePeriodSeconds"] >= float(env["MUSICGEN_DRAIN_SECONDS"]) + 10
    assert {"COG_MAX_CONCURRENCY", "MUSICGEN_MAX_BATCH"} <= set(env)
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    service = manifests()["Service"]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [front["ports"][0]["name"]]
    hpa = manifests()["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == manifests()["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "musicgen_batch_slots_in_use"
    assert float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]) <= int(env["MUSICGEN_MAX_BATCH"])


def front_files(folder) -> None:
    """deploy/nginx/ as the sidecar sees the ConfigMap deploy/kustomization.yaml makes of it, in `folder`."""
    kustomization = yaml.safe_load((REPOSITORY / "deploy" / "kustomization.yaml").read_text())
    [generated] = kustomization["configMapGenerator"]
    keys = dict(entry.split("=", 1) for entry in generated["files"])
    volumes = manifests()["Deployment"]["spec"]["template"]["spec"]["volumes"]
    [config_map] = [volume["configMap"] for volume in volumes if "configMap" in volume]
    assert config_map["name"] == generated["name"]
    for item in config_map["items"]:
        (folder / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / item["path"]).write_bytes((REPOSITORY / "deploy" / keys[item["key"]]).read_bytes())
    listed = {resource.removeprefix("kubernetes/") for resource in kustomization["resources"]}
    assert listed == {path.name for path in KUBERNETES.glob("*.yaml")}


def test_the_sidecar_fronts_the_server_with_the_deployments_own_script(operated, tmp_path):
    """The nginx container's own command and env (its files laid out as its ConfigMap volume lays
    them out), in front of a real server: the API passes, anything else is 404."""
    front = pod_containers()["nginx"]
    env = {item["name"]: item["value"] for item in front["env"]}
    folder = Path(tempfile.mkdtemp(prefix="musicgen-front-"))  # nginx's workers (not root) read the page
    folder.chmod(0o755)
    files, run = folder / "files", folder / "run"
    files.mkdir()
    front_files(files)
    listen = f"127.0.0.1:{free_port()}"
    env |= {"FRONT_FILES": str(files), "PROXY_DIR": str(run), "PROXY_LISTEN": listen,
            "COG_UPSTREAM": operated.url.removeprefix("http://")}  # fmt: skip
    with open(tmp_path / "nginx.log", "w") as log:
        process = subprocess.Popen(front["command"] + front["args"], env={"PATH": os.environ["PATH"], **env},
                                   stdout=log, stderr=log)  # fmt: skip
    try:
        proxy_passing(f"http://{listen}", process, tmp_path / "nginx.log")
        health = requests.get(f"http://{listen}/health-check", timeout=HTTP_TIMEOUT)
        assert health.status_code == 200 and health.json()["status"] == "READY"
        assert requests.post(f"http://{listen}/shutdown", timeout=HTTP_TIMEOUT).status_code == 404
        assert requests.get(f"http://{listen}/listen/", timeout=HTTP_TIMEOUT).status_code == 200
        assert requests.get(operated.url + "/health-check", timeout=HTTP_TIMEOUT).json()["status"] == "READY"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder)


def test_a_burst_of_simultaneous_requests_gets_no_409_with_slots_free(operated):
    """coglet 0.23.1 takes a slot with a try_lock: two requests arriving at once on two of tokio's
    threads can get `409 At capacity` with slots free (measured 3 of 320). `serve` runs the
    runtime's HTTP side on one thread: bursts of 2N requests at the same instant all succeed."""
    threads = [(task / "comm").read_text().strip() for task in Path(f"/proc/{operated.server_pid()}/task").iterdir()]
    assert threads.count("tokio-rt-worker") == 1, threads
    codes: list[int] = []
    for _ in range(6):
        barrier = threading.Barrier(2 * SLOTS)

        def send(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            body = {"input": {"prompt": "burst", "duration": 1, "seed": 3}}
            codes.append(requests.post(f"{operated.url}/predictions", json=body, timeout=PREDICT_TIMEOUT).status_code)

        senders = [threading.Thread(target=send) for _ in range(2 * SLOTS)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(PREDICT_TIMEOUT)
        time.sleep(0.2)  # the runtime frees a slot just after its answer
    assert codes == [200] * 12 * SLOTS


def test_liveness_fails_while_the_batched_path_is_stuck_and_recovers_after(settings):
    """In process, MUSICGEN_MAX_BATCH=2 and MUSICGEN_STALL_SECONDS=1: a prediction decodes in the
    batch, then the stepping thread is held (the batch's lock taken, as a wedged step would hold
    it). /livez answers 503 naming the stuck path (the waiting prediction fails with the stall);
    once the step is free again, 200."""
    import asyncio

    from musicgen.request import Request
    from musicgen.serving.probes import Probes
    from musicgen.serving.workers import PredictionRunner

    runner = PredictionRunner.load(settings.replace(model_versions=("melody",), max_batch=2, stall_seconds=1.0))
    port = free_port()
    probes = Probes(("127.0.0.1", port)).start()
    probes.serving(runner)
    batcher, loop = runner.service.models.batcher, runner.service.models.get("melody").loop
    outcome: dict = {}

    def predict() -> None:
        try:
            asyncio.run(runner.predict(Request(prompt="stuck", duration=30, seed=1)))
        except Exception as error:  # noqa: BLE001 (what it ended with is the test's)
            outcome["error"] = error

    try:
        assert probe(port, "/livez").status_code == 200
        thread = threading.Thread(target=predict)
        thread.start()
        deadline = time.monotonic() + 60
        while batcher.occupancy(loop)[0] == 0:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        with batcher._changed:  # the stepping thread waits for it before each step
            thread.join(30)
            live = probe(port, "/livez")
        assert live.status_code == 503 and live.json()["reason"].startswith(
            "the batched path is stuck: no batched step"
        )
        assert "made no progress" in str(outcome["error"])  # the watchdog failed the waiting prediction
        deadline = time.monotonic() + 10
        while probe(port, "/livez").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert batcher.occupancy(loop)[0] == 0
    finally:
        probes.stop()


def test_liveness_fails_once_the_worker_is_killed(operated):
    """kill -9 of the worker: its port refuses, which a probe reads as a failure (this test is the
    module's last: its server is then gone)."""
    port = operated.metrics_port
    live = probe(port, "/livez")
    assert live.status_code == 200 and live.json()["pid"] == operated.worker_pid()
    os.kill(live.json()["pid"], signal.SIGKILL)
    time.sleep(1.0)
    with pytest.raises(requests.ConnectionError):
        probe(port, "/livez")
