"""cli: the helpers every script shares."""
import pytest

import cli


@pytest.mark.parametrize("count, expected", [(0, "0 batches"), (1, "1 batch"), (2, "2 batches")])
def test_counted_takes_the_singular_for_one(count, expected):
    assert cli.counted(count, "batch", "batches") == expected
    assert cli.counted(count, "trade") == expected.replace("batches", "trades").replace("batch", "trade")
