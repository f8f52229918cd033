"""The load benchmark's report of one client's decoding against the memory's read rate."""

from __future__ import annotations

from bench.load_bench import Sample, memory_lines


def test_each_rounds_streams_are_set_against_the_memory_measured_around_them() -> None:
    samples = {"ours": [Sample(single_tok_s=50.0, single_memory_gbs=40.0),
                        Sample(single_tok_s=30.0, single_memory_gbs=None)],
               "anchor": [Sample(single_tok_s=25.0, single_memory_gbs=32.0),
                          Sample(single_tok_s=20.0, single_memory_gbs=30.0)]}
    rows = [line for line in memory_lines(0.7, samples) if line.startswith("| ")][1:]
    # 50 tok/s x 0.7 GB = 35 GB/s of the 40 measured (88%); 40 GB/s allowed 57.1 tok/s
    assert rows == ["| 1 | ours | 50.0 | 40.0 | 35.0 | 88% | 57.1 |",
                    "| 1 | anchor | 25.0 | 32.0 | 17.5 | 55% | 45.7 |",
                    "| 2 | anchor | 20.0 | 30.0 | 14.0 | 47% | 42.9 |"]


def test_one_measured_round_is_reported_and_none_is_not() -> None:
    one = memory_lines(0.5, {"ours": [Sample(single_tok_s=40.0, single_memory_gbs=25.0)]})
    assert one[-1] == "| 1 | ours | 40.0 | 25.0 | 20.0 | 80% | 50.0 |"
    assert memory_lines(0.7, {"ours": [Sample(single_tok_s=50.0)]}) == []
