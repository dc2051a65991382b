"""benchmarks/speed.py's summary: medians over rounds and round-by-round ratios."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speed import paired_ratios, table  # noqa: E402


def test_ratios_pair_each_round_with_the_reference_of_that_round():
    # throughput: ours over the reference's; seconds and memory: the reference's over ours
    assert paired_ratios("batch 1 images/s", [9.0, 13.0, 10.0], [10.0, 13.0, 8.0]) == [
        0.9,
        1.0,
        1.25,
    ]
    assert paired_ratios("peak memory MiB", [1250.0, 1000.0], [1000.0, 1000.0]) == [0.8, 1.0]
    assert paired_ratios("first load s", [2.0], [1.0]) == [0.5]


def test_ratios_refuse_rounds_that_do_not_pair():
    with pytest.raises(ValueError, match="2 rounds against the reference's 3"):
        paired_ratios("batch 1 images/s", [1.0, 2.0], [1.0, 2.0, 3.0])


def test_table_gives_medians_and_the_median_ratio_with_its_range():
    results = {
        ("image RN50", "batch 1 images/s"): {
            "torch": [10.0, 12.0, 8.0],
            "mindspore-jit": [9.0, 13.0, 10.0],
        },
        ("load", "first load s"): {"torch": [1.0, 3.0], "mindspore": [2.0, 1.0]},
    }
    rows = table(results).splitlines()
    # medians 10 and 10; ratios 0.90, 1.08 and 1.25
    assert rows[2] == "| image RN50 batch 1 images/s | 10 |  |  | 10 | 1.08x (0.90-1.25) |"
    # the ratios 0.5 and 3.0 pair rounds; their median is their mean, 1.75
    assert rows[3] == "| load first load s | 2 | 1.5 | 1.75x (0.50-3.00) |  |  |"
