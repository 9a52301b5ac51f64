"""deploy/grafana/thumbs-dashboard.json is a Grafana dashboard with every view the pipeline needs, each panel querying
Prometheus through the dashboard's data-source variable; and every metric it and the alert rules query, with the
labels they match on, is one the code declares."""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import services.api.metrics
import services.common.metrics
from services.api.metrics import MOUNTS, ROUTES
from services.common.model import EVENT_TYPES
from services.replay.core import STAGE_TOPICS
from tests.observability import (
    ALERT_RULES,
    DASHBOARD,
    alert_exprs,
    dashboard,
    dashboard_exprs,
    label_matchers,
    metric_names,
    metric_names_used,
    panels,
)

RUNBOOK = ALERT_RULES.parent / "RUNBOOK.md"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
# Labels Prometheus adds to every scraped series: the scrape's own, and the namespace on Kubernetes.
TARGET_LABELS = {"job", "instance", "namespace"}
# Sample name suffixes per metric type, as the text format exposes them (prometheus_client names a Counter's family
# without _total; a labelled metric with no children yet shows no samples, so the names come from these rules).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
# Label values the code can produce, for the labels whose values are a closed set.
LABEL_VALUES = {"stage": {"api", *STAGE_TOPICS}, "type": set(EVENT_TYPES), "route": set(ROUTES) | set(MOUNTS) | {"unmatched"}}


def visible_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels() if panel.get("type") != "row"]


# --- a Grafana dashboard ----------------------------------------------------------------------------------------

def test_it_is_a_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    document = dashboard()
    assert isinstance(document.get("title"), str) and document["title"].strip()
    assert re.fullmatch(r"[\w-]{1,40}", document.get("uid", "")), "uid: 1-40 letters, digits, - or _"
    assert isinstance(document.get("schemaVersion"), int)
    assert document.get("id") is None, "an exported dashboard has id null, so that importing it creates a new one"
    assert visible_panels()
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables.get("datasource", {}).get("type") == "datasource"
    assert variables["datasource"].get("query") == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable.get("datasource") == DATASOURCE, variable["name"]


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    for panel in visible_panels():
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        targets = panel.get("targets", [])
        assert any(str(target.get("expr", "")).strip() for target in targets), f"{panel['title']}: no query"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"{panel['title']}: target {target.get('refId')} has no expr"
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
        ref_ids = [target.get("refId") for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: refIds {ref_ids}"


def test_panel_ids_are_unique() -> None:
    ids = [panel.get("id") for panel in panels()]
    assert all(isinstance(panel_id, int) for panel_id in ids), ids
    assert len(ids) == len(set(ids)), {i for i in ids if ids.count(i) > 1}


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for cell in ((x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])):
            assert cell not in taken, f"{panel['title']} overlaps {taken[cell]}"
            taken[cell] = panel["title"]


# --- the views ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    what: str
    title: str  # a regular expression, searched in the panel title (any case)
    queries: tuple[str, ...]  # regular expressions, each searched in the panel's queries


VIEWS = [
    View("requests and completions per second", r"throughput|requests",
         (r"rate\(thumbs_(http_requests|events_in)_total", r'rate\(thumbs_events_out_total\{[^}]*type="thumbnail\.completed"')),
    View("failures by code", r"failures by code", (r"by \(code\)[^;]*thumbs_failures_total",)),
    View("end-to-end latency percentiles", r"end-to-end latency",
         (r"histogram_quantile\(0\.5,.*thumbs_task_seconds_bucket", r"histogram_quantile\(0\.9\d*,.*thumbs_task_seconds_bucket")),
    View("consumer lag per stage", r"lag", (r"by \(stage\).*thumbs_consumer_lag",)),
    View("dedupe ratio", r"dedupe", (r"thumbs_dedupe_hits_total.*/.*thumbs_resizes_total",)),
    View("dead-letter rate", r"dead letter|dlq", (r"rate\(thumbs_dead_letters_total",)),
    View("API status codes", r"status codes", (r"by \(status\).*thumbs_http_requests_total",)),
    View("process RSS", r"memory|rss", (r"process_resident_memory_bytes",)),
    View("process CPU", r"cpu", (r"rate\(process_cpu_seconds_total",)),
]


