"""`edxlive dashboard`: the Textual app on the daemon's outbound channel.

The Feed (Clone pattern, ``clients/feed.py``) runs in a worker thread and posts what it receives
to the app; the app applies it to a pure ``DashboardState`` and redraws the sections that changed.
Re-analysis requests go out on their own worker thread, so the screen never waits on the network.

Cold start (docs/performance.md, "Dashboard start"): only the live view is built at start; the
results and service views, with their imports (textual-plotext, DataTable), are built the first
time they are shown, from the state held so far. The first frame has the footer's keys; the feed
thread starts once Textual's start-up refreshes are over, and the protocol (pydantic) and numpy
load on that thread, so the first frame ("CONNECTING") waits for neither.
tests/dashboard/test_dashboard_startup.py guards what start may import.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.message import Message
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Footer, Header, Static

from edxlive.clients.dashboard.live import LiveView
from edxlive.clients.dashboard.state import DashboardState

VIEWS = ("live", "results", "service")
DEBOUNCE_S = 0.8  # +/- pressed three times sends one request, for the final value
GMM_K_MAX = 32  # the daemon's config accepts 1..32
# The feed starts once the footer's first bindings signal has been handled (KeysFooter); this is the
# latest it starts if that never comes (Textual sends it only while the terminal has the focus).
FEED_START_LATEST_S = 1.0
# Grouped so that every binding fits in the footer of an 80-column terminal.
VIEWS_GROUP = Binding.Group("views", compact=True)
K_GROUP = Binding.Group("GMM k", compact=True)
SIZE_GROUP = Binding.Group("min size", compact=True)


class FeedItems(Message):
    """A batch from the feed thread."""

    def __init__(self, items: list[Any]) -> None:
        super().__init__()
        self.items = items


class KeysFooter(Footer):
    """The footer, with its keys in the first frame, recomposed only when they change; it tells the
    app when Textual's start-up refreshes are over.

    Textual leaves the footer empty until the screen's first bindings signal, a few refreshes after
    the first frame, then recomposes it for every signal: three times at start, the same twelve keys
    each time. And a thread importing the protocol, pydantic and numpy meanwhile would hold the GIL
    for most of every switch interval, so that each of those refreshes waits: in a terminal the keys
    came ~0.5 s after the rest of the frame (docs/performance.md, "Dashboard start"). So the keys
    are drawn with the first frame, and the feed starts once the first signal has been handled.
    """

    class Shown(Message):
        """The first bindings signal has been handled: the screen is complete and settled."""

    def __init__(self, *, compact: bool = False) -> None:
        super().__init__(compact=compact)
        self._composed_for: tuple[Any, ...] | None = None
        self._shown = False

    def compose(self) -> ComposeResult:
        # The dashboard's keys are all the app's own, known now: no need to wait for the signal.
        self._bindings_ready = True
        self._composed_for = self._keys()
        return super().compose()

    def _keys(self) -> tuple[Any, ...]:
        """What ``Footer.compose`` draws from."""
        shown = tuple((b, enabled, tip) for _, b, enabled, tip in self.screen.active_bindings.values() if b.show)
        return shown, self.compact, self.show_command_palette, self.app.ENABLE_COMMAND_PALETTE

    async def recompose(self) -> None:
        if not self.is_attached:
            return
        keys = self._keys()
        if keys != self._composed_for:
            self._composed_for = keys
            await super().recompose()
        if not self._shown:
            self._shown = True
            self.post_message(self.Shown())


class Endpoint(Message):
    """The control endpoint the feed is trying (it changes when a restarted daemon took new ports)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint


class ReplyArrived(Message):
    def __init__(self, ok: bool, text: str, revision: int | None) -> None:
        super().__init__()
        self.ok, self.text, self.revision = ok, text, revision


