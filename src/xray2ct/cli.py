"""`xray2ct` command line: a thin typer shell over typed functions in the package.

Each command parses arguments, calls one function and reports; heavy libraries are
imported inside the commands so `xray2ct --help` stays fast.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reconstruct a 3D CT volume from a PA and a lateral X-ray.")
console = Console(stderr=True)


@app.command()
def phantoms(
    out: Path = typer.Option(..., help="Output folder (seed layout: {id}/{id}.nii.gz, {id}_pa_drr.png, {id}_lat_drr.png)."),
    n: int = typer.Option(200, min=1, help="Number of phantoms."),
    size: int = typer.Option(64, min=8, help="Volume size N (N³ voxels over a 320 mm field of view)."),
    seed: int = typer.Option(0, help="Dataset seed; the same seed gives the same phantoms."),
    xray_size: int = typer.Option(256, min=16, help="DRR detector size in pixels."),
    workers: int = typer.Option(1, min=1, help="Processes writing cases in parallel (same dataset for any number)."),
    version: int = typer.Option(2, "--version", help="Phantom generator: 1 (one tidy torso, the first weights' "
                                "data), 2 (adult habitus, arms, scan coverage, table, contrast, disease), 3 (v2's "
                                "anatomy with a skeleton of published cortex thickness), 4 (v2's anatomy deformed by a "
                                "smooth random warp: shapes beyond v2's parameters; the bundled weights' data) or 5 "
                                "(v4's warp, larger)."),
):
    """Generate procedural chest phantoms with their PA and lateral DRRs, plus splits.json."""
    from xray2ct.data.phantoms import VERSIONS
    from xray2ct.data.prepare import make_phantom_dataset

    if version not in VERSIONS:
        raise typer.BadParameter(f"{version} is not a phantom version; valid: {', '.join(map(str, VERSIONS))}",
                                 param_hint="--version")
    ids = make_phantom_dataset(out, n=n, size=size, seed=seed, xray_size=xray_size, progress=True, workers=workers,
                               version=version)
    console.print(f"[green]{len(ids)} phantoms[/green] in {out} (splits in {out / 'splits.json'})")


@app.command()
def prepare(
    ct: List[Path] = typer.Option(..., help="CT inputs (repeat --ct): NIfTI/MHA/NRRD files and NPY/NPZ, one case "
                                  "each; folders: DICOM trees of any depth (e.g. TCIA's LIDC-IDRI/), one case per "
                                  "patient from its thinnest usable axial CT series."),
    out: Path = typer.Option(..., help="Output dataset folder (seed layout)."),
    preset: str = typer.Option("ours", help="ours: FOV cube around the body straight to SIZE³, any size. x2ct: "
                               "X2CT-GAN's preprocessing (1 mm isotropic, 320 mm cube, 128³ at 2.5 mm, HU -1024…1476)."),
    size: Optional[int] = typer.Option(None, min=8, help="Output volume size N (N³); default: the preset's "
                                       "(ours 64, x2ct 128, fixed)."),
    xray_size: Optional[int] = typer.Option(None, min=16, help="DRR detector size in pixels; default 256."),
    fov_mm: Optional[float] = typer.Option(None, help="Cube field of view cropped around the body, mm; default 320."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, help="Voxel spacing D H W in mm for NPY/NPZ inputs (their files carry none)."),
    seed: int = typer.Option(0, help="Seed of the train/val/test split."),
    workers: int = typer.Option(1, min=1, help="Processes reading DICOM headers and writing cases."),
    split_file: List[str] = typer.Option([], help="SPLIT=FILE: patient IDs of a split, one per line (X2CT-GAN's "
                                         "train.txt/test.txt), e.g. --split-file train=train.txt --split-file "
                                         "test=test.txt; without val=, 5% of train validates. Default: seeded "
                                         "80/10/10."),
):
    """Turn real CTs into training data: reorient, resample, crop, resize, render DRRs.

    Resumable and safe to rerun (complete cases are skipped; a folder prepared with other
    settings is refused). Every failed input is listed and the exit status is 1 when any failed.
    """
    from xray2ct.data.prepare import prepare_cts
    from xray2ct.data.splitfile import parse_split_files

    splits = parse_split_files(split_file) if split_file else None
    report = prepare_cts(ct, out, size=size, xray_size=xray_size, fov_mm=fov_mm, progress=True, spacing=spacing,
                         seed=seed, preset=preset, workers=workers, split_files=splits)
    for note in report.notes:
        console.print(f"  {note}", soft_wrap=True)
    ignored = f", ignored {report.ignored} series that are not CT volumes" if report.ignored else ""
    console.print(f"done {len(report.done)}, skipped (already there) {len(report.skipped)}, failed "
                  f"{len(report.failed)}{ignored}; record in {report.report_path}")
    if report.failed:
        console.print("[red]failed cases[/red] (input: problem):")
        for path, why in report.failed:
            console.print(f"  {path}: {why}", soft_wrap=True)
        raise typer.Exit(1)


def _parse_sets(sets: list[str]) -> dict:
    """["training.num_epochs=1", ...] -> {"training.num_epochs": "1"} (values parsed by the config)."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value (e.g. training.num_epochs=3), got {item!r}", param_hint="--set")
        out[key.strip()] = value.strip()
    return out


