"""The README's metrics table is the operators' reference: it names every metric the code declares, with its labels."""
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from services.common import metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def _declared() -> dict[str, tuple[str, ...]]:
    """Exposed name -> label names of every metric in services/common/metrics.py."""
    declared = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # _labelnames: prometheus_client has no public accessor for a parent metric's label names.
            suffix = "_total" if value._type == "counter" else ""
            declared[value._name + suffix] = tuple(value._labelnames)
    return declared


def _documented() -> dict[str, tuple[str, ...]]:
    """Name -> labels from the README rows `| `name`[, `name`] | labels | what |`."""
    documented = {}
    for names, labels in re.findall(r"^\| (`thumbs_[^|]*?) \| ([^|]*?) \|", README.read_text(), re.MULTILINE):
        listed = tuple(label.strip() for label in labels.split(",") if label.strip() not in ("", "—"))
        for name in re.findall(r"`(thumbs_\w+)`", names):
            documented[name] = listed
    return documented


def test_readme_lists_every_metric_with_its_labels() -> None:
    declared = _declared()
    assert len(declared) >= 15  # the module's metrics were found at all
    assert _documented() == declared
