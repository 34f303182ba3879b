"""`python -m taylorcli.bench`: its figures exist, and XLA's FLOPs respect the Taylor-mode bound."""

import json

from taylorcli import bench
from taylorcli.costs import compiled_flops


def test_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--arch", "cnn", "--width", "4", "--batch", "4", "--image", "12", "--orders", "1,2",
                "--repeats", "1", "--no-memory", "--json", str(out)])
    fig = json.loads(out.read_text())
    assert set(fig["speedup_vs_nested"]) == {"1", "2"}
    assert all(v > 0 for v in fig["speedup_vs_nested"].values())
    assert 0 < fig["lockstep_vs_separate"] < 2
    assert 0 < fig["data_share"] < 1 and fig["images_per_s"] > 0
    # Compiled FLOPs of each order's step within 1.25x of (2k+1 forward + 3k-1 backward) / 3 full steps.
    assert all(0 < v <= 1.25 for v in fig["flops_vs_bound"].values()), fig["flops_vs_bound"]


def test_taylor_mode_needs_fewer_flops_than_nested_jvps_at_order_3():
    b = bench.Bench(bench.Setting("cnn", 4, 8, 1, 8, 16, (3,)), repeats=1)
    fast = compiled_flops(b.compiled(b.engine_for(["order3"]))[0])
    nested = compiled_flops(b.compiled(b.engine_for(["order3"], nested=True))[0])
    assert fast < 0.8 * nested, (fast, nested)


def test_union_of_intervals():
    from taylorcli.step_profile import _busy
    assert _busy([]) == 0
    assert _busy([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    assert _busy([(4, 9), (0, 1), (2, 3)]) == 7


def test_profile_breaks_each_step_down(tmp_path):
    s = bench.Setting("cnn", 2, 4, 1, 4, 12, (2,))
    rows = bench.profile_setting(s, tmp_path)
    assert set(rows) == {"order 2 taylorize", "order 2 nested"}
    for row in rows.values():
        traced = sum(row[name] for name, _ in bench.KINDS)
        assert row["wall_ms"] > 0 and traced > 0
        assert all(v >= 0 for v in row.values())
        assert row["untraced"] <= row["wall_ms"]
    assert list(tmp_path.rglob("*.trace.json.gz"))
