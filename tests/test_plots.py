"""``osdn plot``: standard figures of a sweep folder (Agg backend), with labelled axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from osdn_theory import plots  # noqa: E402
from osdn_theory.sweeps.runner import run_sweep  # noqa: E402
from osdn_theory.sweeps.spec import parse_spec  # noqa: E402

JAC = {"name": "running_jacobi", "c": 1 / 6, "ema": 0.9}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    base = {"name": "osdn", "step": {"name": "normalized", "c": 0.3}, "s_max": 1.5}
    spec = parse_spec(
        {
            "name": "plot",
            "seeds": [0, 1],
            "metrics": {"window": 8, "profile_before": 4, "profile_after": 16},
            "stream": [{"family": "piecewise", "T": 96, "K": 4, "V": 2, "segment_len": 32}],
            "method": [
                {"name": "deltanet"},
                {"name": "token_local"},
                dict(
                    base,
                    apf={"prior": JAC, "rate": {"name": "constant_forgetting", "lam": 0.1}},
                    grid={"apf.rate.lam": [0.1, 0.5], "step.c": [0.3, 0.6]},
                ),
                dict(
                    base,
                    apf={
                        "prior": JAC,
                        "rate": {"name": "spike_trigger", "fast": 0.5, "slow": 0.9, "tau": 2.0},
                    },
                    grid={"apf.rate.tau": [1.5, 3.0]},
                ),
            ],
        }
    )
    run_sweep(spec, out, executor="serial", progress=False)
    return out


def test_plot_sweep_writes_the_standard_figures(sweep_dir):
    paths = plots.plot_sweep(sweep_dir)
    names = sorted(p.name for p in paths)
    assert any(n.startswith("calibration_profile_piecewise") for n in names)
    assert any(n.startswith("recovery_heatmap_piecewise") and "constant_forgetting" in n for n in names)
    assert any(n.startswith("recovery_heatmap_piecewise") and "spike_trigger" in n for n in names)
    assert any(n.startswith("r1_bars_piecewise") for n in names)
    for p in paths:
        assert p.parent == sweep_dir / "figures" and p.stat().st_size > 5000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_have_labelled_axes(sweep_dir, tmp_path):
    import matplotlib.pyplot as plt

    df = plots.load_results(sweep_dir)
    sl = df["stream_label"].iloc[0]
    captured = []
    orig = plt.close
    plt.close = lambda fig=None: captured.append(fig)  # keep the figures to inspect them
    try:
        plots.plot_calibration_profile(df, sl, tmp_path / "a.png", before=4)
        plots.plot_r1_bars(df, sl, tmp_path / "b.png")
        plots.plot_recovery_heatmap(df, sl, "method.apf.rate.name", "constant_forgetting", tmp_path / "c.png")
    finally:
        plt.close = orig
    assert len(captured) == 3
    for fig in captured:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert "seed" in ax.get_title()
        plt.close(fig)
    units = [fig.axes[0].get_xlabel() + fig.axes[0].get_ylabel() for fig in captured]
    assert "[dimensionless" in units[0] and "[dimensionless]" in units[1] and "step.c" in units[2]
    # the heat map shows the swept grid (lam × c), not a single cell
    assert len(captured[2].axes[0].get_xticklabels()) * len(captured[2].axes[0].get_yticklabels()) == 4


def test_plot_errors(tmp_path, sweep_dir):
    with pytest.raises(ValueError, match="out"):
        plots.plot_sweep(tmp_path)
    with pytest.raises(ValueError, match="fmt"):
        plots.plot_sweep(sweep_dir, fmt="gif")
    (tmp_path / "results.jsonl").write_text('{"hash": "a", "status": "failed"}\n')
    with pytest.raises(ValueError, match="no successful runs"):
        plots.plot_sweep(tmp_path)


def test_plot_functions_validate_their_inputs(sweep_dir, tmp_path):
    """A wrong stream label or a missing column is an error naming the argument, not an empty figure."""
    df = plots.load_results(sweep_dir)
    sl = df["stream_label"].iloc[0]
    with pytest.raises(ValueError, match="stream_label: plot_r1_bars expected one of"):
        plots.plot_r1_bars(df, "nosuch(T=1)", tmp_path / "x.png")
    with pytest.raises(ValueError, match="df: plot_r1_bars .*'r9'"):
        plots.plot_r1_bars(df, sl, tmp_path / "x.png", metric="r9")
    with pytest.raises(ValueError, match="stream_label"):
        plots.plot_calibration_profile(df, "nosuch", tmp_path / "x.png")
    with pytest.raises(ValueError, match="smooth"):
        plots.plot_calibration_profile(df, sl, tmp_path / "x.png", smooth=0)
    with pytest.raises(ValueError, match="before"):
        plots.plot_calibration_profile(df, sl, tmp_path / "x.png", before=-1)
    with pytest.raises(ValueError, match="df: plot_recovery_heatmap"):
        plots.plot_recovery_heatmap(df, sl, "method.apf.nosuch", "x", tmp_path / "x.png")
    with pytest.raises(ValueError, match="stream_label"):
        plots.plot_recovery_heatmap(df, "nosuch", "method.apf.rate.name", "x", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_svg_output(sweep_dir):
    paths = plots.plot_sweep(sweep_dir, fmt="svg")
    assert paths and all(p.suffix == ".svg" and p.read_text().lstrip().startswith("<?xml") for p in paths)