class Dashboard(App[int]):
    CSS_PATH = "dashboard.tcss"
    TITLE = "edxlive"
    # Every action has a key of its own (listed in the footer and in `?`); the palette would only
    # take a footer slot that 80 columns cannot spare.
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("1", "view('live')", "Live", group=VIEWS_GROUP),
        Binding("2", "view('results')", "Results", group=VIEWS_GROUP),
        Binding("3", "view('service')", "Service", group=VIEWS_GROUP),
        Binding("w", "workflow", "Workflow"),
        Binding("e", "element", "Element"),
        Binding("c", "component", "PC"),
        Binding("plus,equals_sign", "gmm_k(1)", "k+", key_display="+", group=K_GROUP),
        Binding("minus", "gmm_k(-1)", "k−", key_display="-", group=K_GROUP),
        Binding("right_square_bracket", "min_size(1)", "size+", key_display="]", group=SIZE_GROUP),
        Binding("left_square_bracket", "min_size(-1)", "size−", key_display="[", group=SIZE_GROUP),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, connect: str | None = None, *, feed: bool = True, stale_after_s: float = 3.0,
                 gc_paused: bool = False) -> None:
        super().__init__()
        self.connect = connect
        self.use_feed = feed
        self._gc_paused = gc_paused  # by run_dashboard's caller, for the start (see run_dashboard)
        self.stale_after_s = stale_after_s
        self.state = DashboardState()
        self.view = "live"
        self._stop = threading.Event()
        self._feed: Any = None
        self._feed_started = False
        self._debounce: Any = None
        self._pending = False
        self._views: dict[str, Widget] = {}  # the results and service views, once built
        self._seen: set[str] = set()  # every section that has changed so far

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield Static("", id="banner", markup=False)
        with ContentSwitcher(initial="live", id="views"):
            yield LiveView(id="live")  # the others are built when first shown (_show_view)
        yield Static("", id="control", markup=False)
        yield KeysFooter(compact=True)

    def on_mount(self) -> None:
        if self.connect:  # known now: in the first frame, rather than a new layout when the feed starts
            self._show_endpoint(self.connect)
        self._show_connection()
        self._show_control()
        if self.use_feed:  # the feed's imports (pydantic, numpy) would only delay the first screen
            self.set_timer(FEED_START_LATEST_S, self._start_feed)

    def on_keys_footer_shown(self) -> None:
        if self.use_feed:
            self.call_after_refresh(self._start_feed)  # after the refresh that draws the keys

    def _start_feed(self) -> None:
        if not self._feed_started:
            self._feed_started = True
            self._run_feed()

    # ------------------------------------------------------------------ feed thread

    @work(thread=True, exclusive=True, group="feed", exit_on_error=False)
    def _run_feed(self) -> None:
        from edxlive.clients.feed import Feed

        self._resume_gc()
        feed = Feed(self.connect, stale_after_s=self.stale_after_s)
        self._feed = feed
        endpoint = ""
        try:
            while not self._stop.is_set():
                if feed.control != endpoint:  # post_message is thread-safe; call_from_thread could block at exit
                    endpoint = feed.control
                    self.post_message(Endpoint(endpoint))
                items = feed.poll(200)
                if items:
                    self.post_message(FeedItems(items))
        finally:
            self._feed = None
            feed.close()

    def on_endpoint(self, event: Endpoint) -> None:
        if self.is_running and event.endpoint != self.sub_title:
            self._show_endpoint(event.endpoint)
            self._show_connection()

    def _show_endpoint(self, endpoint: str) -> None:
        self.sub_title = endpoint
        if not self.state.connected and self.state.daemon_uid is None:
            self.state.connection_detail = f"connecting to {endpoint}…"

    def on_feed_items(self, event: FeedItems) -> None:
        if self.is_running:  # False once shutdown began: a late batch would find no widgets to draw on
            self.apply_items(event.items)

    def apply_items(self, items: list[Any]) -> None:
        """Apply a batch of feed items and redraw what changed (also used by tests and screenshots)."""
        changed: set[str] = set()
        for item in items:
            changed |= self.state.apply(item)
        self._redraw(changed)

    def _redraw(self, changed: set[str]) -> None:
        st = self.state
        self._seen |= changed
        live = self.query_one(LiveView)
        if "connection" in changed:
            self._show_connection()
        if changed & {"scan", "status", "connection"}:
            live.update_scan(st)
        if changed & {"status", "connection"} and "service" in self._views:
            self._views["service"].update_status(st)  # type: ignore[attr-defined]
        if changed & {"progress", "scan"}:
            live.update_progress(st)
        if "live" in changed:
            live.update_live(st)
        if "result" in changed and "results" in self._views:
            self._views["results"].update_result(st)  # type: ignore[attr-defined]
        if changed & {"control", "connection"}:
            self._show_control()

    def _show_connection(self) -> None:
        banner = self.query_one("#banner", Static)
        st = self.state
        if st.connected:
            banner.display = False
            return
        word = "DISCONNECTED" if st.daemon_uid else "CONNECTING"
        banner.update(f"{word}: {st.connection_detail}")
        banner.set_class(st.daemon_uid is not None, "down")
        banner.display = True

    def _show_control(self) -> None:
        c = self.state.control
        k = "auto" if c.gmm_k is None else str(c.gmm_k)
        size = "auto" if c.min_cluster_size is None else str(c.min_cluster_size)
        status = ("sending…" if c.in_flight else
                  f"waiting for revision {c.pending_revision}…" if c.pending_revision is not None else c.message)
        self.query_one("#control", Static).update(f"GMM k {k} (+/−) · min_cluster_size {size} ([/])"
                                                  + (f" · {status}" if status else ""))

    # ------------------------------------------------------------------ actions

    async def action_view(self, name: str) -> None:
        await self._build_view(name)
        self.view = name
        self.query_one("#views", ContentSwitcher).current = name

    async def _build_view(self, name: str) -> None:
        """Build the results or service view the first time it is needed, drawn from the state so far."""
        if name == "live" or name in self._views:
            return
        st = self.state
        if name == "results":
            from edxlive.clients.dashboard.results import ResultsView

            results = ResultsView(id="results")
            await self.query_one("#views", ContentSwitcher).add_content(results)
            self._views[name] = results
            results.update_result(st)
        else:
            from edxlive.clients.dashboard.service_view import ServiceView

            service = ServiceView()
            await self.query_one("#views", ContentSwitcher).add_content(Container(service, id="service"))
            self._views[name] = service
            if self._seen & {"status", "connection"}:
                service.update_status(st)

    async def action_workflow(self) -> None:
        await self._build_view("results")
        self._views["results"].select_next_workflow(self.state)  # type: ignore[attr-defined]
        if self.view != "results":
            await self.action_view("results")

    def action_element(self) -> None:
        self.query_one(LiveView).next_element(self.state)

    def action_component(self) -> None:
        self.query_one(LiveView).next_component(self.state)

    def action_help(self) -> None:
        from edxlive.clients.dashboard.help import HelpScreen

        self.push_screen(HelpScreen(self.BINDINGS))

    def action_gmm_k(self, step: int) -> None:
        c = self.state.control
        current = c.gmm_k if c.gmm_k is not None else self.state.result_param("pca_gmm", "k", 3)
        self.state.ask("gmm_k", max(1, min(GMM_K_MAX, int(current) + step)))
        self._schedule()

    def action_min_size(self, step: int) -> None:
        c = self.state.control
        current = c.min_cluster_size if c.min_cluster_size is not None else \
            self.state.result_param("umap_hdbscan", "min_cluster_size", 10)
        size = int(current)
        # Steps of about 10 % so a few presses reach a useful range at any scale.
        self.state.ask("min_cluster_size", max(2, size + step * max(1, size // 10)))
        self._schedule()

    def _schedule(self) -> None:
        c = self.state.control
        c.message = "sending shortly…"
        self._show_control()
        self._pending = True
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(DEBOUNCE_S, self._send_pending)

    def _send_pending(self) -> None:
        if not self._pending:
            return
        self._pending = False
        if not self.use_feed:
            self.state.control.message = "not connected to a daemon"
            self._show_control()
            return
        self.state.control.in_flight = True
        self._show_control()
        self._request("reanalyze", self.state.reanalyze_params())

    @work(thread=True, group="control", exit_on_error=False)
    def _request(self, kind: str, params: dict[str, Any]) -> None:
        from edxlive.clients.feed import Feed

        # Requests go on a socket of their own, never the feed thread's; while the feed thread is
        # down (between attempts) a short-lived Feed object supplies the endpoint and context.
        feed = self._feed
        own = feed is None
        if own:
            feed = Feed(self.connect)
        try:
            reply = feed.request(kind, params, timeout_s=5.0)
        except (TimeoutError, ConnectionError) as exc:
            self.post_message(ReplyArrived(False, str(exc), None))
            return
        finally:
            if own:
                feed.close()
        revision = reply.result.get("revision") if reply.ok else None
        text = f"accepted: revision {revision}" if reply.ok else f"refused: {reply.error}"
        self.post_message(ReplyArrived(reply.ok, text, revision))

    def on_reply_arrived(self, event: ReplyArrived) -> None:
        c = self.state.control
        c.in_flight = False
        c.message = event.text
        if event.ok and isinstance(event.revision, int):
            have = self.state.result.revision if self.state.result is not None else -1
            c.pending_revision = event.revision if event.revision > have else None
        self._show_control()

    async def action_quit(self) -> None:
        self._stop.set()
        self.exit(0)

    def on_unmount(self) -> None:
        self._stop.set()
        self._resume_gc()

    def _resume_gc(self) -> None:
        """The start's imports are done: what they made lives as long as the process, so the
        collector leaves it alone from now on (``gc.freeze``) and collects what comes after."""
        if self._gc_paused:
            self._gc_paused = False
            gc.freeze()
            gc.enable()


def run_dashboard(connect: str | None, *, gc_paused: bool = False) -> int:
    """Run the dashboard in this terminal until the user quits; returns the exit status.

    ``gc_paused``: the caller disabled the garbage collector before importing this module. The
    start makes a few hundred thousand objects that live as long as the process (modules: Textual,
    then the feed's numpy and pydantic; the widgets), and with the collector on, each collection of
    the oldest generation walks all of them: 70-150 ms each, one before the first frame and one
    just before the daemon's data is drawn, besides tens of young-generation ones (docs/performance.md,
    "Dashboard start"). The app turns it back on, with all that frozen, once the feed's imports are done.
    """
    if not sys.stdout.isatty():
        print("edxlive: error: the dashboard needs a terminal; use `edxlive tail` for scripts", file=sys.stderr)
        return 2
    from edxlive.clients.dashboard.maps import GRAPHICS, detect_graphics

    GRAPHICS["enabled"] = detect_graphics()
    result = Dashboard(connect, gc_paused=gc_paused).run()
    return 0 if result is None else int(result)


__all__ = ["Dashboard", "run_dashboard"]