@pytest.mark.parametrize("view", VIEWS, ids=[view.what for view in VIEWS])
def test_the_dashboard_has_the_view(view: View) -> None:
    titled = [panel for panel in visible_panels() if re.search(view.title, panel["title"], re.IGNORECASE)]
    assert titled, f"no panel titled like {view.title!r} for {view.what}"
    queries = {panel["title"]: ";".join(target["expr"] for target in panel["targets"]) for panel in titled}
    assert any(all(re.search(query, text) for query in view.queries) for text in queries.values()), \
        f"{view.what}: no panel among {sorted(queries)} queries {view.queries}"


def test_the_panels_the_runbook_names_exist() -> None:
    named = set(re.findall(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", RUNBOOK.read_text()))
    assert named, "the runbook names no panel"
    assert named <= {panel["title"] for panel in visible_panels()}, named - {panel["title"] for panel in visible_panels()}


# --- the metrics -----------------------------------------------------------------------------------------------

def declared() -> Iterator[MetricWrapperBase]:
    for module in (services.common.metrics, services.api.metrics):
        yield from (value for value in vars(module).values() if isinstance(value, MetricWrapperBase))


def exposable() -> dict[str, str]:
    """Sample name -> metric family, for every family in the default registry: the thumbs metrics the modules
    above declare and prometheus_client's process and platform collectors."""
    names: dict[str, str] = {}
    for family in REGISTRY.collect():
        names.update((family.name + suffix, family.name) for suffix in SUFFIXES.get(family.type, ("",)))
        names.update((sample.name, family.name) for sample in family.samples)
    return names


def test_metric_names_are_read_from_queries() -> None:
    expr = ('sum by (stage) (rate(thumbs_a_total{stage="x", le=~"1e3|[0-9]+"}[5m] offset 1h)) > bool 1e3'
            ' and on (namespace) up unless {__name__="thumbs_b"} or label_replace(thumbs_c, "d", "$1", "e", "(.*)")'
            ' * on (job, instance) group_left (stage) thumbs_d[$__rate_interval]')
    assert metric_names(expr) == {"thumbs_a_total", "up", "thumbs_b", "thumbs_c", "thumbs_d"}
    used = metric_names_used()
    assert "up" not in used  # Prometheus makes it
    assert {"thumbs_consumer_lag", "thumbs_dead_letters_total"} <= used  # from the alerts
    assert {"thumbs_task_seconds_bucket", "process_resident_memory_bytes", "process_cpu_seconds_total"} <= used  # dashboard


def test_every_metric_the_alerts_and_the_dashboard_use_is_declared() -> None:
    assert list(declared()), "no metric declared"
    assert metric_names_used() - set(exposable()) == set(), f"queried by {ALERT_RULES.name} or {DASHBOARD.name}, declared nowhere"


def test_label_matchers_name_labels_and_values_the_code_produces() -> None:
    families = exposable()
    labels = {metric._name: set(metric._labelnames) for metric in declared()}  # private, but prometheus_client has no public accessor
    problems = []
    for expr in alert_exprs() + dashboard_exprs():
        for metric, label, operator, value in label_matchers(expr):
            if label == "__name__" or metric not in families:  # an unknown name fails the test above
                continue
            known = labels.get(families[metric], set()) | TARGET_LABELS | ({"le"} if metric.endswith("_bucket") else set())
            if label not in known:
                problems.append(f"{metric}{{{label}{operator}...}}: {metric} has no label {label}")
            elif label in LABEL_VALUES and "$" not in value:  # $: a Grafana variable
                regex = operator in ("=~", "!~")
                if regex and re.search(r"[*+?()\[\]{}^$\\]", value):
                    continue  # a pattern; only a plain list of alternatives (a|b) is checked value by value
                values = value.split("|") if regex else [value]
                problems.extend(f"{metric}{{{label}{operator}{value!r}}}: no {label} {v!r}" for v in values if v not in LABEL_VALUES[label])
    assert not problems, "\n".join(problems)
