import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lossweighting_helpers import Identity  # noqa: E402


@pytest.fixture
def identity():
    return Identity()
