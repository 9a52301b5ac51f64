"""The desired pipeline topics and their comparison with the brokers' topics (no broker involved)."""
from dataclasses import replace

from services.common.kafka import MAX_MESSAGE_BYTES
from services.common.model import FETCHED, PIPELINE_TOPICS, REQUESTED
from services.common.settings import Settings
from services.common.topic_plan import (
    REASSIGN_REASON,
    SHRINK_REASON,
    ConfigChange,
    PartitionGrowth,
    TopicPlan,
    TopicSpec,
    Unappliable,
    desired_topics,
    plan_topics,
    report_of,
)

SETTINGS = Settings(topic_prefix="p.", topic_partitions=6, topic_replication_factor=3, topic_min_insync_replicas=2,
                    topic_retention_ms=1000, fetched_retention_ms=500)
DESIRED = desired_topics(SETTINGS)
NAMES = [spec.name for spec in DESIRED]


def actual(**overrides: object) -> dict[str, TopicSpec]:
    """The brokers' topics exactly as wanted, with `overrides` applied to every one of them."""
    return {spec.name: replace(spec, **overrides) for spec in DESIRED}  # type: ignore[arg-type]


def test_desired_topics_follow_the_settings() -> None:
    by_name = {spec.name: spec for spec in DESIRED}
    assert list(by_name) == [f"p.{name}" for name in PIPELINE_TOPICS]
    assert all(s.partitions == 6 and s.replication_factor == 3 for s in DESIRED)
    assert dict(by_name[f"p.{REQUESTED}"].configs) == {
        "retention.ms": "1000", "max.message.bytes": str(MAX_MESSAGE_BYTES), "min.insync.replicas": "2"}
    assert by_name[f"p.{FETCHED}"].configs["retention.ms"] == "500"  # it carries every source image


def test_missing_topics_are_to_be_created_and_matching_ones_need_nothing() -> None:
    assert plan_topics(DESIRED, {}) == TopicPlan(create=DESIRED)
    assert plan_topics(DESIRED, actual()) == TopicPlan()


def test_a_differing_config_is_a_change_with_current_and_wanted() -> None:
    have = actual()
    name = f"p.{REQUESTED}"
    have[name] = replace(have[name], configs={**have[name].configs, "retention.ms": "42"})
    plan = plan_topics(DESIRED, have)
    assert plan == TopicPlan(config_changes=(ConfigChange(name, "retention.ms", "42", "1000"),))
    assert str(plan.config_changes[0]) == "retention.ms 42 → 1000"


def test_a_config_the_broker_did_not_report_is_a_change_from_unset() -> None:
    have = actual()
    name = NAMES[0]
    have[name] = replace(have[name], configs={k: v for k, v in have[name].configs.items() if k != "min.insync.replicas"})
    change = ConfigChange(name, "min.insync.replicas", None, "2")
    assert plan_topics(DESIRED, have).config_changes == (change,)
    assert str(change) == "min.insync.replicas (unset) → 2"


def test_configs_other_than_the_wanted_ones_are_ignored() -> None:
    have = {name: replace(spec, configs={**spec.configs, "cleanup.policy": "delete"}) for name, spec in actual().items()}
    assert plan_topics(DESIRED, have) == TopicPlan()


def test_more_wanted_partitions_grow_fewer_cannot_be_applied() -> None:
    assert plan_topics(DESIRED, actual(partitions=4)).partition_growth == tuple(
        PartitionGrowth(name, 4, 6) for name in NAMES)
    shrink = plan_topics(DESIRED, actual(partitions=8))
    assert shrink.partition_growth == ()
    assert shrink.unappliable == tuple(Unappliable(name, "partitions", 8, 6, SHRINK_REASON) for name in NAMES)


def test_a_different_replication_factor_needs_a_reassignment() -> None:
    for replicas in (1, 5):
        plan = plan_topics(DESIRED, actual(replication_factor=replicas))
        assert plan.unappliable == tuple(
            Unappliable(name, "replication factor", replicas, 3, REASSIGN_REASON) for name in NAMES)
        assert plan.config_changes == () and plan.partition_growth == () and plan.create == ()
        assert "reassignment" in str(plan.unappliable[0])


def test_differences_of_one_topic_are_reported_together() -> None:
    have = actual()
    name = f"p.{FETCHED}"
    have[name] = replace(have[name], partitions=2, replication_factor=1, configs={**have[name].configs, "retention.ms": "7"})
    plan = plan_topics(DESIRED, have)
    assert plan.changes_of(name) == (ConfigChange(name, "retention.ms", "7", "500"), PartitionGrowth(name, 2, 6))
    assert plan.unappliable_of(name) == (Unappliable(name, "replication factor", 1, 3, REASSIGN_REASON),)
    assert all(plan.changes_of(other) == () for other in NAMES if other != name)


def test_a_report_without_apply_leaves_differences_and_is_out_of_sync() -> None:
    have = actual(partitions=4)
    report = report_of(plan_topics(DESIRED, have), NAMES, created=True, applied=False)
    assert not report.in_sync and report.applicable
    assert report.topics[0].summary() == "differs: partitions 4 → 6"


def test_an_applied_report_is_in_sync_unless_something_cannot_be_applied() -> None:
    applied = report_of(plan_topics(DESIRED, actual(partitions=4)), NAMES, created=True, applied=True)
    assert applied.in_sync and not applied.applicable
    assert applied.topics[0].summary() == "changed: partitions 4 → 6"
    stuck = report_of(plan_topics(DESIRED, actual(replication_factor=1)), NAMES, created=True, applied=True)
    assert not stuck.in_sync and not stuck.applicable
    assert stuck.topics[0].summary().startswith("cannot apply: replication factor 1 → 3 (needs a partition reassignment")


def test_missing_topics_are_created_or_in_a_dry_run_only_reported() -> None:
    created = report_of(plan_topics(DESIRED, {}), NAMES, created=True, applied=False)
    assert created.in_sync and [t.summary() for t in created.topics] == ["created"] * len(NAMES)
    dry = report_of(plan_topics(DESIRED, {}), NAMES, created=False, applied=False)
    assert not dry.in_sync and dry.applicable
    assert {t.summary() for t in dry.topics} == {"missing, would be created"}
    assert report_of(TopicPlan(), NAMES, created=False, applied=False).topics[0].summary() == "up to date"
