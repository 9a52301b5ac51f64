"""The error codes users see are exactly the ones docs/bad-input.md documents."""
import re
from pathlib import Path

from services.common.errors import ErrorCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    table = DOC.read_text().split("## Error codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))
    assert documented == {code.value for code in ErrorCode}
