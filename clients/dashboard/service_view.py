"""Service view: the daemon's health, its rates and errors, and the scans it has kept."""

from __future__ import annotations

import time
from pathlib import PurePath

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from edxlive.clients.dashboard.format import duration, rate
from edxlive.clients.dashboard.state import DashboardState

# Counters worth a line of their own, in this order; message counts are summed up on another.
MAIN_COUNTERS = ("events", "gaps", "duplicates", "late")


class ServiceView(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="service-top"):
            yield Static("no status from the daemon yet", id="service-status")
            yield Static("", id="service-errors")
        yield Static("scans kept by this daemon", id="scans-title")
        yield DataTable(id="scans", zebra_stripes=True, cursor_type="none")

    def on_mount(self) -> None:
        self.query_one("#scans", DataTable).add_columns("scan", "status", "analysis", "incomplete", "finished",
                                                        "result folder")

    def update_status(self, st: DashboardState) -> None:
        self.query_one("#service-status", Static).update(status_table(st))
        self.query_one("#scans-title", Static).update(scans_title(st))
        self.query_one("#service-errors", Static).update(errors_text(st))
        self._fill_scans(st)

    def _fill_scans(self, st: DashboardState) -> None:
        table = self.query_one("#scans", DataTable)
        table.clear()
        for entry in reversed(st.status.scans if st.status else []):
            finished = entry.get("finished")
            when = time.strftime("%H:%M:%S", time.localtime(finished)) if isinstance(finished, int | float) else "–"
            inc = entry.get("incomplete_fraction")
            folder = str(entry.get("folder", ""))
            table.add_row(str(entry.get("scan_id", "?")), str(entry.get("status", "")),
                          str(entry.get("analysis", "running" if finished is None else "")),
                          f"{inc:.1%}" if isinstance(inc, int | float) else "–", when, PurePath(folder).name)


def status_table(st: DashboardState) -> Table:
    """Two columns, name and value, so long endpoints wrap inside their own column."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    state = Text("connected", style="bold green") if st.connected else Text("DISCONNECTED", style="bold red")
    table.add_row("daemon", Text.assemble(state, f"  {st.daemon_uid or ''}"))
    s = st.status
    if s is None:
        table.add_row("", st.connection_detail)
        return table
    table.add_row("state", f"{s.state} · uptime {duration(s.uptime_s)} · version {s.version} · {s.security}")
    table.add_row("scan", s.current_scan or "–")
    table.add_row("pub", s.pub_endpoint)
    table.add_row("control", s.control_endpoint)
    if s.metrics_endpoint:
        table.add_row("metrics", s.metrics_endpoint)
    table.add_row("counts", " · ".join(_counter(k, s.counters[k], st.rates.get(k))
                                       for k in MAIN_COUNTERS if k in s.counters))
    messages = {k.removeprefix("messages."): v for k, v in s.counters.items() if k.startswith("messages.")}
    if messages:
        total = sum(messages.values())
        per_s = sum(v for k, v in st.rates.items() if k.startswith("messages.")) if st.rates else None
        table.add_row("messages", f"{_counter('in', total, per_s)} · "
                      + " · ".join(f"{k} {_num(v)}" for k, v in sorted(messages.items())))
    if s.rejected:
        table.add_row("rejected", Text(" · ".join(f"{k} {v}" for k, v in sorted(s.rejected.items())),
                                       style="yellow"))
    return table


def scans_title(st: DashboardState) -> Text:
    """The folders' common parent once, so the table's folder column fits 80 columns."""
    folders = [str(e.get("folder", "")) for e in (st.status.scans if st.status else [])]
    parents = {str(PurePath(f).parent) for f in folders if f}
    where = f" in {parents.pop()}" if len(parents) == 1 else ""
    return Text.assemble(("scans kept by this daemon", "bold"), where)


def errors_text(st: DashboardState) -> Text:
    text = Text.assemble(("recent errors", "bold"), "\n")
    lines = st.status.recent_errors[-8:] if st.status else []
    for line in lines:
        text.append(f"{line}\n", style="red")
    if not lines:
        text.append("none", style="dim")
    return text


def _counter(name: str, value: float, per_s: float | None) -> str:
    return f"{name} {_num(value)}" + (f" ({rate(per_s)}/s)" if per_s else "")


def _num(v: float) -> str:
    if abs(v) >= 1000:
        return rate(v)
    return f"{v:.0f}" if float(v).is_integer() else f"{v:g}"
