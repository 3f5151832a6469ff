"""The pure parts of `make bench`'s scale section: the memory summary it closes with."""

from __future__ import annotations

from bench_scale import RSS_TARGET_MIB, memory_summary


def test_the_summary_gives_the_rss_at_each_size_and_the_imports_share() -> None:
    rows = [(90, {"rss_mib": 120.4}), (990, {"rss_mib": 146.4})]
    summary = memory_summary(rows, 82.0)
    assert summary == (
        "100 studies 120 MiB, 1,000 studies 146 MiB; imports 82 MiB = 56% of it; "
        f"target < {RSS_TARGET_MIB} MiB at 1,000: met"
    )


def test_the_target_is_met_only_at_1000_studies_and_below_150_mib() -> None:
    assert memory_summary([(990, {"rss_mib": 151.0})], 82.0).endswith("not met")
    assert memory_summary([(90, {"rss_mib": 120.0})], 82.0).endswith("not met")
