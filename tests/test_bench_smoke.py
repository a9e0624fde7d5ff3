"""`make bench` must keep working: run each benchmark on tiny inputs (results are not judged, only that they run)."""

from __future__ import annotations

from bench.__main__ import bench_core, bench_flush_scaling, bench_processor


def test_each_benchmark_runs_and_reports_what_it_measured() -> None:
    core = bench_core(events=3_000, customers=200, batch=1_000, threads=1)
    assert core["applied"] == 3_000 and core["events_per_second"] > 0
    flush = bench_flush_scaling(state_customers=200, changed=20, threads=1)
    assert flush["changed"] == 20 and flush["median_ms"] > 0
    processor = bench_processor(events=2_000, customers=100, per_message=500)
    assert processor["objects"] > 0 and processor["checkpoints"] == 1
