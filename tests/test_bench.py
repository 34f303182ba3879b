"""`python -m taylorcli.bench`: its figures, and XLA's FLOPs against the truncation plan's count."""

import json

import pytest

from taylorcli.bench import benchmark as bench
from taylorcli.engine.costs import compiled_flops


@pytest.mark.slow
def test_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--arch", "cnn", "--width", "8", "--batch", "4", "--image", "12", "--orders",
                "1,2,3,4", "--repeats", "1", "--compile-rounds", "1", "--no-memory", "--no-nested",
                "--json", str(out)])
    fig = json.loads(out.read_text())
    assert set(fig["count"]) == {"1", "2", "3", "4"}
    # What XLA compiled is what the truncation plan counts (elementwise work on top: at this
    # small width a few percent), and at orders 3-4 far below the untruncated series.
    for k, count in fig["count"].items():
        assert 0.95 * count <= fig["flops_vs_full"][k] <= 1.2 * count, (k, count, fig)
    assert fig["flops_vs_full"]["4"] < 0.5 * 5 * 4 / 3
    # In lockstep the orders share their primal passes at θ0.
    assert fig["lockstep_flops_vs_full"] < fig["separate_flops_vs_full"]


@pytest.mark.slow
def test_bench_transformer_compile_and_program_size(tmp_path):
    # The transformer setting: per order its program size, tracing and compile time beside the
    # full step's, and a taylor.py to compare with (here this one: the same program).
    from taylorcli import taylor

    out = tmp_path / "bench.json"
    bench.main(["--arch", "vit", "--vit-width", "8", "--vit-depth", "1", "--vit-batch", "4",
                "--vit-image", "8",
                "--orders", "2", "--repeats", "1", "--compile-rounds", "1", "--no-memory",
                "--no-first-step", "--compare-taylor", taylor.__file__, "--json", str(out)])
    label = bench.Setting("vit", 1, 8, 2, 4, 8, (2,), channels=1, pad=2).label()
    fig = json.loads(out.read_text())["per_setting"][label]
    assert fig["full"]["hlo_ops"] > 0 and fig["full"]["compile_s"] > 0
    order2 = fig["order2"]
    assert 1 < order2["taylorize"]["flops_vs_full"] < order2["nested"]["flops_vs_full"]
    assert order2["compare"]["hlo_vs_full"] == order2["taylorize"]["hlo_vs_full"]
    for key in ("hlo_vs_full", "trace_vs_full", "compile_vs_full", "time_vs_flops"):
        assert order2["taylorize"][key] > 0, key


@pytest.mark.slow
def test_transformer_first_step_in_a_fresh_process():
    f = bench.first_step_cold(bench.Setting("vit", 1, 8, 2, 4, 8, (1,), channels=1, pad=2))
    parts = ("imports_s", "setup_s", "trace_s", "compile_s", "run_s")
    assert all(f[k] > 0 for k in parts) and f["total_s"] >= sum(f[k] for k in parts)


@pytest.mark.slow
def test_taylor_mode_needs_fewer_flops_than_nested_jvps_at_order_3():
    b = bench.Bench(bench.Setting("cnn", 4, 8, 1, 8, 16, (3,)), repeats=1)
    fast = compiled_flops(b.compiled(b.engine_for(["order3"]))[0])
    nested = compiled_flops(b.compiled(b.engine_for(["order3"], nested=True))[0])
    assert fast < 0.8 * nested, (fast, nested)


def test_union_of_intervals():
    from taylorcli.bench.step_profile import _busy
    assert _busy([]) == 0
    assert _busy([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    assert _busy([(4, 9), (0, 1), (2, 3)]) == 7


@pytest.mark.slow
def test_profile_breaks_each_step_down(tmp_path):
    rows = bench.profile_orders(bench.Bench(bench.Setting("cnn", 2, 4, 1, 4, 12, (2,)), 1), tmp_path)
    assert set(rows) == {"order 2 taylorize", "order 2 nested"}
    for row in rows.values():
        # Every step runs convolutions and the elementwise work around them, and the traced
        # ops cannot take longer than the two steps' wall time (2 cores: at most twice it).
        assert row["conv/dot"] > 0 and row["other"] > 0
        assert sum(row[k] for k in bench.KINDS) <= 2 * row["wall_ms"]
    assert len(list(tmp_path.rglob("*.trace.json.gz"))) == 2


# Instructions as XLA CPU prints them in a compiled Taylor-mode step (operands shortened).
HLO = """
  %ynn_fusion.2 = f32[64,3,3,64]{3,2,1,0} fusion(%transpose_copy_fusion.5, %p), kind=kCustom, calls=%fused_computation.2, metadata={op_name="jit(step)/transpose(jvp(vmap()))/conv_general_dilated" stack_frame_id=109}, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %ynn_fusion.13 = f32[32,64]{1,0} fusion(%constant.210, %broadcast_add_fusion.10), kind=kCustom, calls=%fused_computation.13, metadata={op_name="jit(step)/jvp()/reduce_sum" stack_frame_id=29}, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %conv_general_dilated.248 = f32[32,30,30,64]{3,2,1,0} convolution(%a, %b), window={size=3x3}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(step)/conv1/conv_general_dilated"}
  %transpose_copy_fusion.2 = f32[24,24,128,64]{3,2,1,0} fusion(%slice_pad_fusion, %ynn_fusion.7, %conv_general_dilated.29), kind=kLoop, calls=%fused_computation.55
  %concatenate_bitcast_fusion.2 = f32[128,26,26,64]{3,2,1,0} fusion(%bitcast_pad_fusion, %conv_general_dilated.28), kind=kLoop, calls=%fused_computation.101, metadata={op_name="jit(step)/jvp()/concatenate" stack_frame_id=114}
  %bitcast_pad_fusion.1 = f32[3,32,26,26,64]{4,3,2,1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fused_computation.9, metadata={op_name="jit(step)/jvp(jit(_pad))/pad"}
  %select_bitcast_fusion.4 = f32[64,28,28,64]{3,2,1,0} fusion(%dot.1, %x), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(step)/jvp(jit(_where))/select_n"}
  ROOT %tuple.9 = (f32[2]{0}, s32[]) tuple(%a, %b)
  %custom-call.1 = f32[8,8]{1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm"
"""


def test_ops_classified_by_their_own_opcode_not_their_operands():
    from taylorcli.bench.step_profile import _parse, kind_of
    ops = _parse(HLO)
    kinds = {name: kind_of(name, *ops[name]) for name in ops}
    assert kinds == {
        "ynn_fusion.2": "conv/dot", "ynn_fusion.13": "other",
        "conv_general_dilated.248": "conv/dot", "transpose_copy_fusion.2": "transpose/copy",
        "concatenate_bitcast_fusion.2": "pad/concat/slice", "bitcast_pad_fusion.1": "pad/concat/slice",
        "select_bitcast_fusion.4": "other", "tuple.9": "other", "custom-call.1": "conv/dot",
    }
