"""tooling.bench.gpu_check's time boxes and summary (the GPU check itself runs on a lent
machine; `bash scripts/gpu-check.sh --cpu-proof` runs it here end to end)."""

import sys
import time
from pathlib import Path

from tooling.bench.gpu_check import Step, run, steps


def test_a_step_past_its_time_box_is_stopped_with_its_children(tmp_path):
    """The bench runs its measurements in child processes: at the box they stop too, and do not
    run on into the next step."""
    marker = tmp_path / "child-pid"
    spawn = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(marker)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    step = Step("sleeper", [sys.executable, "-c", spawn], 5)
    run(step, tmp_path, seconds_left=100)
    assert step.result["status"] == "stopped at its 5 s time box (what it skipped: the rest of this step)"
    assert step.result["seconds"] < 30
    child = int(marker.read_text())
    time.sleep(0.5)  # the kernel reaps it once its parent is gone
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_the_whole_runs_box_caps_each_step(tmp_path):
    step = Step("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], 50)
    run(step, tmp_path, seconds_left=6)
    assert step.result["status"].startswith("stopped at its 6 s time box")
    late = Step("late", [sys.executable, "-c", "print(1)"], 50)
    run(late, tmp_path, seconds_left=3)
    assert late.result == {"status": "skipped", "why": "the whole run's time box is spent"}


def test_a_failing_step_and_a_measuring_step_are_reported_with_their_figures(tmp_path):
    failing = Step("broken", [sys.executable, "-c", "raise SystemExit(3)"], 30)
    run(failing, tmp_path, seconds_left=100)
    assert failing.result["status"] == "failed (exit 3; see broken.log)"
    writes = "import json, sys; json.dump({'summary': {'steps_per_s': 42}}, open(sys.argv[1], 'w'))"
    measuring = Step("bench: x", [sys.executable, "-c", writes, "{json}"], 30)
    run(measuring, tmp_path, seconds_left=100)
    assert measuring.result["status"] == "measured"
    assert measuring.result["figures"] == {"steps_per_s": 42}


def test_every_gpu_figure_of_the_plan_has_a_step_and_the_run_fits_eight_minutes():
    plan = steps("gpu", Path("outputs/gpu-check"))
    names = " | ".join(step.name for step in plan)
    for wanted in ("environment", "small", "melody 8 s", "agreement", "large 30 s", "batched", "memory budget"):
        assert wanted in names, wanted
    assert sum(step.seconds for step in plan) <= 8 * 60
