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
                {"name": "osdn"},  # no s_max: the memory diverges (status "diverged")
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
    assert "R1" in captured[1].axes[0].get_title() and "(r1)" in captured[1].axes[0].get_title()
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


# ---------------------------------------------------------------------------------------------------------
# file names, layout, every method, metric names, diverged runs, mixed metric settings


class _Saved:
    """Record the keyword arguments of every ``Figure.savefig`` and keep the figures open to inspect them."""

    def __init__(self, monkeypatch):
        import matplotlib.figure
        import matplotlib.pyplot as plt

        self.calls, self.figs = [], []
        real = matplotlib.figure.Figure.savefig

        def savefig(fig, path, **kw):
            self.calls.append(kw)
            self.figs.append(fig)
            return real(fig, path, **kw)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
        monkeypatch.setattr(plt, "close", lambda fig=None: None)


def test_every_figure_is_saved_tight_with_readable_text(sweep_dir, monkeypatch):
    saved = _Saved(monkeypatch)
    paths = plots.plot_sweep(sweep_dir)
    assert len(saved.calls) == len(paths) >= 4
    assert all(kw.get("bbox_inches") == "tight" for kw in saved.calls)
    for fig in saved.figs:
        ax = fig.axes[0]
        leg = ax.get_legend()
        if leg is not None:
            assert min(t.get_fontsize() for t in leg.get_texts()) >= 7
        assert min((t.get_fontsize() for t in ax.get_yticklabels()), default=7) >= 7


def test_calibration_profile_shows_every_method_unless_asked_for_the_best_member(sweep_dir, monkeypatch):
    df = plots.load_results(sweep_dir)
    sl = df["stream_label"].iloc[0]
    saved = _Saved(monkeypatch)
    plots.plot_calibration_profile(df, sl, sweep_dir / "every.png", before=4)
    plots.plot_calibration_profile(df, sl, sweep_dir / "best.png", before=4, best_member=True)
    every, best = (len(f.axes[0].get_legend().get_texts()) for f in saved.figs)
    assert every == df["method_label"].nunique() == 9
    families = {plots._family(m) for m in df["method_cfg"]}
    assert best == len(families) < every
    assert "every method" in saved.figs[0].axes[0].get_title()
    assert "best member" in saved.figs[1].axes[0].get_title()


def test_metric_name_in_title_and_axis(sweep_dir, monkeypatch):
    df = plots.load_results(sweep_dir)
    sl = df["stream_label"].iloc[0]
    saved = _Saved(monkeypatch)
    plots.plot_r1_bars(df, sl, sweep_dir / "r2.png", metric="r2")
    plots.plot_r1_bars(df, sl, sweep_dir / "cal.png", metric="cal_late")
    (a, b) = (f.axes[0] for f in saved.figs)
    assert a.get_title().startswith("R2 token-local write ratio (r2)") and "R1" not in a.get_xlabel()
    assert b.get_title().startswith("late calibration loss") and "R1" not in b.get_xlabel()


def test_diverged_runs_are_marked(sweep_dir, monkeypatch):
    df = plots.load_results(sweep_dir)
    assert set(df["status"]) == {"ok", "diverged"}
    assert (df.loc[df["status"] == "diverged", "method_label"] == "osdn[ratio]").all()
    assert "diverged" not in set(plots.load_results(sweep_dir, include_diverged=False)["status"])
    sl = df["stream_label"].iloc[0]
    saved = _Saved(monkeypatch)
    plots.plot_r1_bars(df, sl, sweep_dir / "r1.png")
    plots.plot_calibration_profile(df, sl, sweep_dir / "cal.png", before=4)
    r1, cal = (f.axes[0] for f in saved.figs)
    assert any("osdn[ratio]" in t.get_text() and "diverged 2/2" in t.get_text() for t in r1.get_yticklabels())
    assert "memory diverged (R1 > 1e+06)" in r1.get_title()
    # the diverged runs' R1 (> 1e6) does not stretch the axis of the others
    assert r1.get_xlim()[1] < 10
    assert any("memory diverged in 2/2 runs" in t.get_text() for t in cal.get_legend().get_texts())


