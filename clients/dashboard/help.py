"""The `?` help screen: every key binding, with what it does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

EXTRA = {
    "view('live')": "live view: progress, count and element maps, live PCA",
    "view('results')": "results: cluster maps, spectra, quantification, verdict",
    "view('service')": "service: daemon status, errors, past scans",
    "workflow": "switch the workflow shown in the table and spectra",
    "element": "next element map (or pick it in the list)",
    "component": "next live PCA component map",
    "gmm_k(1)": "GMM k + 1, then re-analyse (sent after a short pause)",
    "gmm_k(-1)": "GMM k − 1, then re-analyse",
    "min_size(1)": "HDBSCAN min_cluster_size up ~10 %, then re-analyse",
    "min_size(-1)": "HDBSCAN min_cluster_size down ~10 %, then re-analyse",
    "help": "this help",
    "quit": "quit the dashboard",
}
CONNECTION = ("The feed reconnects by itself: a red DISCONNECTED line shows while the daemon is "
              "silent, and goes when it is back (also after a restart on new ports).")


def key_table(bindings: Iterable[Binding]) -> Table:
    table = Table(title="edxlive dashboard keys", box=None, pad_edge=False, expand=True)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("does", ratio=1)
    for b in bindings:
        table.add_row(b.key_display or b.key, EXTRA.get(b.action, b.description))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[Binding]] = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, bindings: Iterable[Binding]) -> None:
        super().__init__()
        self._help_bindings = list(bindings)

    def compose(self) -> ComposeResult:
        # A fixed width (at most the screen's): an auto-width box around a rich Table shrinks it
        # to its narrowest layout.
        with VerticalScroll(id="help-box"):
            yield Static(key_table(self._help_bindings))
            yield Static(CONNECTION, id="help-connection")
            yield Static("Esc or ? closes", id="help-close")
