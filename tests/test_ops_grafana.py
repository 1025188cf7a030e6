"""The Grafana dashboard (docs/grafana-edxlive.json) charts metrics that the daemon really exports.

Every PromQL selector in the dashboard is checked against the exposition of a real ``Metrics``
registry (the daemon's own class, every series touched once so that labelled families export
samples): the metric name must be exported, and every label it filters or groups by must be one
of its labels. And every ``edxlive_`` family must be charted, so the dashboard cannot fall behind.
The end-to-end check against a running daemon's /metrics is in test_ops_metrics.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edxlive.service.metrics import Metrics
from tests import procs

DASHBOARD = procs.REPO / "docs" / "grafana-edxlive.json"
# Added by Prometheus to every scraped series, or produced by Prometheus itself.
SCRAPE_LABELS = {"instance", "job"}
PROMETHEUS_OWN = {"up": set()}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from a real registry with every series touched."""
    m = Metrics()
    m.messages_received("scan.chunk")
    m.message_rejected("bad_json")
    m.events_ingested(10)
    m.chunks_missing(1)
    m.chunks_duplicated(1)
    m.scan_state("acquiring")
    m.scan_progress(0.5)
    m.ingest_lag(0.1)
    m.analysis_duration("pca", "pca_gmm", 1.0)
    m.scan_outcome("completed")
    m.clients_connected(1)
    m.curve_refused("inbound")
    text = generate_latest(m.registry).decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    return samples


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"label_values\((\w+), (\w+)\)", r"\1{\2=~'.+'}", var["query"]["query"]))
    return exprs


def test_every_charted_metric_is_exported_with_those_labels() -> None:
    samples = {**exported(), **PROMETHEUS_OWN}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 15
    for expr in exprs:
        selectors = SELECTOR.findall(expr)
        assert selectors, f"no metric selector in {expr!r}"
        names = {name for name, _ in selectors}
        # every metric name in the expression is a selector (nothing charted by a bare, unchecked name)
        assert set(re.findall(r"\b(?:edxlive|process)_\w+", expr)) <= names, expr
        labels: set[str] = set(SCRAPE_LABELS)
        for name, matchers in selectors:
            assert name in samples, f"{name} (in {expr!r}) is not exported; exported: {sorted(samples)}"
            labels |= samples[name]
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert used <= samples[name] | SCRAPE_LABELS, (expr, used - samples[name])
        for group in GROUPING.findall(expr):
            assert {g.strip() for g in group.split(",")} <= labels, expr
        for legend in re.findall(r"\{\{(\w+)\}\}", " ".join(_legends(dashboard, expr))):
            assert legend in labels, (expr, legend)


def test_every_edxlive_metric_is_charted() -> None:
    charted = " ".join(expressions(json.loads(DASHBOARD.read_text())))
    families = {re.sub(r"_(total|bucket|count|sum|info)$", "", n) for n in exported()
                if n.startswith("edxlive_") and not n.endswith("_created")}
    missing = [f for f in sorted(families) if f not in charted]
    assert not missing, f"not on the dashboard: {missing}"


def test_dashboard_is_importable() -> None:
    """What Grafana needs to import it: unique panel ids, targets with ids, a Prometheus datasource variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "edxlive" and dashboard["title"] == "edxlive"
    all_panels = list(panels(dashboard["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in all_panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]


def _legends(dashboard: dict[str, Any], expr: str) -> list[str]:
    return [t.get("legendFormat", "") for p in panels(dashboard["panels"]) for t in p.get("targets", [])
            if t["expr"] == expr]
