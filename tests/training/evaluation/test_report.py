"""Report page: the table equals metrics.json, figures exist, provenance shown;
and the three subcommands run end to end through ``hessid`` (upstream defect 3 not copied)."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread

from hessid.cli import main
from hessid.training.evaluation.evaluate import (
    METRIC_NAMES,
    Trajectories,
    evaluate,
    format_value,
    read_metrics,
)
from hessid.training.evaluation.report import build_report, free_energy_2d, plot_phi_psi_panels
from tests.training.evaluation.fixtures import FAST, chain_ensemble, write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TableParser(HTMLParser):
    """Collects ``{(model, metric): (text, data-value, data-sem)}`` from #metrics-table."""

    def __init__(self):
        super().__init__()
        self.cells, self._in_table, self._model, self._cell = {}, False, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "metrics-table":
            self._in_table = True
        elif self._in_table and tag == "tr" and "data-model" in a:
            self._model = a["data-model"]
        elif self._in_table and tag == "td" and "data-metric" in a:
            self._cell = [a["data-metric"], "", a["data-value"], a.get("data-sem")]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            metric, text, value, sem = self._cell
            self.cells[(self._model, metric)] = (text, float(value), None if sem is None else float(sem))
            self._cell = None
        elif tag == "table":
            self._in_table = False


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    ref = Trajectories([chain_ensemble(1500, seed=0), chain_ensemble(1500, seed=1)], 40.0, "toy")
    models = {"FM": [Trajectories([chain_ensemble(500, p_b=0.8, seed=s)], 20.0, f"fm{s}") for s in (2, 3)],
              "FM+AA+Cov": [Trajectories([chain_ensemble(500, seed=4)], 20.0, "cov")]}
    evaluate(ref, models, out, protein="toy", lag_time=800.0, **FAST)
    train = out / "metrics.csv"
    with open(train, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train_loss", "val_loss", "note"])
        for i in range(20):
            w.writerow([10 * i, 1.0 / (i + 1), 1.3 / (i + 1), "x"])
    page = build_report(out, out / "page", training_curves={"FM": train}, provenance={"targets": "k=4"})
    return out, page


def test_report_table_equals_metrics_json(evaluation):
    out, page = evaluation
    parser = TableParser()
    parser.feed(page.read_text(encoding="utf-8"))
    docs = read_metrics(out)
    assert len(parser.cells) == len(docs) * len(METRIC_NAMES)
    for doc in docs:
        sem = doc["sem"] or {}
        for k in METRIC_NAMES:
            text, value, cell_sem = parser.cells[(doc["model"], k)]
            assert value == doc["metrics"][k]  # exact: repr round-trips floats
            assert cell_sem == sem.get(k)
            assert text == format_value(doc["metrics"][k], sem.get(k))
    assert " ± " in parser.cells[("FM", "tic0_kl")][0]  # two seeds → mean ± SE


def test_report_has_figures_and_provenance(evaluation):
    out, page = evaluation
    text = page.read_text(encoding="utf-8")
    for name in ("free_energy_tica.png", "tic_densities.png", "structure.png", "training_curves.png"):
        png = (out / "page" / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
        assert f"src='{name}'" in text
    prov = json.loads((out / "page" / "provenance.json").read_text())
    assert prov["user"] == {"targets": "k=4"} and prov["settings"]["lag_frames"] == 20
    assert prov["versions"]["deeptime"] and prov["training_curves"]["FM"].endswith("metrics.csv")
    assert "Provenance" in text and "kinetic map" in text


def test_free_energy_is_minus_kt_log_density():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4000))
    g = np.linspace(-2, 2, 9)
    f = free_energy_2d(x[0], x[1], g, g, temperature=None)
    # a standard 2-D Gaussian: F(r) − F(0) = r²/2 in k_BT (KDE smoothing widens it by ≈ 1 + f²)
    assert f[4, 4] == pytest.approx(0.0, abs=0.1)
    assert f[8, 4] == pytest.approx(2.0 / (1 + 4000 ** (-1 / 3)), abs=0.3)


GRID_DEG = np.linspace(-165.0, 165.0, 12)  # (12,) φ/ψ bin centres, degrees


def _bowl(centre_deg=(0.0, 0.0)) -> np.ndarray:
    """(12, 12) F kcal/mol indexed [φ, ψ]: 0 at the centre, above 5 kcal/mol in the corners."""
    phi, psi = np.meshgrid(GRID_DEG - centre_deg[0], GRID_DEG - centre_deg[1], indexing="ij")
    return (phi / 60.0) ** 2 + (psi / 60.0) ** 2


