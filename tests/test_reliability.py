"""The fault matrix with real processes: the daemon as a subprocess, real ZeroMQ sockets on
ephemeral localhost ports, real files. docs/reliability.md lists each fault with its test and the
measured outcome.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

from edxlive.service import checkpoint
from edxlive.service.pipeline.accumulate import offline_bin
from tests import procs
from tests.test_reliability_engine import immutable


def _wait_file(folder_glob: Path, pattern: str, timeout: float = 120) -> Path:
    return procs.wait_for(lambda: next(iter(sorted(folder_glob.glob(pattern))), None), timeout,
                          what=f"{pattern} in {folder_glob}")


def _checkpoint_events(data: Path) -> int:
    paths = checkpoint.find(data)
    if not paths:
        return -1
    try:
        return int(checkpoint.read_header(paths[0])["events"])
    except (OSError, ValueError, KeyError):  # replaced while we read it: try again
        return -1


def test_kill9_mid_scan_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    feeder = procs.Feeder("tiny", frames=3, seed=5, scan_id="kill9")
    env = procs.fast_env(EDXLIVE_STORAGE__CHECKPOINT_INTERVAL_S="0.2")
    daemon = procs.start_daemon(data, [feeder.endpoint], env=env)
    try:
        feeder.wait_subscribed()
        feeder.send_frame(0)
        kept = int(feeder.sent.sum())
        procs.wait_for(lambda: _checkpoint_events(data) == kept, 30, what="a checkpoint with frame 0")
        procs.kill9(daemon)
        feeder.wait_unsubscribed()
        before = feeder.sent.copy()
        down = feeder.send_frame(1)  # nobody is listening: these are lost
        lost = feeder.sent - before
        assert lost.sum() > 0
        daemon = procs.start_daemon(data, [feeder.endpoint], env=env)
        feeder.wait_subscribed()
        feeder.send_frame(2)
        feeder.end()
        zspy = _wait_file(data, "*_kill9/spectrum_image.zspy")  # written (atomically) before the analysis runs
    finally:
        procs.kill_tree(daemon)  # the analysis itself is not under test here
        feeder.close()
    folders = sorted(data.glob("*_kill9*"))
    assert len(folders) == 1, folders  # resumed into the same folder, not a second scan
    counts = np.asarray(hs.load(zspy).data)
    expected = offline_bin(feeder.sent - lost, 2)
    np.testing.assert_array_equal(counts, expected)  # everything sent, minus exactly the chunks sent while down
    assert counts.sum() == feeder.sent.sum() - lost.sum()
    log = (data / "daemon.log").read_text()
    _, events, incomplete = _ended(log, "kill9")
    assert events == counts.sum() and incomplete == 33.33  # frame 1 reported missing, not zero-filled silently
    assert "resumed from its checkpoint" in log
    gap = re.search(r"gap: (\d+) message\(s\) from " + feeder.pub.source, log)
    assert gap is not None and int(gap.group(1)) == down
    assert not checkpoint.find(data)


def test_read_only_data_folder_then_flush_with_a_lost_frame_and_late_chunks(tmp_path: Path) -> None:
    """The data folder turns read-only (chattr +i: root obeys it, unlike chmod) before the scan starts.
    The scan is acquired in memory, the error is logged and counted, and `flush` writes it once
    the folder is writable again. The same scan loses its whole frame 1 on the way and gets a
    chunk after its scan.end."""
    data = tmp_path / "data"
    feeder = procs.Feeder("tiny", frames=3, seed=6, scan_id="ro")
    daemon = procs.start_daemon(data, [feeder.endpoint], env=procs.fast_env())
    try:
        feeder.wait_subscribed()
        with immutable(data):
            feeder.send_frame(0)
            feeder.send_frame(1, lose=True)  # a whole frame lost on the network
            feeder.send_frame(2)
            feeder.end()
            accepted = feeder.sent.copy()
            feeder.send_frame(1, pixels=(0, 64))  # after scan.end: rejected as late
            procs.wait_for(lambda: procs.metric(daemon, "edxlive_storage_failures_total", what="save") >= 1, 30,
                           what="the storage failure metric")
            assert procs.metric(daemon, "edxlive_scans_unsaved") == 1
            procs.wait_for(lambda: procs.metric(daemon, "edxlive_messages_rejected_total", reason="late") >= 2, 30,
                           what="the late chunks counted")
            refused = procs.request(daemon.control, "flush")
            assert not refused["ok"] and refused["result"]["unsaved"] == ["ro"]
            assert not list(data.glob("*_ro*"))
        reply = procs.request(daemon.control, "flush")
        assert reply["ok"], reply
        zspy = _wait_file(data, "*_ro/spectrum_image.zspy")
        result = json.loads(_wait_file(data, "*_ro/result.json").read_text())
        assert procs.metric(daemon, "edxlive_scans_unsaved") == 0
        assert procs.metric(daemon, "edxlive_chunks_missing_total") == 32
    finally:
        procs.stop(daemon.proc)
        feeder.close()
    np.testing.assert_array_equal(np.asarray(hs.load(zspy).data), offline_bin(accepted, result["binning"]))
    assert abs(result["incomplete_fraction"] - 1 / 3) < 1e-12
    log = (data / "daemon.log").read_text()
    assert "cannot write its counts" in log and "Operation not permitted" in log
    assert "counts written to" in log


STUCK_SUBSCRIBERS = """
import sys, time, zmq
ctx = zmq.Context()
ctx.set(zmq.MAX_SOCKETS, 4096)
socks = []
for i in range(int(sys.argv[2])):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 10)  # tiny queues, never read: the daemon's side fills up and must drop
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(sys.argv[1])
    socks.append(s)
