"""lt.analyze: scores, sensitivity, per-layer SQNR, histograms and weight ranges against direct computations;
the HTML report is self-contained and renders in a real headless Chromium."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.analysis.html import png_size

from .conftest import assert_unchanged, state_snapshot


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.relu(self.conv(x)), 1))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TwoLayer().eval()
    data = [torch.randn(16, 3, 8, 8) for _ in range(3)]
    sim = lt.QuantSim(model, data[0][:1], param_bw=3, act_bw=3, scheme="minmax")
    sim.compute_encodings(data, progress=False)
    x = torch.cat(data)

    def eval_fn(m: nn.Module) -> float:
        with torch.no_grad():
            return -float((m(x) - model(x)).pow(2).mean())  # negative MSE against FP32

    return model, data, sim, eval_fn


def enabled_states(sim: lt.QuantSim) -> dict[str, bool]:
    return {n: q.enabled for n, q in sim.quantizers().items()}


def test_scores_and_sensitivity_match_the_public_switches(setup) -> None:
    model, data, sim, eval_fn = setup
    before = enabled_states(sim)
    report = lt.analyze(sim, eval_fn, data, progress=False)
    assert enabled_states(sim) == before  # nothing left switched
    assert report.scores["fp32"] == 0.0
    assert report.scores["quantized"] == pytest.approx(eval_fn(sim.model))
    sim.set_activation_quantization(False)
    assert report.scores["weights only"] == pytest.approx(eval_fn(sim.model))
    sim.set_activation_quantization(True)
    sim.set_param_quantization(False)
    assert report.scores["activations only"] == pytest.approx(eval_fn(sim.model))
    sim.set_param_quantization(True)
    rows = {r["layer"]: r for r in report.sensitivity}
    assert set(rows) == {"input_quantizers", "conv", "relu", "head"}
    # "only the head quantized", computed with the public per-layer switches instead.
    others = ["conv", "relu"]
    sim.set_param_quantization(False, layers=others)
    sim.set_activation_quantization(False)  # also the model-input quantizers
    sim.set_activation_quantization(True, layers=["head"])
    assert rows["head"]["only this layer quantized"] == pytest.approx(eval_fn(sim.model))
    assert all(r["only this layer quantized"] >= report.scores["quantized"] - 1e-12 for r in rows.values())


def test_last_layer_sqnr_equals_output_sqnr_and_histograms_count_every_value(setup) -> None:
    model, data, sim, eval_fn = setup
    report = lt.analyze(sim, eval_fn, data, sensitivity=False, progress=False)
    assert report.sensitivity == []
    x = torch.cat(data)
    with torch.no_grad():
        expected = lt.metrics.sqnr_db(model(x), sim.model(x))
    assert report.layer_sqnr["head"] == pytest.approx(expected, rel=1e-6)
    assert report.layer_sqnr["head"] < report.layer_sqnr["conv"] + 1.0  # noise accumulates with depth
    stats = report.activations["relu.output_quantizers.0"]
    assert sum(stats.counts) == x.numel() // 3 * 6  # every value the quantizer saw, binned once
    enc = sim.quantizers()["relu.output_quantizers.0"].encoding
    assert stats.encoding_max == pytest.approx(float(enc.max)) and stats.min >= 0.0
    assert stats.edges[0] <= stats.min and stats.edges[-1] >= stats.max


def test_weight_ranges_per_output_channel() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ConvTranspose2d(4, 3, 2), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 2, 6, 6))
    ranges = lt.analysis.weight_ranges(model)
    w = model[0].weight.detach()
    assert ranges["0"].max == pytest.approx(w.reshape(4, -1).amax(1).tolist())
    assert ranges["0"].mean == pytest.approx(w.reshape(4, -1).mean(1).tolist())
    assert len(ranges["1"].min) == 3  # ConvTranspose: output channels are dim 1 of its weight
    sim = lt.QuantSim(model, torch.randn(1, 2, 6, 6))
    assert lt.analysis.weight_ranges(sim.model)["0"].max == ranges["0"].max


def test_bad_eval_fn_and_uncalibrated_sim_give_clear_errors(setup) -> None:
    model, data, sim, _ = setup
    before = enabled_states(sim)

    def broken(m: nn.Module) -> float:
        raise RuntimeError("dataset missing")

    with pytest.raises(lt.EvalFunctionError, match="eval_fn raised RuntimeError"):
        lt.analyze(sim, broken, data, progress=False)
    with pytest.raises(lt.EvalFunctionError, match="eval_fn must return a finite number"):
        lt.analyze(sim, lambda m: "high", data, progress=False)
    assert enabled_states(sim) == before
    fresh = lt.QuantSim(model, data[0][:1])
    with pytest.raises(lt.EncodingsMissingError, match="compute_encodings"):
        lt.analyze(fresh, lambda m: 1.0, data, progress=False)


def test_bad_layers_data_and_options_are_refused_before_eval_fn_runs(setup) -> None:
    model, data, sim, _ = setup
    before, states = state_snapshot(sim.model), enabled_states(sim)
    calls = []

    def counting(m: nn.Module) -> float:
        calls.append(1)
        return 1.0

    with pytest.raises(
        lt.UnknownLayerError,
        match=r"layers=\['nope'\].*valid names \(4\): input_quantizers, conv, "
        r"relu, head",
    ):
        lt.analyze(sim, counting, data, layers=["conv", "nope"], progress=False)
    bad = [d.clone() for d in data]
    bad[2][0, 0, 0, 0] = float("inf")
    with pytest.raises(lt.CalibrationDataError, match="calibration batch 2, input 0"):
        lt.analyze(sim, counting, bad, progress=False)
    for empty in ([], None, data[0]):
        with pytest.raises(lt.CalibrationDataError, match="lt.analyze needs"):
            lt.analyze(sim, counting, empty, progress=False)
    with pytest.raises(lt.InvalidOptionError, match="bins=0"):
        lt.analyze(sim, counting, data, bins=0, progress=False)
    with pytest.raises(lt.InvalidOptionError, match="num_batches=0"):
        lt.analyze(sim, counting, data, num_batches=0, progress=False)
    with pytest.raises(lt.CalibrationDataError, match=r"calibration batch 1 is a dict with keys \['x'\]"):
        lt.analyze(sim, counting, [data[0], {"x": data[1]}], progress=False)
    with pytest.raises(lt.InvalidOptionError, match="layers=7: pass a layer name or a list of layer names"):
        lt.analyze(sim, counting, data, layers=7, progress=False)
    assert not calls
    with pytest.raises(lt.CalibrationDataError, match="fails on calibration batch 1"):
        lt.analyze(sim, counting, [data[0], torch.randn(2, 4, 8, 8)], sensitivity=False, progress=False)
    assert enabled_states(sim) == states
    assert_unchanged(sim.model, before)


def test_one_layer_name_as_a_string_is_that_layer(setup) -> None:
    _, data, sim, eval_fn = setup
    # A string was once iterated letter by letter ("no layer 'h', 'e', ...").
    as_string = lt.analyze(sim, eval_fn, data, layers="head", progress=False)
    as_list = lt.analyze(sim, eval_fn, data, layers=["head"], progress=False)
    assert [row["layer"] for row in as_string.sensitivity] == ["head"]
    assert as_string.sensitivity == as_list.sensitivity


def test_nan_scores_name_the_model_that_was_scored(setup) -> None:
    _, data, sim, eval_fn = setup
    states = enabled_states(sim)
    with pytest.raises(lt.EvalFunctionError, match=r"got nan on the FP32 model.*NaN model outputs"):
        lt.analyze(sim, lambda m: float("nan"), data, progress=False)
    scores = iter([1.0, 0.9, 0.95, 0.92, 0.9, float("nan")])
    with pytest.raises(lt.EvalFunctionError, match="got nan on the model with all but input_quantizers quantized"):
        lt.analyze(sim, lambda m: next(scores), data, progress=False)
    assert enabled_states(sim) == states


def test_add_equalization_names_unknown_layers(setup) -> None:
    model, data, sim, eval_fn = setup
    report = lt.analyze(sim, eval_fn, data, sensitivity=False, progress=False)
    with pytest.raises(lt.UnknownLayerError, match=r"layers=\['relu'\].*valid names \(2\): conv, head"):
        report.add_equalization(model, model, layers=["conv", "relu"])
    assert report.equalization == []


@pytest.fixture
def report_file(setup, tmp_path):
    model, data, sim, eval_fn = setup
    report = lt.analyze(sim, eval_fn, data, progress=False)
    report.add_equalization(model, model, layers=["conv"])
    return report, report.to_html(tmp_path / "report.html")


def test_html_is_one_self_contained_file_and_plots_are_pngs(report_file, tmp_path) -> None:
    report, path = report_file
    text = path.read_text()
    sources = re.findall(r"src='([^']*)'", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.index("Summary") < text.index("Per-layer sensitivity") < text.index("Per-layer output SQNR")
    paths = report.save_plots(tmp_path / "plots")
    assert len(paths) == len(sources)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and min(png_size(p.read_bytes())) > 50


def test_report_output_paths_that_cannot_be_written_are_named(report_file, tmp_path) -> None:
    report, _ = report_file
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for path, message in [
        (tmp_path / "a_dir", "a_dir is a directory: give a file path"),
        (a_file / "report.html", "taken.txt is a file, so report.html cannot be created in it"),
        (a_file / "sub" / "report.html", "taken.txt is a file, so no directory can be made there"),
    ]:
        with pytest.raises(lt.OutputPathError, match=message):
            report.to_html(path)
    with pytest.raises(lt.InvalidOptionError, match="path=None: pass a path"):
        report.to_html(None)
    with pytest.raises(lt.OutputPathError, match="taken.txt is an existing file, not a directory"):
        report.save_plots(a_file)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and a_file.read_text() == "keep me"
    assert report.to_html(tmp_path / "new" / "r.html").read_text().startswith("<!")  # a new directory is fine


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (`make test` installs it with "
    "apt-get where it can): the browser check of the report is skipped",
)
def test_report_renders_in_headless_chromium(report_file, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    _, path = report_file
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri(), wait_until="load")
        sizes = page.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
            "i.getBoundingClientRect().width, i.getBoundingClientRect().height])"
        )
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert errors == []
    assert sizes and all(done and natural > 0 and w > 0 and h > 0 for done, natural, w, h in sizes)


def test_labelled_and_grouped_batches_are_analysed_like_plain_ones(setup) -> None:
    _, data, sim, eval_fn = setup
    plain = lt.analyze(sim, eval_fn, data, sensitivity=False, progress=False)
    labels = torch.zeros(16, dtype=torch.long)
    for batches in ([(x, labels) for x in data], [((x,), labels) for x in data]):
        report = lt.analyze(sim, eval_fn, batches, sensitivity=False, progress=False)
        assert report.layer_sqnr == plain.layer_sqnr