def _pixels(tmp_path, name, panels, **kw) -> np.ndarray:
    path = plot_phi_psi_panels(panels, GRID_DEG, tmp_path / f"{name}.png", **kw)
    assert path == tmp_path / f"{name}.png" and path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)


def test_phi_psi_panels_mask_above_the_cap_like_empty_bins(tmp_path):
    f = _bowl()
    assert (f > 5).any() and (f <= 5).any()
    raw = _pixels(tmp_path, "raw", {"AA reference": f, "FM": _bowl((40.0, -30.0))})
    # values above f_max are drawn exactly as NaN (empty) bins: white
    masked = _pixels(tmp_path, "masked", {"AA reference": np.where(f > 5, np.nan, f), "FM": _bowl((40.0, -30.0))})
    np.testing.assert_array_equal(raw, masked)
    # negative control: the same values clipped to the cap are drawn (yellow), so the figure changes
    clipped = _pixels(tmp_path, "clipped", {"AA reference": np.minimum(f, 5.0), "FM": _bowl((40.0, -30.0))})
    assert not np.array_equal(raw, clipped)


def test_phi_psi_panel_above_the_cap_everywhere_draws_nothing(tmp_path):
    high = _pixels(tmp_path, "high", [("ref", _bowl()), ("FM", np.full((12, 12), 9.0))])
    empty = _pixels(tmp_path, "empty", [("ref", _bowl()), ("FM", np.full((12, 12), np.nan))])
    np.testing.assert_array_equal(high, empty)  # no error, an empty panel
    drawn = _pixels(tmp_path, "drawn", [("ref", _bowl()), ("FM", np.full((12, 12), 2.0))])
    assert not np.array_equal(high, drawn)
    # the reference's contours are drawn on the other panels only when asked for
    with_ref = _pixels(tmp_path, "with_ref", [("ref", _bowl()), ("FM", np.full((12, 12), 9.0))],
                       reference_levels=(1, 2, 3, 4))  # fmt: skip
    assert not np.array_equal(high, with_ref)


def test_phi_psi_panels_refuse_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"panels\['FM'\]: shape \(12, 11\), expected \(12, 12\)"):
        plot_phi_psi_panels({"ref": _bowl(), "FM": np.zeros((12, 11))}, GRID_DEG, tmp_path / "x.png")
    with pytest.raises(ValueError, match="grid_deg"):
        plot_phi_psi_panels({"ref": _bowl()}, np.zeros((12, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="panels: no surface"):
        plot_phi_psi_panels({}, GRID_DEG, tmp_path / "x.png")
    with pytest.raises(ValueError, match="reference_levels"):
        plot_phi_psi_panels([("ref", None), ("FM", _bowl())], GRID_DEG, tmp_path / "x.png", reference_levels=(1,))
    assert not (tmp_path / "x.png").exists()
    # a missing (None) surface is allowed: its panel says so
    assert _pixels(tmp_path, "none", [("ref", _bowl()), ("FM", None)], missing_text="nothing").ndim == 3


def test_simulate_evaluate_report_commands_run_end_to_end(tmp_path, capsys):
    write_dataset(tmp_path / "toy.h5", chain_ensemble(1200, seed=5))
    sim = tmp_path / "sim"
    argv = ["simulate", "--model", "harmonic", "--reference", str(tmp_path / "toy.h5"), "--out", str(sim),
            "--steps", "600", "--stride", "20", "--replicas", "3", "--no-progress"]
    assert main(argv) == 0
    assert main([*argv[:-1], "--resume", "--no-progress"]) == 0  # already complete: a no-op
    ev = tmp_path / "ev"
    assert main(["evaluate", "--reference", str(tmp_path / "toy.h5"), "--model", f"harmonic={sim}",
                 "--out", str(ev), "--lag-time", "400", "--max-kde-points", "500",
                 "--max-eval-points", "500"]) == 0
    doc = read_metrics(ev)[0]
    assert doc["settings"]["lag_frames"] == 10 and doc["runs"][0]["n_replicas_used"] == 3
    assert doc["runs"][0]["n_frames_used"] == 3 * (30 - 3)
    assert all(np.isfinite(doc["metrics"][k]) for k in METRIC_NAMES)
    assert main(["report", str(ev), "--temperature", "300"]) == 0
    assert "report:" in capsys.readouterr().out and (ev / "report.html").exists()
