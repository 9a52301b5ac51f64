"""deploy/prometheus: the alert rules pass promtool's checker and their promtool unit tests, every alert carries what
the person paged needs (severity, summary, description, a runbook section), and the alerts the pipeline needs exist.

promtool comes from devtools/test-tools/promtool.sh (Debian's prometheus package), a prerequisite of `make test`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from itertools import pairwise
from typing import Any

import pytest
import yaml

from services.replay.core import STAGE_TOPICS
from tests.observability import ALERT_RULES, ROOT, alert_rules

PROMETHEUS = ALERT_RULES.parent
RUNBOOK = PROMETHEUS / "RUNBOOK.md"
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
INSTALL = "bash devtools/test-tools/promtool.sh"
STAGES = ("api", *STAGE_TOPICS)
SEVERITIES = {"critical", "warning", "info"}
PROMTOOL_TIMEOUT = 120  # seconds; both commands take well under one here

ALERTS = [rule for rule in alert_rules() if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool is not on PATH: run `{INSTALL}` (or `make test`, which installs it)", pytrace=False)
    return subprocess.run([path, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "--lint-fatal", ALERT_RULES.name)
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}{result.stderr}"


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, f"no *.test.yml under {PROMETHEUS / 'tests'}"
    result = promtool("test", "rules", *(str(path.relative_to(PROMETHEUS)) for path in UNIT_TESTS))
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


# --- what each alert carries --------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """The anchor GitHub and most Markdown renderers give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """`## Name` heading -> the section's text up to the next heading."""
    parts = re.split(r"^## +(.+?) *$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {heading: body.strip() for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def rule_id(rule: dict[str, Any]) -> str:
    stage = rule.get("labels", {}).get("stage")
    return f"{rule['alert']}-{stage}" if stage else str(rule["alert"])


@pytest.mark.parametrize("rule", ALERTS, ids=rule_id)
def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section(rule: dict[str, Any]) -> None:
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
    assert labels.get("severity") in SEVERITIES, labels
    assert str(annotations.get("summary", "")).strip(), "no summary"
    assert str(annotations.get("description", "")).strip(), "no description"
    path, _, anchor = str(annotations.get("runbook_url", "")).partition("#")
    assert (ROOT / path).resolve() == RUNBOOK.resolve(), f"runbook_url {annotations.get('runbook_url')!r}"
    assert anchor == slug(rule["alert"]), f"the anchor should be the alert's section, #{slug(rule['alert'])}"
    assert anchor in {slug(heading) for heading in runbook_sections()}, f"RUNBOOK.md has no section #{anchor}"


def test_the_runbook_has_one_finished_section_per_alert_and_no_other() -> None:
    sections = runbook_sections()
    assert len(sections) == len(set(sections)), "a section appears twice"
    assert set(sections) == {rule["alert"] for rule in ALERTS}
    for heading, body in sections.items():
        assert re.search(r"^- \S", body, re.MULTILINE), f"{heading}: no list of what to check"
        # Each paragraph and list item ends a sentence: a cut-off line does not.
        for block in re.split(r"\n(?=- )|\n\s*\n", body):
            assert block.rstrip().endswith((".", "?", ")")), f"{heading}: unfinished text: {block[-80:]!r}"
    assert RUNBOOK.read_text().endswith("\n")


# --- the alerts the pipeline needs ------------------------------------------------------------------------------

def alert(name: str) -> list[dict[str, Any]]:
    found = [rule for rule in ALERTS if rule["alert"] == name]
    assert found, f"no alert {name} in {ALERT_RULES.name}"
    return found


def expr(name: str) -> str:
    return " ".join(str(rule["expr"]) for rule in alert(name))


def test_lag_growing_for_10_minutes_alerts() -> None:
    (rule,) = alert("ThumbsConsumerLagGrowing")
    text = expr("ThumbsConsumerLagGrowing")
    assert "thumbs_consumer_lag" in text
    assert re.search(r"\b(deriv|delta|increase|rate|predict_linear)\(", text), "the rule does not look at growth"
    assert rule.get("for") == "10m" or "[10m" in text


def test_dead_letters_alert() -> None:
    assert "thumbs_dead_letters_total" in expr("ThumbsDeadLetters")


def test_a_high_failure_ratio_alerts() -> None:
    text = expr("ThumbsFailureRatioHigh")
    assert "thumbnail.failed" in text and "/" in text
    assert re.search(r">\s*0?\.\d+", text), "no ratio threshold"


@pytest.mark.parametrize(("name", "status"), [("ThumbsApiServerErrors", 'status=~"5.."'), ("ThumbsApiUnavailable", 'status="503"')])
def test_api_error_ratios_alert(name: str, status: str) -> None:
    text = expr(name)
    assert "thumbs_http_requests_total" in text and status in text and "/" in text
    assert re.search(r">\s*0?\.\d+", text), "no ratio threshold"


def test_a_stage_not_ready_alerts() -> None:
    assert re.search(r"thumbs_stage_ready\b.*==\s*0", expr("ThumbsStageNotReady"))


def test_an_absent_stage_alerts_for_every_stage() -> None:
    text = expr("ThumbsStageAbsent")
    for stage in STAGES:
        assert f'absent(thumbs_build_info{{stage="{stage}"}})' in text, stage


# --- what the promtool unit tests cover ------------------------------------------------------------------------

def expand(values: str) -> list[float | None]:
    """promtool's series notation ('0+100x3 5 _x2 7x2') as the samples it stands for (None: missing)."""
    samples: list[float | None] = []
    for term in values.split():
        found = re.fullmatch(r"(_|stale|[-+]?[\d.e]+)(?:([-+][\d.e]+)?x(\d+))?", term)
        assert found, f"cannot read {term!r}"
        start, step, times = found.groups()
        if start in ("_", "stale"):
            samples.extend([None] * (int(times or 0) + 1))
        elif times is None:
            samples.append(float(start))
        else:
            samples.extend(float(start) + float(step or 0) * i for i in range(int(times) + 1))
    return samples


def minutes(duration: str) -> float:
    return sum(float(n) * {"s": 1 / 60, "m": 1, "h": 60}[unit] for n, unit in re.findall(r"(\d+)([smh])", duration))


def lag_cases() -> list[tuple[list[list[float | None]], list[tuple[float, bool]]]]:
    """Per promtool test with ThumbsConsumerLagGrowing expectations: its lag series' samples, and each
    (evaluation minute, fires?) expected."""
    cases = []
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            series = [expand(s["values"]) for s in test.get("input_series", []) if s["series"].startswith("thumbs_consumer_lag")]
            expected = [(minutes(check["eval_time"]), bool(check.get("exp_alerts"))) for check in test.get("alert_rule_test", [])
                        if check["alertname"] == "ThumbsConsumerLagGrowing"]
            if series and expected:
                cases.append((series, expected))
    return cases


def test_the_unit_tests_fire_on_growing_lag() -> None:
    def growing(samples: list[float | None]) -> bool:
        known = [s for s in samples if s is not None]
        return all(b > a for a, b in pairwise(known)) and known[-1] > 1000

    assert any(all(map(growing, series)) and any(fires for _, fires in expected) for series, expected in lag_cases()), \
        "no promtool test where lag grows past 1000 and ThumbsConsumerLagGrowing fires"


def test_the_unit_tests_stay_quiet_on_high_flat_lag() -> None:
    def flat_and_high(samples: list[float | None]) -> bool:
        return len(set(samples)) == 1 and (samples[0] or 0) > 1000 and len(samples) > 20

    # Evaluated past the rule's 10-minute window plus its 10-minute `for`, so that the quiet is the rule's doing.
    assert any(any(map(flat_and_high, series)) and not any(fires for _, fires in expected)
               and max(minute for minute, _ in expected) >= 20 for series, expected in lag_cases()), \
        "no promtool test where lag is high but flat for 20 minutes and ThumbsConsumerLagGrowing stays quiet"


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet() -> None:
    outcomes: dict[str, set[bool]] = {}
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                outcomes.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for name in sorted({rule["alert"] for rule in ALERTS}):
        assert outcomes.get(name) == {True, False}, f"{name}: expectations {outcomes.get(name)} (True: fires)"