print("connected", flush=True)
time.sleep(3600)
"""


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _stuck_clients(daemon: procs.Daemon, n: int, feeder: procs.Feeder, frames: int) -> tuple[float, float]:
    """``n`` subscribers that never read, plus one dashboard-like reader that stops after a few
    messages; the scan must still be ingested in full. Returns (RSS before, peak RSS during) in MiB."""
    import subprocess

    import zmq

    stuck = subprocess.Popen([*procs.CMD[:1], "-c", STUCK_SUBSCRIBERS, daemon.runtime["pub"], str(n)],
                             stdout=subprocess.PIPE, text=True)
    dashboard = zmq.Context.instance().socket(zmq.SUB)
    try:
        assert stuck.stdout is not None and stuck.stdout.readline().startswith("connected")
        dashboard.setsockopt(zmq.SUBSCRIBE, b"")
        dashboard.connect(daemon.runtime["pub"])
        procs.wait_for(lambda: procs.metric(daemon, "edxlive_clients_connected") >= n + 1, 60,
                       what=f"{n + 1} subscribers")
        dashboard.recv_multipart()  # it read one update, then stopped reading for good
        before = peak = _rss_mb(daemon.proc.pid)
        feeder.wait_subscribed()
        for f in range(frames):
            feeder.send_frame(f)
            peak = max(peak, _rss_mb(daemon.proc.pid))
        feeder.end()
        log = daemon.data_dir / "daemon.log"
        procs.wait_for(lambda: f"{feeder.scan_id}: completed" in log.read_text(), 120, what="the scan to complete")
        peak = max(peak, _rss_mb(daemon.proc.pid))
        return before, peak
    finally:
        dashboard.close(0)
        stuck.kill()
        stuck.wait()
        stuck.stdout.close()  # type: ignore[union-attr]


def _slow_client_case(tmp_path: Path, n: int, frames: int) -> None:
    data = tmp_path / "data"
    feeder = procs.Feeder("tiny", frames=frames, seed=7, scan_id=f"stuck{n}")
    # Updates as often as the daemon allows, so the stuck queues fill within the scan.
    env = procs.fast_env(EDXLIVE_OUTBOUND__PROGRESS_INTERVAL_S="0.01", EDXLIVE_OUTBOUND__LIVE_INTERVAL_S="0.05")
    daemon = procs.start_daemon(data, [feeder.endpoint], env=env)
    try:
        before, peak = _stuck_clients(daemon, n, feeder, frames)
        line = next(ln for ln in (data / "daemon.log").read_text().splitlines() if f"{feeder.scan_id}: completed" in ln)
    finally:
        procs.kill_tree(daemon)  # the analysis is not under test here
        feeder.close()
    events = int(re.search(r"completed, (\d+) events", line).group(1))  # type: ignore[union-attr]
    assert events == int(feeder.sent.sum())  # every count ingested, none waited for a client
    assert "incomplete 0.00%" in line
    print(f"{n} stuck subscribers: daemon RSS {before:.0f} MiB before, peak {peak:.0f} MiB during the scan")
    assert peak - before < 150, (before, peak)


def test_stuck_subscribers_never_stall_ingest(tmp_path: Path) -> None:
    _slow_client_case(tmp_path, 200, frames=10)


@pytest.mark.slow
def test_a_thousand_stuck_subscribers_never_stall_ingest(tmp_path: Path) -> None:
    _slow_client_case(tmp_path, 1000, frames=30)


def _analysis_workers(daemon: procs.Daemon) -> list:
    import psutil

    kids = psutil.Process(daemon.proc.pid).children(recursive=True)
    return [k for k in kids if "spawn_main" in " ".join(k.cmdline())]


def test_analysis_exception_and_killed_worker_fail_the_result_then_reanalyze_succeeds(tmp_path: Path) -> None:
    """An exception inside the analysis (an unknown element in the config) and a worker killed with
    SIGKILL mid-analysis: the counts are saved, result.json says failed and why, the next scan is
    acquired, and `reanalyze` with good parameters succeeds for both."""
    data = tmp_path / "data"
    first = procs.Feeder("tiny", frames=2, seed=8, scan_id="fail-exc")
    second = procs.Feeder("tiny", frames=2, seed=9, scan_id="fail-kill", source_id="acq-second")
    env = procs.fast_env(EDXLIVE_QUANT__ELEMENTS='["Xx"]')
    daemon = procs.start_daemon(data, [first.endpoint, second.endpoint], env=env)
    log = data / "daemon.log"
    try:
        first.wait_subscribed()
        for f in range(2):
            first.send_frame(f)
        first.end()
        procs.wait_for(lambda: "fail-exc: analysis failed" in log.read_text(), 120, what="the first analysis to fail")
        exc_result = json.loads(_wait_file(data, "*_fail-exc/result.json").read_text())
        second.wait_subscribed()
        for f in range(2):
            second.send_frame(f)
        second.end()
        procs.wait_for(lambda: "fail-kill: completed" in log.read_text(), 60, what="the second scan")
        workers = procs.wait_for(lambda: _analysis_workers(daemon), 30, what="an analysis worker")
        for w in workers:
            w.kill()
        procs.wait_for(lambda: "fail-kill: analysis failed" in log.read_text(), 120, what="the killed analysis")
        kill_result = json.loads(_wait_file(data, "*_fail-kill/result.json").read_text())
        for scan_id in ("fail-exc", "fail-kill"):
            reply = procs.request(daemon.control, "reanalyze", {"scan_id": scan_id, "elements": ["Cu", "Zn", "S"]})
            assert reply["ok"] and reply["result"]["revision"] == 1, reply
        procs.wait_for(lambda: log.read_text().count("analysis done (revision 1)") == 2, 180, what="two reanalyses")
        retried = {sid: json.loads(next(data.glob(f"*_{sid}/result.json")).read_text())
                   for sid in ("fail-exc", "fail-kill")}
    finally:
        procs.stop(daemon.proc)
        first.close()
        second.close()
    assert exc_result["analysis"] == "failed" and "unknown element 'Xx'" in exc_result["analysis_error"]
    assert kill_result["analysis"] == "failed" and "BrokenProcessPool" in kill_result["analysis_error"]
    for sid, feeder in (("fail-exc", first), ("fail-kill", second)):
        doc = retried[sid]
        assert doc["revision"] == 1 and "pca_gmm" in doc["workflows"]
        counts = np.asarray(hs.load(next(data.glob(f"*_{sid}/spectrum_image.zspy"))).data)
        np.testing.assert_array_equal(counts, offline_bin(feeder.sent, doc["binning"]))  # nothing lost on the way
    assert "analysis worker died; restarting the pool" in log.read_text()


def _ended(log: str, scan_id: str) -> tuple[str, int, float]:
    """(status, events, incomplete %) from the daemon's scan-end log line."""
    m = re.search(rf"scan {scan_id}: (completed|aborted).*?, (\d+) events, incomplete ([\d.]+)%", log)
    assert m is not None, f"no end line for {scan_id}"
    return m.group(1), int(m.group(2)), float(m.group(3))


