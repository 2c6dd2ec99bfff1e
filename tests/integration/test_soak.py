"""The soak benchmark's short variant (benchmarks/soak.py --short) on the real MiniLM in hosted mode: mixed traffic
(singles, cache hits, long texts, 100-text batches, several accounts) at twice the measured capacity in five bursts;
only 200, 429 (quota) and 503 overloaded with Retry-After; the admitted requests' p99 within TIMEOUT_SECONDS; the
server's memory after the fifth burst within 5% of after the first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import MODEL_ROOT, model_dir

ROOT = Path(__file__).resolve().parents[2]


def test_the_short_soak_holds_its_promises(tmp_path: Path) -> None:
    model_dir("all-MiniLM-L6-v2")
    report_file = tmp_path / "soak.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--short", "--path", str(MODEL_ROOT)]
    done = subprocess.run([*command, "--json", str(report_file)], capture_output=True, text=True, timeout=600)
    assert report_file.exists(), done.stdout + done.stderr
    report = json.loads(report_file.read_text())
    assert set(report["statuses"]) <= {"200", "429", "503"}, report
    assert report["unexpected_statuses"] == 0 and report["503_without_overloaded_and_retry_after"] == 0, report
    assert "503" in report["statuses"] or "429" in report["statuses"], report  # it was past capacity
    assert report["p99_admitted_s"] <= 10.0, report
    assert report["rss_last_over_first"] <= 1.05, report
    assert done.returncode == 0 and report["ok"], report
