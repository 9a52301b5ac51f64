"""The metrics the alert rules (deploy/prometheus) and the dashboard (deploy/grafana) query: what the processes'
/metrics endpoints must serve between them. Shared by the unit tests (declared by the code) and the integration
tests (served by a running stack)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "thumbs-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "thumbs-dashboard.json"

# Series Prometheus makes itself (scrape health, alert state) rather than scraping them from a process.
GENERATED = frozenset({
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
})
# PromQL words that look like metric names: binary operators, modifiers, and the number literals Inf and NaN.
KEYWORDS = frozenset({
    "and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan",
})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r'(?<![\w.:$])([a-zA-Z_:][\w:]*)?\s*\{((?:[^{}"\']|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')*)\}')
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\')')
_BRACES = re.compile(r"\{[^{}]*\}")  # label matchers, once strings are gone
_BRACKETS = re.compile(r"\[[^\[\]]*\]")  # range and subquery durations, Grafana's $__rate_interval among them
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
# Not part of another word, a number (1e3), a duration (15m) or a Grafana variable ($__interval), and not a function.
_IDENTIFIER = re.compile(r"(?<![\w.:$])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()")


def metric_names_used() -> set[str]:
    """Every metric name the alert rules' and the dashboard panels' queries select, as a /metrics page exposes it
    (thumbs_events_in_total, thumbs_task_seconds_bucket, process_resident_memory_bytes); series Prometheus
    generates itself (up) and the rules' own recorded series are left out."""
    # Any identifier in metric position, not a fixed list of prefixes: a misspelt or foreign name shows up too.
    names = {name for expr in alert_exprs() + dashboard_exprs() for name in metric_names(expr)}
    return names - GENERATED - recorded_names()


def metric_names(expr: str) -> set[str]:
    """The metric names one PromQL expression selects: identifiers that are not functions, keywords, label names
    (in matchers or in by/without/on/ignoring/group_* lists) or parts of strings and durations."""
    named = {m[2] or m[3] for _, body in _SELECTOR.findall(expr) for m in _MATCHER.findall(body)
             if m[0] == "__name__" and m[1] == "="}
    bare = _LABEL_LIST.sub(" ", _BRACKETS.sub(" ", _BRACES.sub(" ", _STRING.sub('""', expr))))
    return named | {name for name in _IDENTIFIER.findall(bare) if name.lower() not in KEYWORDS}


def label_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of every label matcher of `expr`'s selectors; the metric is the name before
    the braces, else the one an `__name__=` matcher gives, else empty."""
    found: list[tuple[str, str, str, str]] = []
    for name, body in _SELECTOR.findall(expr):
        matchers = [(m[0], m[1], m[2] or m[3]) for m in _MATCHER.findall(body)]
        metric = name or next((value for label, op, value in matchers if label == "__name__" and op == "="), "")
        found.extend((metric, label, op, value) for label, op, value in matchers)
    return found


def alert_rules() -> list[dict[str, Any]]:
    """Every rule (alerting or recording) of every group in thumbs-alerts.yml."""
    document = yaml.safe_load(ALERT_RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]


def recorded_names() -> set[str]:
    return {str(rule["record"]) for rule in alert_rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(document: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows included, and the panels a collapsed row holds."""
    found: list[dict[str, Any]] = []
    for panel in (document or dashboard())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_exprs() -> list[str]:
    return [str(target["expr"]) for panel in panels() for target in panel.get("targets", []) if target.get("expr")]

