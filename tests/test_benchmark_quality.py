"""Benchmark suites at tiny sizes (every suite, through the CLI) and the quality suite's
equal-wall-time machinery: variants, schedule sized in steps, table and figures."""
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image
import typer
from typer.testing import CliRunner

from xray2ct.cli import app
from xray2ct.config import load_config
from xray2ct.data.prepare import make_phantom_dataset
from xray2ct.quality import BASELINE, VARIANTS, QualityBenchmarkError, parse_variants, run_quality, without_validation

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(root, n=20, size=16, seed=5, xray_size=32, progress=False)  # splits 16 / 2 / 2
    return root


def _section(text: str, suite: str) -> str:
    m = re.search(f"<!-- suite:{suite}:cpu -->(.*?)<!-- /suite:{suite}:cpu -->", text, re.S)
    assert m, f"no {suite} section"
    return m.group(1)


def _first_number(cell: str) -> float:
    return float(re.match(r"\s*([-+]?[\d.]+)", cell).group(1))


def test_every_suite_writes_tables_and_figures(data, tmp_path):
    md, runs = tmp_path / "docs" / "BENCHMARKS.md", tmp_path / "runs"
    result = runner.invoke(app, ["benchmark", "--suite", "all", "--quick", "--out", str(md), "--data", str(data),
                                 "--budget", "0.4", "--variants", "optimized,baseline", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    text = md.read_text()
    for suite in ("projector", "data", "components", "model", "quality"):
        _section(text, suite)

    # figures exist, are PNGs, and the sections link them relative to the markdown file
    for suite, png in (("components", "attention-speed-cpu.png"), ("quality", "quality-tradeoff-cpu.png")):
        assert f"](images/{png})" in _section(text, suite)
        with Image.open(md.parent / "images" / png) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 200
    assert not list((md.parent / "images").glob(".*"))  # no temp files left by the atomic writes

    rows = [line.split("|")[1:-1] for line in _section(text, "quality").splitlines() if line.startswith("| `")]
    assert [r[0].strip() for r in rows] == ["`optimized`", "`baseline`"]
    cpu_small_lr = load_config(ROOT / "configs/cpu-small.json").training.learning_rate
    for r in rows:
        name = r[0].strip(" `")
        step_ms, steps, train_s, psnr = (_first_number(r[i]) for i in (3, 4, 5, 6))
        assert step_ms > 0 and train_s > 0 and math.isfinite(psnr) and 0 < psnr < 60
        assert 0 <= _first_number(r[8])  # MAE HU
        # the budget bought budget / step time steps, within rounding of the median shown
        assert steps >= 1 and abs(steps - 0.4 / (step_ms / 1e3)) <= 1.5
        # the LR schedule ended exactly at the last step: the cosine's floor (2 % of peak)
        from xray2ct.checkpoint import load_training_state

        state = load_training_state(runs / name / "last.safetensors")
        assert state["step"] == steps
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.02 * cpu_small_lr, rel=1e-6)
        summary = json.loads((runs / name / "eval_test" / "summary.json").read_text())
        assert summary["n_cases"] == 2 and summary["split"] == "test"
        assert f"{summary['metrics']['psnr']['mean']:.2f}" in r[6]
    # the baseline really is the baseline: plain attention, standard layout
    cfg = load_config(runs / "baseline" / "config.json")
    assert (cfg.model.attention, cfg.model.layout, cfg.model.use_cnn_branch) == ("mhsa", "standard", False)

    # rerunning one suite replaces its section; figures of the other suites stay
    result = runner.invoke(app, ["benchmark", "--suite", "data", "--quick", "--out", str(md)])
    assert result.exit_code == 0, result.output
    assert md.read_text().count("<!-- suite:data:cpu -->") == 1 and "quality-tradeoff-cpu.png" in md.read_text()


def test_all_without_data_skips_quality_and_says_why(tmp_path, monkeypatch):
    import xray2ct.benchmark as bench

    ran = []
    monkeypatch.setattr(bench, "run_suite", lambda name, *a, **k: ran.append(name) or bench.SuiteResult(name))
    result = runner.invoke(app, ["benchmark", "--suite", "all", "--out", str(tmp_path / "B.md")])
    assert result.exit_code == 0, result.output
    assert ran == ["projector", "data", "loader", "components", "model"]
    assert "skipping suite quality" in result.output and "--data" in result.output
    result = runner.invoke(app, ["benchmark", "--suite", "quality", "--out", str(tmp_path / "B.md")])
    assert result.exit_code != 0 and "--data" in result.output


def test_baseline_is_the_reference_configs_difference():
    opt, base = (json.loads((ROOT / f"configs/{n}.json").read_text()) for n in ("optimized", "baseline"))
    diff = {f"{section}.{k}": v for section, values in base.items() if isinstance(values, dict)
            for k, v in values.items() if not k.startswith("_") and opt[section].get(k) != v}
    assert diff == BASELINE


def test_each_ablation_turns_one_optimization_off():
    cfg = load_config(ROOT / "configs/cpu-small.json")
    for name, (_, over) in VARIANTS.items():
        if name in ("optimized", "baseline"):
            continue
        changed = [k for k, v in over.items() if v != _get(cfg, k)]
        assert changed, f"{name} changes nothing in cpu-small"
        # mhsa takes CGA's multi-scale K/V with it; everything else is one switch
        assert len(changed) == (2 if name == "mhsa" else 1), name


def _get(cfg, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def test_parse_variants():
    assert parse_variants(None) == list(VARIANTS)
    assert parse_variants("baseline, optimized,baseline") == ["baseline", "optimized"]
    with pytest.raises(QualityBenchmarkError, match="'cga'.*valid: optimized, baseline"):
        parse_variants("optimized,cga")
    with pytest.raises(QualityBenchmarkError):
        parse_variants(" , ")


def test_cli_help_lists_every_variant():
    benchmark = typer.main.get_command(app).commands["benchmark"]
    help_text = next(p.help for p in benchmark.params if p.name == "variants")
    assert re.findall(r"\b(?:optimized|baseline|mhsa|standard_layout|no_\w+)\b", help_text) == list(VARIANTS)


def test_variants_train_without_validation_passes():
    cfg = without_validation(load_config(ROOT / "configs/cpu-small.json"))
    assert cfg.logging.val_interval > 10**5


def test_bad_inputs_name_the_problem(tmp_path, data):
    with pytest.raises(QualityBenchmarkError, match="budget"):
        run_quality(data, budget_s=0)
    with pytest.raises(QualityBenchmarkError, match="splits.json"):
        run_quality(tmp_path, budget_s=1)


def test_quality_table_shows_cuda_peak_memory_only_when_measured():
    from xray2ct.quality import VariantResult, quality_table
    from xray2ct.timing import summarize as _timing

    metrics = {k: {"mean": 20.0, "ci95": [19.0, 21.0]} for k in ("psnr", "ssim3d", "mae_hu")}
    cpu = [VariantResult("optimized", "nothing", 10**6, _timing([5.0, 6.0]), 3, 3, 1.0, metrics)]
    assert "peak GiB" not in quality_table(cpu)
    gpu = [VariantResult("optimized", "nothing", 10**6, _timing([5.0, 6.0]), 3, 3, 1.0, metrics, None, 1.234),
           VariantResult("baseline", "every optimization", 2 * 10**6, _timing([9.0]), 3, 3, 2.0, metrics, None, 4.5)]
    lines = quality_table(gpu).splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    col = header.index("peak GiB (CUDA)")
    assert [line.split("|")[1:-1][col].strip() for line in lines[2:]] == ["1.23", "4.50"]


@pytest.mark.slow
def test_gpu_session_script_runs_quick_on_cpu(tmp_path):
    """benchmarks/gpu_session.sh is run on lent GPUs with no chance to debug: keep it working."""
    import json
    import subprocess
    import sys

    env = {**__import__("os").environ, "PY": sys.executable, "QUICK": "1", "DEVICE": "cpu", "TRAIN_S": "5", "N": "24",
           "WORKERS": "2"}
    r = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "<!-- suite:model:cpu -->" in (tmp_path / "BENCHMARKS.md").read_text(), r.stdout[-3000:]
    steps = json.loads((tmp_path / "steps.json").read_text())
    rows = {(row["model"], row["graphs"]): row for row in steps["rows"]}
    assert set(rows) == {(m, g) for m in ("baseline", "optimized") for g in (False, True)}, r.stdout[-3000:]
    assert rows["optimized", False]["train_ms"] > 0 and rows["optimized", False]["ops_per_step_32"] > 0
    assert rows["optimized", True]["note"] == "no CUDA graphs on cpu"  # the fallback, said once per row
    compare = json.loads((tmp_path / "compare.json").read_text())
    assert {"gpu-64", "bundled-32-upsampled"} <= set(compare) and compare["gpu-64"]["n"] >= 1
    assert (tmp_path / "gpu64.safetensors").is_file()
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < 25 * 2**20  # what fits the way back


def test_no_import_cycle_between_the_benchmark_suites_and_the_quality_benchmark():
    """quality.py takes its timing helpers from timing.py, so benchmark.py (which runs the quality
    suite) can import quality without a cycle; function-level imports count too."""
    import ast

    import xray2ct

    src = Path(xray2ct.__file__).parent

    def imports(module: str) -> set[str]:
        tree = ast.parse((src / f"{module}.py").read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "xray2ct.quality" in imports("benchmark")
    assert not {m for m in imports("quality") if m.startswith("xray2ct.benchmark")}
    assert not {m for m in imports("timing") if m.startswith("xray2ct.") and m != "xray2ct.timing"}


@pytest.mark.slow  # a minute or more: it refines on a 64³ grid too
def test_the_refine_suite_runs_quick_with_the_bundled_weights(tmp_path):
    md = tmp_path / "B.md"
    result = runner.invoke(app, ["benchmark", "--suite", "refine", "--quick", "--out", str(md)])
    assert result.exit_code == 0, result.output
    text = _section(md.read_text(), "refine")
    for heading in ("Calibration", "chosen on validation", "cannot explain", "Held-out test", "over steps",
                    "finer grid"):
        assert heading in text
    assert (tmp_path / "images" / "calibration-cpu.png").is_file()
    assert "`sigma_scale`" in text  # the chosen section carries σ's fitted temperature
    assert "`explained_error`" in text and "styled films" in text  # ... and where λ starts to rise