def test_sender_faults_late_join_publisher_restart_two_publishers_reused_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    one = procs.Feeder("tiny", frames=3, seed=10, scan_id="join", source_id="acq-one")
    two = procs.Feeder("tiny", frames=2, seed=11, scan_id="other", source_id="acq-two")
    # Late join: frame 0 goes out before any daemon listens.
    one.send_frame(0)
    before_daemon = int(one.sent.sum())
    daemon = procs.start_daemon(data, [one.endpoint, two.endpoint], env=procs.fast_env())
    log = data / "daemon.log"
    try:
        one.wait_subscribed()
        two.wait_subscribed()
        one.send_frame(1)  # joined at this frame's repeated scan.start
        one.pub.repeat_last()  # a duplicate on the wire (same seq)
        kept = one.sent.copy()
        one.send_frame(1, pixels=(0, 32))  # a chunk sent again with a new seq: a duplicate by coverage
        one.sent = kept
        # The acquisition software restarts mid-scan: same port, new source id, seq from 1.
        one.restart("acq-one-restarted")
        one.wait_subscribed()
        one.send_frame(2)
        one.end()
        procs.wait_for(lambda: "scan join: completed" in log.read_text(), 60, what="the late-joined scan")
        # Two publishers at once: "other" starts while "again" (a reused-id scan, below) is running.
        one.scan_id = one.fields["scan_id"] = "join"  # reused id: a new acquisition under the same name
        reused_before = one.sent.copy()
        one.send_frame(0)
        # the two publishers are two connections: "other" supersedes the reused scan only once the
        # daemon has read that scan's start (sent at once, "other" was read first in ~1 run of 5)
        procs.wait_for(lambda: log.read_text().count("scan join: acquiring") == 2, 60, what="the reused scan's start")
        two.send_frame(0)  # supersedes "join" (reused)
        one.send_frame(1)  # the superseded publisher goes on: late, counted, not mixed into "other"
        two.send_frame(1)
        two.end()
        procs.wait_for(lambda: "scan other: completed" in log.read_text(), 60, what="the second publisher's scan")
        text = log.read_text()
        late = procs.metric(daemon, "edxlive_messages_rejected_total", reason="late")
        missing = procs.metric(daemon, "edxlive_chunks_missing_total")
        duplicated = procs.metric(daemon, "edxlive_chunks_duplicated_total")
    finally:
        procs.kill_tree(daemon)
        one.close()
        two.close()
    assert duplicated == 2  # both duplicates counted, neither added (the event count below is exact)
    status, events, incomplete = _ended(text, "join")
    assert status == "completed" and events == int(reused_before.sum()) - before_daemon
    assert incomplete == 33.33  # frame 0 was sent before the daemon listened: reported, not zero-filled
    assert missing == 0  # a restarted publisher (new source) is not a gap
    second_join = text[text.index("scan join: completed") + 1:]
    status, events, _ = _ended(second_join, "join")  # the reused id: its own scan, superseded by "other"
    assert status == "aborted" and "superseded by scan other" in second_join
    # The daemon reads both publishers fairly, so "other" starts somewhere inside (or after) the
    # reused scan's frame 0: the rows before that are kept, the rest of its chunks are rejected as late.
    aborted = next(line for line in second_join.splitlines() if "scan join: aborted" in line)
    lost_px = re.search(r"missing pixels by frame \{0: (\d+)\}", aborted)
    kept_px = 32 * 32 - (int(lost_px.group(1)) if lost_px else 0)
    assert events == one.scan.frames[0].events(0, kept_px)[0].size
    assert late == (32 * 32 - kept_px) // 32 + 32  # the rest of frame 0, and all of frame 1
    assert text.count("rejected (late) in scan join") == 1  # logged once, counted every time
    assert len(list(data.glob("*_join*"))) == 2  # the reused id got a folder of its own
    status, events, incomplete = _ended(text, "other")
    assert (status, events, incomplete) == ("completed", int(two.sent.sum()), 0.0)