@app.command()
def train(
    config: Path = typer.Option(Path("configs/cpu-small.json"), help="JSON config file."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder; default: the config's data.dataset_path, else "
                                        "phantoms generated into ~/.cache/xray2ct."),
    out: Path = typer.Option(Path("runs/train"), help="Run folder: checkpoints, metrics.csv, tensorboard/, config."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value, e.g. --set training.num_epochs=3."),
    resume: bool = typer.Option(False, help="Continue exactly from OUT/last.safetensors (the config may differ "
                                "only in epochs, logging and data loading)."),
    overwrite: bool = typer.Option(False, help="Replace the run already in OUT (its checkpoints and metrics are "
                                   "deleted); without it or --resume, an existing run is refused."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after this many optimizer steps."),
    time_budget: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this many seconds."),
):
    """Train a model. Multi-GPU: torchrun --nproc_per_node=N -m xray2ct.cli train ..."""
    import logging

    from xray2ct.config import load_config
    from xray2ct.engine.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(config, overrides=_parse_sets(set_))
    result = run_training(cfg, out, data_dir=data, resume=resume, device=device, max_steps=max_steps,
                          time_budget_s=time_budget, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    if result.stopped_early:
        console.print(f"[yellow]stopped:[/yellow] {result.stopped_early}")
    best = f"best val PSNR {result.best_psnr:.2f} dB" if result.history else "no validation yet"
    console.print(f"step {result.step}, epoch {result.epoch}; {best}; {result.samples_s:.1f} samples/s, "
                  f"peak memory {result.peak_gib:.2f} GiB; checkpoints in {out}")
    if result.stop_signal:  # saved and resumable, but a supervisor must see the run did not finish
        import signal

        raise typer.Exit(128 + signal.Signals[result.stop_signal].value)


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help="Checkpoint (.safetensors) or training run folder."),
    data: Path = typer.Option(..., help="Dataset folder (seed layout)."),
    split: str = typer.Option("test", help="Split to evaluate: train | val | test | all."),
    out: Optional[Path] = typer.Option(None, help="Output folder; default: CHECKPOINT's folder/eval_SPLIT."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    batch_size: int = typer.Option(2, min=1, help="Cases per forward pass."),
    montages: Optional[int] = typer.Option(None, min=0, help="Montages for the first this-many cases (default: all)."),
    report: bool = typer.Option(False, help="Also write OUT/report.html: a self-contained page with the metrics, "
                                "montages and the first case's volume and bone surface."),
    refine: Optional[bool] = typer.Option(None, help="Score what `reconstruct` makes. Default: the physics-refined "
                                          "volumes, as `reconstruct` refines by default (not where a film shows "
                                          "anatomy beyond the field), with the gain over the network alone; "
                                          "--refine: refine every case; --no-refine: the network alone."),
    views: str = typer.Option("both", help="both | pa | lat: score one-view reconstruction (the other view "
                              "withheld, as `reconstruct --pa` alone)."),
):
    """Metrics per case (ours and the X2CT-GAN protocol, projection consistency), summary with 95% CIs, montages."""
    from xray2ct.engine.evaluate import METRICS
    from xray2ct.engine.evaluate import evaluate as run_evaluation

    result = run_evaluation(checkpoint, data, split=None if split == "all" else split, out=out, device=device,
                            batch_size=batch_size, montages=montages, progress=True, report=report,
                            refine=refine, views=views)
    t = Table("metric", "protocol", "mean", "std", "95% CI", "n", title=f"{result.summary['split'] or 'all'} split, "
              f"{result.summary['n_cases']} case(s)")
    for name, s in result.summary["metrics"].items():
        unit = f" {METRICS[name][1]}" if METRICS[name][1] else ""
        ci = f"[{s['ci95'][0]:.4g}, {s['ci95'][1]:.4g}]" if s["ci95"] else "-"
        t.add_row(name, s["protocol"], f"{s['mean']:.4g}{unit}", "-" if s["std"] is None else f"{s['std']:.3g}", ci,
                  str(s["n"]))
    Console().print(t)
    r = result.summary["refinement"]
    if r["refined"]:
        Console().print(f"refined {r['cases_refined']} of {result.summary['n_cases']} case(s): PSNR "
                        f"{r['psnr_gain_db']['mean']:+.2f} dB over the network alone (worst {r['worst_gain_db']:+.2f} "
                        f"dB), {r['seconds_per_case']['mean']:.1f} s per case")
    else:
        Console().print(f"not refined ({r['why']}): the network's volumes")
    console.print(f"per_case.csv, summary.json{', report.html' if report else ''} and {len(result.montages)} "
                  f"montage(s) in {result.out}")


@app.command()
def reconstruct(
    pa: Optional[Path] = typer.Option(None, help="PA (or, with --ap, AP) radiograph (PNG, JPEG, TIFF, DICOM, NPY)."),
    lat: Optional[Path] = typer.Option(None, help="Lateral radiograph. Either view alone also works (less certain)."),
    out: Path = typer.Option(..., help="Output volume (.nii.gz/.nii, .npy, or a folder for --format dicom); "
                             "with --batch, an output folder."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint or run folder; default: bundled weights."),
    uncertainty: Optional[Path] = typer.Option(None, help="Also write the predicted std (HU) here (.nii.gz/.npy); "
                                               "with --batch: any value writes {id}_uncertainty.nii.gz."),
    preview: Optional[Path] = typer.Option(None, help="Also write a three-plane preview PNG here; with --batch: "
                                           "any value writes {id}_preview.png."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    upscale: Optional[Tuple[int, int, int]] = typer.Option(None, help="Resample the output to D H W voxels (trilinear)."),
    format_: str = typer.Option("nifti", "--format", help="nifti | npy | dicom (a folder of axial CT slices)."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    batch: Optional[Path] = typer.Option(None, help="Reconstruct every {id}_pa* / {id}_lat* pair in this folder."),
    single_views: bool = typer.Option(False, help="With --batch: a case with a PA or a lateral film alone is "
                                      "reconstructed from it (as --pa alone) instead of failing."),
    report: Optional[Path] = typer.Option(None, help="Also write a self-contained HTML report here (slices, "
                                          "uncertainty, bone surface); with --batch: any value writes "
                                          "{id}_report.html."),
    refine: Optional[bool] = typer.Option(None, help="Refine the network's volume so its DRRs match the X-rays, "
                                          "weighted by its own uncertainty (physics-consistent). Default: refine "
                                          "unless a film shows anatomy well beyond the reconstructed field (a "
                                          "wide cassette), where it costs quality; --no-refine: the network's "
                                          "output."),
    refine_steps: Optional[int] = typer.Option(None, min=0, help="Most refinement steps (default: the model's, "
                                               "early stopping may end sooner)."),
    refine_size: Optional[int] = typer.Option(None, min=8, help="Refine on an N³ grid (the network's volume "
                                              "upsampled as the prior); default: the network's size."),
    refine_prior: Optional[float] = typer.Option(None, help="How firmly refinement holds each voxel to the "
                                                 "network (prior weight λ), fixed for every film. Default: the "
                                                 "model's, raised where the films hold more than the volume's "
                                                 "grid can explain, as real films do (docs/RESULTS.md)."),
    sid: Optional[float] = typer.Option(None, help="Source–detector (source–image) distance, mm, both views "
                                        "(else DICOM DistanceSourceToDetector, a {stem}.json sidecar, or the "
                                        "model's training geometry)."),
    sod: Optional[float] = typer.Option(None, help="Source–isocentre (source–object) distance, mm, both views."),
    pixel_mm: Optional[float] = typer.Option(None, help="Detector pixel pitch of the files as given, mm, both views "
                                             "(else DICOM ImagerPixelSpacing/PixelSpacing, the sidecar, or a "
                                             "detector just covering the volume)."),
    lat_sid: Optional[float] = typer.Option(None, help="The lateral's source–detector distance, mm, where it differs."),
    lat_sod: Optional[float] = typer.Option(None, help="The lateral's source–isocentre distance, mm."),
    lat_pixel_mm: Optional[float] = typer.Option(None, help="The lateral's detector pixel pitch, mm."),
    ap: bool = typer.Option(False, "--ap", help="The frontal film is AP (source anterior), not PA (else DICOM "
                            "ViewPosition or the sidecar's position)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="With --device cuda: the network's forward is "
                                     "compiled and replayed as CUDA graphs (pays off over a --batch; elsewhere "
                                     "a warning and the plain forward)."),
):
    """Reconstruct a CT volume (HU) from a PA and a lateral X-ray, or from one of them.

    The acquisition geometry of each view comes from the flags, else the DICOM header, else a
    {stem}.json sidecar, else the model's training geometry (logged as assumed)."""
    import logging

    from xray2ct.acquisition import AcquisitionFlags
    from xray2ct.engine import reconstruct as R
    from xray2ct.engine.batch import reconstruct_batch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    refinement = R.RefineOptions(enabled=refine, steps=refine_steps, size=refine_size, prior_weight=refine_prior)
    acquisition = AcquisitionFlags(sid, sod, pixel_mm, lat_sid, lat_sod, lat_pixel_mm, ap)

    if batch is not None:
        done = reconstruct_batch(batch, out, checkpoint=checkpoint, device=device, upscale=upscale, fmt=format_,
                                   overwrite=overwrite, uncertainty=uncertainty is not None,
                                   preview=preview is not None, progress=True, report=report is not None,
                                   refine=refinement, acquisition=acquisition, cuda_graphs=cuda_graphs,
                                   single_views=single_views)
        console.print(f"written {len(done.done)}, skipped (exist; --overwrite to redo) {len(done.skipped)}, "
                      f"failed {len(done.failed)} -> {out}")
        if done.one_view:
            console.print("from one film alone (less certain; see each report): "
                          + ", ".join(f"{cid} ({view.upper()})" for cid, view in done.one_view))
        if done.failed:
            t = Table("id", "problem", title="failed pairs")
            for cid, why in done.failed:
                t.add_row(cid, why)
            console.print(t)
            raise typer.Exit(1)  # the others are written, but a script must see that some pairs were not
        return
    if pa is None and lat is None:
        raise typer.BadParameter("give --pa, --lat or both (or --batch DIR)", param_hint="--pa")
    path = R.reconstruct(pa, lat, out, checkpoint=checkpoint, uncertainty=uncertainty, preview=preview, device=device,
                         upscale=upscale, fmt=format_, overwrite=overwrite, report=report, refine=refinement,
                         acquisition=acquisition, cuda_graphs=cuda_graphs)
    extras = [str(p) for p in (uncertainty, preview, report) if p is not None]
    console.print(f"[green]wrote[/green] {path}" + (f" (+ {', '.join(extras)})" if extras else ""))


@app.command()
def info(
    config: Path = typer.Option(..., help="JSON config file."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value, e.g. --set model.voxel_dim=96."),
):
    """Parameters per component, token count, FLOPs and activation memory of a config's model."""
    from xray2ct.config import load_config

    cfg = load_config(config, overrides=_parse_sets(set_))
    from xray2ct.models.summary import model_summary, summary_rows

    table = Table("", "value", title=str(config))
    for label, value in summary_rows(model_summary(cfg)):
        table.add_row(label, value)
    Console().print(table)


@app.command()
def benchmark(
    suite: str = typer.Option("all", help="projector | data | loader | components | model | quality | refine | "
                              "robustness | all (the timing suites and quality; refine and robustness by name only)"),
    checkpoint: Optional[List[Path]] = typer.Option(None, help="refine, robustness: the model; default: bundled "
                                                    "weights. robustness: repeat it to compare weights in one table."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Optional[Path] = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update (its section per "
                                       "suite); figures go to images/ beside it."),
    quick: bool = typer.Option(False, help="Tiny sizes and few repeats (a smoke run)."),
    data: Optional[Path] = typer.Option(None, help="quality: dataset folder with splits.json (e.g. from `xray2ct "
                                        "phantoms`); `--suite all` skips quality without it."),
    budget: float = typer.Option(150.0, min=0.001, help="quality: training wall time per variant, seconds."),
    # names spelt out so `--help` needs no torch import; a test keeps them equal to quality.VARIANTS
    variants: Optional[str] = typer.Option(None, help="quality: comma-separated variants (default all): optimized, "
                                           "baseline, no_cnn_branch, no_learnable_priors, mhsa, standard_layout, "
                                           "no_multiscale, no_conditioning, no_projection_loss, no_subvoxel_detail."),
    config: Path = typer.Option(Path("configs/cpu-small.json"), help="quality: the optimized config the variants "
                                "derive from."),
    runs: Path = typer.Option(Path("runs/quality"), help="quality: folder for the variants' runs (each replaced)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="anatomy (`--suite anatomy`, the phantoms' realism "
                                    "report): phantoms per generator, default 200."),
    refine: bool = typer.Option(False, help="robustness: also score every grid point refined, as `reconstruct` "
                                "refines by default (about 3 s per case and point on a CPU)."),
):
    """Time the suites and write their tables (and figures) into docs/BENCHMARKS.md."""
    from xray2ct.benchmark import STUDIES, SUITES, run_suite, write_section

    names = [s for s in SUITES if s not in STUDIES] if suite == "all" else [suite]
    for name in names:
        if name not in SUITES:
            raise typer.BadParameter(f"unknown suite {name!r}; valid: {', '.join(SUITES)}, all", param_hint="--suite")
    if "quality" in names and data is None:
        if suite == "quality":
            raise typer.BadParameter("the quality suite trains on a dataset: give --data FOLDER", param_hint="--data")
        names.remove("quality")
        console.print("[yellow]skipping suite quality[/yellow]: it trains every variant on a dataset; give --data")
    if checkpoint and len(checkpoint) > 1 and names != ["robustness"]:
        raise typer.BadParameter("several --checkpoint compare weights in the robustness suite only",
                                 param_hint="--checkpoint")
    command = "xray2ct " + " ".join(sys.argv[1:])
    images = out.parent / "images" if out is not None else None
    for name in names:
        console.print(f"running suite [bold]{name}[/bold] on {device} …")
        options = dict(data_dir=data, budget_s=budget, variants=variants, config=config, runs_dir=runs)
        weights = (checkpoint or [None]) if name == "robustness" else (checkpoint or [None])[0]
        options = options if name == "quality" else {"checkpoint": weights} if name in ("refine", "robustness") \
            else {}
        if name == "robustness":
            options["refine"] = refine
        if name == "anatomy":
            options = {"n": n}
        result = run_suite(name, device, quick=quick, images_dir=images, **options)
        Console().print(result.markdown)
        if out is not None:
            write_section(out, name, result, command, device)
    if out is not None:
        console.print(f"tables written to {out}")


@app.command()
def serve(
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint or run folder; default: bundled weights."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface; no login!)."),
    port: int = typer.Option(7860, min=1, max=65535, help="TCP port."),
    device: str = typer.Option("cpu", help="auto | cpu | cuda"),
):
    """Start the web app: upload a PA and a lateral X-ray, explore the CT in the browser."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry from a medical-image tool
    from xray2ct.webapp import serve as run_server

    console.print(f"xray2ct web app on http://{host}:{port} (Ctrl+C stops it)")
    run_server(checkpoint, host=host, port=port, device=device)


@app.command()
def demo(
    out: Path = typer.Option(Path("xray2ct-demo"), help="Output folder."),
    train: bool = typer.Option(False, "--train", help="Run the whole pipeline instead: phantoms → training → "
                               "evaluation → reconstruction."),
    budget_minutes: float = typer.Option(5.0, help="With --train: training time budget, minutes."),
    n: int = typer.Option(60, min=10, help="With --train: number of phantoms to generate."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
):
    """Reconstruct the bundled example X-rays with the bundled weights (or, with --train, the whole pipeline)."""
    from xray2ct.engine.demo import Result, run_demo, run_training_demo

    lines = run_training_demo(out, budget_minutes, n, device) if train else run_demo(out, device)
    results = Console()  # stdout: what a script pipes on; progress stays on stderr
    for line in lines:
        (results if isinstance(line, Result) else console).print(line, soft_wrap=True, markup=False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (e.g. swapped views) as one line, without Python's source-line echo."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True)


def main() -> None:
    """Console entry point: user errors become one clear line, not a traceback."""
    import warnings

    from xray2ct.errors import USER_ERRORS

    warnings.showwarning = _show_warning
    try:
        app()
    except USER_ERRORS as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)  # one line, whatever the terminal width
        sys.exit(2)


if __name__ == "__main__":  # `python -m xray2ct.cli` (used by torchrun)
    main()