def _long_label_sweep(out):
    long = {"condition": 10.5, "noise": 0.11, "key_scale": 1.01, "beta": 0.91}
    st = {"family": "piecewise", "T": 96, "K": 4, "V": 2, "condition": 10.0, "noise": 0.1}
    spec = parse_spec(
        {
            "name": "long",
            "seeds": [0],
            "metrics": {"window": 8, "profile_before": 4, "profile_after": 16},
            # the third stream makes the long fields vary, so they are part of every stream label
            "stream": [
                dict(st, segment_len=32, **long),
                dict(st, segment_len=48, **long),
                dict(st, segment_len=32),
            ],
            "method": [{"name": "deltanet"}, {"name": "token_local"}],
        }
    )
    run_sweep(spec, out, executor="serial", progress=False)


def test_figure_names_are_unique_when_cut(tmp_path):
    """Stream labels that differ only past the file-name cut (here segment_len) give two files, not one."""
    _long_label_sweep(tmp_path)
    paths = plots.plot_sweep(tmp_path)
    assert len(paths) == len(set(paths)) == 6
    assert len(list((tmp_path / "figures").glob("*.png"))) == 6
    labels = [x for x in plots.load_results(tmp_path)["stream_label"].unique() if "beta=0.91" in x]
    assert len(labels) == 2 and labels[0][:80] == labels[1][:80]
    assert plots._slug(labels[0]) != plots._slug(labels[1])
    assert all(len(plots._slug(x)) <= 80 for x in labels)
    assert plots._slug("short(T=1)") == "short_T=1"  # uncut names keep their plain form


def test_mixed_metric_settings_are_plotted_apart(tmp_path):
    from osdn_theory.sweeps.runner import run_sweep as rs

    raw = {
        "name": "m",
        "seeds": [0, 1],
        "stream": [{"family": "piecewise", "T": 96, "K": 4, "V": 2, "segment_len": 32}],
        "method": [
            {
                "name": "osdn",
                "step": {"name": "normalized", "c": 0.3},
                "s_max": 1.5,
                "apf": {"prior": JAC, "rate": {"name": "constant_forgetting", "lam": 0.1}},
                "grid": {"apf.rate.lam": [0.1, 0.5]},
            }
        ],
    }
    for tol in (0.25, 0.5):
        metrics = {"window": 8, "profile_before": 4, "profile_after": 16, "recovery_tol": tol}
        rs(
            parse_spec(dict(raw, metrics=metrics)),
            tmp_path,
            executor="serial",
            progress=False,
            append_different_spec=True,
        )
    df = plots.load_results(tmp_path)
    assert sorted(df["settings_label"].unique()) == ["recovery_tol=0.25", "recovery_tol=0.5"]
    paths = plots.plot_sweep(tmp_path)
    assert {p.parent.name for p in paths} == {"recovery_tol=0.25", "recovery_tol=0.5"}
    sl = df["stream_label"].iloc[0]
    with pytest.raises(ValueError, match="one metric setting"):
        plots.plot_recovery_heatmap(df, sl, "method.apf.rate.name", "constant_forgetting", tmp_path / "x.png")
    one = df[df["settings_label"] == "recovery_tol=0.5"]
    # each setting's heat map averages its own 2 seeds per cell, never 4
    assert (one.groupby("method.apf.rate.lam")["seed"].count() == 2).all()


def test_configurations_the_labels_cannot_tell_apart_are_refused(tmp_path):
    import json

    from osdn_theory.sweeps.spec import config_hash

    spec = parse_spec(
        {
            "name": "c",
            "seeds": [0],
            "metrics": {"window": 8, "profile_before": 4, "profile_after": 16},
            "stream": [{"family": "piecewise", "T": 96, "K": 4, "V": 2, "segment_len": 32}],
            "method": [{"name": "osdn", "s_max": 1.5, "apf": {"prior": {"name": "ones"}}}],
        }
    )
    run_sweep(spec, tmp_path, executor="serial", progress=False)
    rec = json.loads((tmp_path / "results.jsonl").read_text())
    # the same label (no forgetting: the prior is not shown), another configuration
    rec["config"]["method"]["apf"]["prior"] = {"name": "calibrated_scalar", "ema": 0.9}
    rec["hash"] = config_hash(rec["config"])
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="same figure labels"):
        plots.load_results(tmp_path)