def test_limits_refuse_at_scan_start_and_oversized_messages_are_dropped_and_counted(tmp_path: Path) -> None:
    from edxlive.clients.publisher import AcquisitionPublisher

    data = tmp_path / "data"
    pub = AcquisitionPublisher("tcp://127.0.0.1:0", source="acq-limits")
    env = procs.fast_env(EDXLIVE_LIMITS__MAX_PIXELS="512", EDXLIVE_LIMITS__MEMORY_BUDGET_BYTES=str(2**21),
                         EDXLIVE_LIMITS__MAX_MESSAGE_BYTES=str(64 * 1024))
    daemon = procs.start_daemon(data, [pub.endpoint], env=env)
    base = dict(energy_offset_kev=0.0, energy_scale_kev=0.01, frames=1)
    rng = np.random.default_rng(12)
    try:
        assert pub.wait_for_subscribers(1, 60)
        time_zero = procs.metric(daemon, "edxlive_messages_rejected_total", reason="out_of_range")
        pub.start(scan_id="too-many-pixels", shape=[32, 32], channels=1024, **base)
        pub.start(scan_id="over-budget", shape=[16, 32], channels=4096, **base)
        pub.chunk_events("over-budget", 0, 0, 32, np.zeros(5, "<u4"), np.zeros(5, "<u2"))  # never allocated
        pub.start(scan_id="fits", shape=[16, 32], channels=1024, **base)
        sent = 0
        for row in range(16):
            if row == 8:  # 32 px x 1024 channels x 4 bytes = 128 KiB, over MAXMSGSIZE 64 KiB
                pub.chunk_dense("fits", 0, row * 32, np.ones((32, 1024), "<u4"))
                procs.wait_for(lambda: procs.metric(daemon, "edxlive_inbound_disconnects_total") >= 1, 30,
                               what="the dropped connection to be counted")
                procs.wait_for(lambda: "closed by ZeroMQ and not retried" in (data / "daemon.log").read_text(), 30,
                               what="the daemon to reconnect")
                time.sleep(0.5)  # the TCP and ZMTP handshakes; what is sent before is lost (and counted by seq)
                pub.start(scan_id="fits", shape=[16, 32], channels=1024, **base)
                continue
            n = int(rng.integers(50, 100))
            pub.chunk_events("fits", 0, row * 32, 32, rng.integers(0, 32, n).astype("<u4"),
                             rng.integers(0, 1024, n).astype("<u2"))
            sent += n
        pub.end("fits", frames_completed=1)
        log = data / "daemon.log"
        procs.wait_for(lambda: "scan fits: completed" in log.read_text(), 60, what="the scan that fits")
        text = log.read_text()
        out_of_range = procs.metric(daemon, "edxlive_messages_rejected_total", reason="out_of_range") - time_zero
        limits = procs.metric(daemon, "edxlive_messages_rejected_total", reason="limits")
        disconnects = procs.metric(daemon, "edxlive_inbound_disconnects_total")
        missing = procs.metric(daemon, "edxlive_chunks_missing_total")
    finally:
        procs.kill_tree(daemon)
        pub.close()
    assert out_of_range == 1 and "scan of 1024 pixels exceeds the limit 512" in text
    assert limits == 1 and "over the memory budget" in text and "acquiring 16x32x4096" not in text
    assert disconnects == 1 and missing >= 1
    status, events, incomplete = _ended(text, "fits")
    assert status == "completed" and events == sent and incomplete == 6.25  # the dropped row: reported
