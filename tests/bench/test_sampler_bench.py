"""The sampler benchmark's table: a row a vocabulary and spread, a positive time a column."""

from __future__ import annotations

from bench import sampler_bench


def test_the_table_times_every_setting_and_both_old_steps() -> None:
    lines = sampler_bench.table(repeats=2, vocabularies=(1000,))
    header, _, *rows = lines
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[2:] == [*sampler_bench.PARAMS, "Exp(1) draws", "sort"]
    assert [r.split("|")[2].strip() for r in rows] == list(sampler_bench.SPREADS)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == "1,000"
        assert all(float(c) > 0 for c in cells[2:])
