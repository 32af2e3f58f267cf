"""What people read: progress is a bar on a terminal and a line every few seconds otherwise. (A
training job's console, each step once and little else, is held in tests/test_multinode.py, on
the log `ray job logs` shows.)"""
import io
import sys

from tcl.console import Progress


def test_progress_prints_a_line_every_few_seconds_off_a_terminal(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tcl.console.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    progress = Progress("VOC", total=100, unit="images", every=10, terminal=False)
    for done in range(1, 101):
        clock[0] = done * 0.5  # 2 images a second: 50 s in all
        progress.update(done, note="mIoU so far 40.0")
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("VOC: 100/100 images, 2.0/s")  # every 10 s, then the last
    assert "\r" not in out.getvalue()
    assert "s left" in lines[0] and "mIoU so far 40.0" in lines[0]


def test_progress_redraws_one_line_on_a_terminal(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tcl.console.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    progress = Progress("segmenting", total=10, terminal=True)
    for done in range(1, 11):
        clock[0] = done
        progress.update(done)
    progress.close()
    assert out.getvalue().count("\n") == 1 and out.getvalue().count("\r") == 11
    assert "[####################]" in out.getvalue().splitlines()[-1]
