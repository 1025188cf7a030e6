"""Service view: the daemon's health, its rates and errors, and the scans it has kept."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from edxlive.clients.dashboard.format import duration, rate
from edxlive.clients.dashboard.state import DashboardState


class ServiceView(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="service-top"):
            yield Static("no status from the daemon yet", id="service-status")
            yield Static("", id="service-errors")
        yield DataTable(id="scans", zebra_stripes=True, cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#scans", DataTable).add_columns("scan", "status", "analysis", "incomplete", "finished",
                                                        "result folder")

    def update_status(self, st: DashboardState) -> None:
        s = st.status
        text = Text()
        text.append("daemon ", style="bold")
        text.append("connected" if st.connected else "DISCONNECTED",
                    style="bold green" if st.connected else "bold red")
        text.append(f"  {st.daemon_uid or ''}\n")
        if s is None:
            text.append(st.connection_detail)
            self.query_one("#service-status", Static).update(text)
            return
        text.append(f"state {s.state} · version {s.version} · uptime {duration(s.uptime_s)} · {s.security}\n")
        text.append(f"scan {s.current_scan or '–'}\n")
        text.append(f"pub {s.pub_endpoint}\ncontrol {s.control_endpoint}\n")
        if s.metrics_endpoint:
            text.append(f"metrics {s.metrics_endpoint}\n")
        counters = " · ".join(f"{k} {_num(v)}" for k, v in sorted(s.counters.items()) if isinstance(v, int | float))
        if counters:
            text.append(counters + "\n")
        if s.rejected:
            text.append("rejected " + " · ".join(f"{k} {v}" for k, v in sorted(s.rejected.items())), style="yellow")
        self.query_one("#service-status", Static).update(text)
        errors = Text("recent errors\n", style="bold")
        for line in s.recent_errors[-8:] or ["none"]:
            errors.append(f"{line}\n", style="red" if line != "none" else "dim")
        self.query_one("#service-errors", Static).update(errors)
        self._fill_scans(st)

    def _fill_scans(self, st: DashboardState) -> None:
        table = self.query_one("#scans", DataTable)
        table.clear()
        for entry in reversed(st.status.scans if st.status else []):
            finished = entry.get("finished")
            when = time.strftime("%H:%M:%S", time.localtime(finished)) if isinstance(finished, int | float) else "–"
            inc = entry.get("incomplete_fraction")
            table.add_row(str(entry.get("scan_id", "?")), str(entry.get("status", "")),
                          str(entry.get("analysis", "running" if finished is None else "")),
                          f"{inc:.1%}" if isinstance(inc, int | float) else "–", when, str(entry.get("folder", "")))


def _num(v: float) -> str:
    return rate(v) if abs(v) >= 1000 else (f"{v:g}" if isinstance(v, float) else str(v))
