"""The pipeline topics the settings want, compared with what the brokers have. Pure: no broker is asked here."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .model import FETCHED, PIPELINE_TOPICS
from .settings import Settings

# thumbnail.fetched records carry the source image (up to fetch_max_bytes) and its event header.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the settings want it (or, read back, as the brokers have it)."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


@dataclass(frozen=True)
class ConfigChange:
    topic: str
    key: str
    current: str | None  # None: the broker reported no value
    wanted: str

    def __str__(self) -> str:
        return f"{self.key} {'(unset)' if self.current is None else self.current} → {self.wanted}"


@dataclass(frozen=True)
class PartitionGrowth:
    topic: str
    current: int
    wanted: int

    def __str__(self) -> str:
        return f"partitions {self.current} → {self.wanted}"


@dataclass(frozen=True)
class Unappliable:
    """A difference this tool never applies; `reason` says what it would take."""

    topic: str
    key: str
    current: int
    wanted: int
    reason: str

    def __str__(self) -> str:
        return f"{self.key} {self.current} → {self.wanted} ({self.reason})"


Change = ConfigChange | PartitionGrowth
SHRINK_REASON = "partitions only ever grow; fewer would need a new topic"
REASSIGN_REASON = "needs a partition reassignment with kafka-reassign-partitions.sh, not a config change"


@dataclass(frozen=True)
class TopicPlan:
    """What it takes to bring the brokers to the desired state."""

    create: tuple[TopicSpec, ...] = ()
    config_changes: tuple[ConfigChange, ...] = ()
    partition_growth: tuple[PartitionGrowth, ...] = ()
    unappliable: tuple[Unappliable, ...] = ()

    def changes_of(self, topic: str) -> tuple[Change, ...]:
        changes: tuple[Change, ...] = (*self.config_changes, *self.partition_growth)
        return tuple(c for c in changes if c.topic == topic)

    def unappliable_of(self, topic: str) -> tuple[Unappliable, ...]:
        return tuple(u for u in self.unappliable if u.topic == topic)


def desired_topics(settings: Settings) -> tuple[TopicSpec, ...]:
    """Every pipeline topic as the settings want it."""
    return tuple(
        TopicSpec(settings.topic(name), settings.topic_partitions, settings.topic_replication_factor, {
            # thumbnail.fetched carries every source image: its bytes fill the brokers' disks fastest.
            "retention.ms": str(settings.fetched_retention_ms if name == FETCHED else settings.topic_retention_ms),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
            "min.insync.replicas": str(settings.topic_min_insync_replicas),
        })
        for name in PIPELINE_TOPICS
    )


def plan_topics(desired: Sequence[TopicSpec], actual: Mapping[str, TopicSpec]) -> TopicPlan:
    """Compares wanted and actual topics (partitions, replication factor, the wanted configs)."""
    create, configs, growth, unappliable = [], [], [], []
    for want in desired:
        have = actual.get(want.name)
        if have is None:
            create.append(want)
            continue
        configs += [ConfigChange(want.name, key, have.configs.get(key), value)
                    for key, value in want.configs.items() if have.configs.get(key) != value]
        if want.partitions > have.partitions:
            growth.append(PartitionGrowth(want.name, have.partitions, want.partitions))
        elif want.partitions < have.partitions:
            unappliable.append(Unappliable(want.name, "partitions", have.partitions, want.partitions, SHRINK_REASON))
        if want.replication_factor != have.replication_factor:
            unappliable.append(Unappliable(want.name, "replication factor", have.replication_factor,
                                           want.replication_factor, REASSIGN_REASON))
    return TopicPlan(tuple(create), tuple(configs), tuple(growth), tuple(unappliable))


@dataclass(frozen=True)
class TopicReport:
    """One topic after a run: created, changed, or what still differs from the settings."""

    name: str
    created: bool = False
    missing: bool = False  # absent and left so (dry run)
    changed: tuple[Change, ...] = ()
    differs: tuple[Change, ...] = ()  # left as they are; apply=True changes them
    unappliable: tuple[Unappliable, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.differs or self.unappliable)

    def summary(self) -> str:
        """`created`, `up to date`, `differs: key current → wanted, ...`, `changed: ...`, `cannot apply: ...`."""
        parts = [label for label, flag in (("created", self.created), ("missing, would be created", self.missing))
                 if flag]
        parts += [f"{label}: {', '.join(map(str, items))}" for label, items in
                  (("changed", self.changed), ("differs", self.differs), ("cannot apply", self.unappliable)) if items]
        return "; ".join(parts) or "up to date"


@dataclass(frozen=True)
class TopicsReport:
    """Every pipeline topic after `ensure_topics`, in PIPELINE_TOPICS order."""

    topics: tuple[TopicReport, ...]
    plan: TopicPlan

    @property
    def in_sync(self) -> bool:
        """True when the brokers match the settings (nothing was left unapplied)."""
        return all(t.in_sync for t in self.topics)

    @property
    def applicable(self) -> bool:
        """Differences remain that `ensure_topics(apply=True)` would apply."""
        return any(t.missing or t.differs for t in self.topics)


def report_of(plan: TopicPlan, names: Sequence[str], *, created: bool, applied: bool) -> TopicsReport:
    """Per topic: what this run did with the plan (`created`: missing ones made; `applied`: changes made)."""
    wanted_new = {spec.name for spec in plan.create}
    topics = []
    for name in names:
        changes = plan.changes_of(name)
        topics.append(TopicReport(
            name, created=created and name in wanted_new, missing=not created and name in wanted_new,
            changed=changes if applied else (), differs=() if applied else changes,
            unappliable=plan.unappliable_of(name),
        ))
    return TopicsReport(tuple(topics), plan)
