"""`xray2ct serve`: a local web app (Gradio). Two X-rays in, the CT explored in the browser.

    upload PA + lateral (PNG, JPEG, TIFF, DICOM, NPY) or pick a bundled example
      -> thumbnails of both as the model reads them (patient's sides written on them)
      -> Reconstructor (model loaded once) -> HU volume, std, bone surface, files
      -> one message area (errors, warnings such as swapped views, the summary and metrics)
      -> the HTML report's own viewer in an iframe: three slices with sliders, orientation
         letters, HU under the pointer, window presets and level/width, the uncertainty
         overlay with its legend, the shaded bone surface
      -> downloads (NIfTI volume and uncertainty, OBJ, HTML report)

The logic lives in plain functions (`Reconstructor`, `respond`) that the tests call
directly; `build_app` only wires them to Gradio components. A failed request says why in
the message area (it stays until the next request) and clears the previous result, so an
old volume is never shown beside a new error. Requests go through Gradio's queue one at a
time (a reconstruction holds the model and a few volumes in memory), so a burst of users
waits in line instead of running the machine out of memory.
"""
from __future__ import annotations

import atexit
import hashlib
import html
import logging
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from xray2ct.errors import UserError

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 50  # a chest film as 16-bit DICOM is 10-40 MB
QUEUE_SIZE = 16  # requests waiting beyond this are refused with a "busy" message
KEEP_RESULTS = 20  # result folders kept on disk; older ones are deleted
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "3D SSIM", "mae": "MAE (HU)"}
THUMBNAIL_PX = 256
SWAP_ADVICE = "Upload the frontal film as the PA and the side view as the lateral"
WELCOME = ("Upload a PA and a lateral X-ray (or only one of them), or pick a bundled example, then press "
           "<b>Reconstruct</b>.")
VIEWER_PLACEHOLDER = ('<div class="viewer-placeholder" style="padding:2em;color:#666;border:1px dashed #bbb;'
                      'border-radius:6px">The slices and the bone surface appear here after a reconstruction.</div>')


class AppInputError(UserError, ValueError):
    """Uploads the app cannot use; `problems` holds one message per bad view, all shown in the page."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ServeError(UserError, OSError):
    """The server cannot start (port taken, address not on this machine)."""


@dataclass
class Result:
    """One reconstruction: arrays for the viewer and the files offered for download."""

    hu: np.ndarray  # (D, H, W) HU
    std_hu: np.ndarray | None  # (D, H, W) predicted std, HU
    spacing: tuple[float, float, float]
    files: dict[str, Path]  # "volume", "uncertainty", "surface", "report"
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # against the ground truth of a bundled example
    note: str = ""  # why there is no bone surface, when there is none
    mesh: object = None  # xray2ct.surface.Mesh or None
    warnings: list[str] = field(default_factory=list)  # e.g. the views look swapped
    refinement: object = None  # xray2ct.refine.RefineResult, or None when not refined
    projections: str = ""  # the report's physics check (inputs against the result's DRRs), HTML
    mode: str = "biplanar"  # or "frontal only" / "lateral only": which views the reconstruction used
    refine_skipped: str | None = None  # why refinement did not run although it was on, when it did not


def _given(upload) -> bool:
    """Gradio gives a path string, or None / "" when the view was not uploaded."""
    return upload is not None and upload != ""


def _uploaded_path(upload, view: str) -> Path:
    if not _given(upload):
        raise AppInputError(f"The {view} X-ray is missing: upload a PA image, a lateral one, or both.")
    path = Path(getattr(upload, "name", upload))
    if not path.is_file():
        raise AppInputError(f"The {view} upload ({path.name}) could not be read; please upload it again.")
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise AppInputError(f"The {view} file {path.name} is {size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB.")
    return path


def load_view(upload, view: str, size: int):
    """One upload -> (path, image (size, size) in [0, 1]); a UserError names the view and the file
    as the user knows it (not by the server's upload folder)."""
    from xray2ct.data.xrayio import load_xray

    path = _uploaded_path(upload, view)
    try:
        return path, load_xray(path, size=size)
    except UserError as e:
        raise AppInputError(f"The {view} X-ray could not be used: {str(e).replace(f'{path.parent}/', '')}") from None


def thumbnail(upload, view: str, size: int = THUMBNAIL_PX) -> np.ndarray | None:
    """What the model will read from an upload, with the patient's sides written on it, so a
    user sees which film is which (and a swapped pair at a glance); None when unreadable."""
    from xray2ct.viz import XRAY_PLANE, draw_sides, orientation_labels

    try:
        _, img = load_view(upload, view, size)
    except UserError:
        return None  # the reason is given when Reconstruct is pressed
    grey = (img.numpy() * 255 + 0.5).astype(np.uint8)
    return draw_sides(np.repeat(grey[..., None], 3, axis=-1), orientation_labels(XRAY_PLANE[view]))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Reconstructor:
    """Loads the model once; each call reconstructs one pair into its own result folder.

    Args:
        checkpoint: .safetensors or run folder; None: the bundled default weights.
        device: "auto" | "cpu" | "cuda".
        workdir: where result folders go (default: a new temp folder, removed by `close`).
    """

    def __init__(self, checkpoint=None, device: str = "cpu", workdir: str | Path | None = None) -> None:
        from xray2ct.engine.demo import bundled_examples
        from xray2ct.engine.inference import load_for_inference

        self.model, self.cfg, self.device = load_for_inference(checkpoint, device)
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="xray2ct-serve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.examples = bundled_examples()
        # a bundled example's ground truth applies only to its own pair: both files must match,
        # by content (uploads are renamed), or the metrics would compare against another patient
        self._truth = {(_digest(ex.pa), _digest(ex.lat)): ex for ex in self.examples
                       if ex.ct is not None and ex.lat is not None}
        self._count = 0

    def __call__(self, pa, lat, progress: Callable[[float, str], None] = lambda f, desc: None,
                 refine: bool = True) -> Result:
        from xray2ct.engine.outputs import save_report, save_volume
        from xray2ct.engine.reconstruct import reconstruct_pair
        from xray2ct.engine.refining import NO_REFINE, RefineOptions
        from xray2ct.surface import try_bone_surface, write_obj

        started = time.perf_counter()
        progress(0.1, "reading the X-rays")
        (pa, pa_img), (lat, lat_img) = self._load_both(pa, lat)
        warnings = self._check_pair(pa, pa_img, lat, lat_img) if pa and lat else []
        study = self._study(pa, lat)
        xrays = study.xrays  # (1, 2, S, S), PA first; zeros for a view not uploaded
        progress(0.3, "reconstructing and refining against the X-rays" if refine else "reconstructing")
        rec = reconstruct_pair(self.model, self.cfg, self.device, xrays, refine=RefineOptions() if refine else NO_REFINE,
                               geometry=study.geometry, present=study.present)
        projections = rec.projection_html()
        hu, std, spacing = rec.hu, rec.std_hu, rec.spacing
        out = self._new_folder()
        progress(0.6, "writing files")
        files = {"volume": save_volume(out / "ct.nii.gz", hu, spacing, "nifti", description=study.descrip())}
        if std is not None:
            files["uncertainty"] = save_volume(out / "uncertainty_std.nii.gz", std, spacing, "nifti", dtype="float32")
        progress(0.75, "bone surface")
        mesh, note = try_bone_surface(hu, spacing)
        if mesh is not None:
            write_obj(out / "bone_surface.obj", mesh)
            files["surface"] = out / "bone_surface.obj"
        metrics = self._metrics(pa, lat, rec.volume)
        progress(0.9, "report")
        files["report"] = save_report(out / "report.html", hu, std, spacing, rec.input_images(), mesh=mesh,
                                      title=" + ".join(f.name for f in (pa, lat) if f), metrics=metrics or None,
                                      projections=projections, details=study.details())
        return Result(hu, std, spacing, files, time.perf_counter() - started, metrics, note, mesh, warnings,
                      rec.refinement, projections, study.mode, rec.refine_skipped)

    def _study(self, pa: Path | None, lat: Path | None):
        """The films with their acquisitions (DICOM tags, sidecars, else the training geometry)."""
        import warnings as py_warnings

        from xray2ct.engine.reconstruct import load_study_for

        try:
            with py_warnings.catch_warnings():  # a swapped pair is already reported by _check_pair
                py_warnings.simplefilter("ignore", UserWarning)
                return load_study_for(self.model, self.cfg, pa, lat)
        except UserError as e:
            raise AppInputError(f"The X-rays could not be used: {e}") from None

    def _load_both(self, pa, lat):
        """((path, image) or (None, None)) per view, or one AppInputError listing every bad one (the
        user fixes both at once). One view may be missing, not both."""
        if not _given(pa) and not _given(lat):
            raise AppInputError("No X-ray uploaded: upload a PA image, a lateral one, or both.")
        loaded, problems = [], []
        for upload, view in ((pa, "PA"), (lat, "lateral")):
            if not _given(upload):
                loaded.append((None, None))
                continue
            try:
                loaded.append(load_view(upload, view, self.cfg.model.xray_img_size))
            except AppInputError as e:
                problems += e.problems
        if problems:
            raise AppInputError(problems)
        return loaded

    @staticmethod
    def _check_pair(pa: Path, pa_img, lat: Path, lat_img) -> list[str]:
        """Warnings about a usable but suspicious pair: the same film twice, swapped views."""
        from xray2ct.data.viewcheck import check_views

        if _digest(pa) == _digest(lat):
            return [f"The PA and the lateral are the same image ({pa.name}): the reconstruction cannot be right."]
        swapped = check_views(pa_img, lat_img, pa_name=f"The PA upload ({pa.name})",
                              lat_name=f"the lateral upload ({lat.name})", fix=SWAP_ADVICE)
        return [swapped] if swapped else []

    def _new_folder(self) -> Path:
        self._count += 1
        out = self.workdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._count:04d}"
        out.mkdir(parents=True)
        for old in sorted(p for p in self.workdir.iterdir() if p.is_dir())[:-KEEP_RESULTS]:
            shutil.rmtree(old, ignore_errors=True)
        return out

    def _metrics(self, pa: Path, lat: Path, volume) -> dict[str, float]:
        """Against the ground truth when the pair is a bundled example's, labelled for display."""
        from xray2ct.engine.demo import ground_truth_metrics

        if pa is None or lat is None:  # the examples' truth belongs to their pairs
            return {}
        ex = self._truth.get((_digest(pa), _digest(lat)))
        metrics = ground_truth_metrics(volume, ex.ct) if ex is not None else {}
        return {METRIC_LABELS[k]: v for k, v in metrics.items()}

    def close(self) -> None:
        """Remove the result folders (when this object made the work folder)."""
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- what the page shows ---------------------------------------------------------------------
_BOX = "padding:.7em 1em;border-radius:6px;margin:.3em 0;border-left:5px solid {};background:{}"
_ERROR_STYLE = _BOX.format("#c62828", "#fdecea")
_WARNING_STYLE = _BOX.format("#ef8f00", "#fff4e0")
_INFO_STYLE = _BOX.format("#5b7fa6", "#f2f5f9")


def _box(style: str, heading: str, lines: list[str], role: str = "status") -> str:
    items = "".join(f"<li>{html.escape(line, quote=False)}</li>" for line in lines)
    return f'<div role="{role}" style="{style}"><b>{heading}</b><ul style="margin:.3em 0 0">{items}</ul></div>'


def summary_lines(result: Result) -> list[str]:
    d = result.hu.shape
    lines = [f"Done in {result.seconds:.1f} s: {d[0]}×{d[1]}×{d[2]} voxels of {result.spacing[0]:.1f} mm, HU."]
    if result.mode != "biplanar":
        lines.append(f"Views used: {result.mode}. With one film the depth along its rays comes mostly from the "
                     "model's anatomy prior; the uncertainty map is larger, and a second view would help.")
    else:
        lines.append("Views used: PA and lateral (biplanar).")
    r = result.refinement
    not_refined = f"Not refined: {result.refine_skipped}." if result.refine_skipped else \
        "Not refined: the network's volume as it is."
    lines.append(not_refined if r is None else
                 f"Refined against the X-rays in {r.steps} steps ({r.seconds:.1f} s): mean squared difference "
                 f"between the inputs and the volume's DRRs {r.data_before:.2e} → {r.data_after:.2e}."
                 + "".join(f" Note: {line}." for line in r.notes().values()))
    if result.metrics:
        lines.append("Bundled example, compared with its ground truth: "
                     + ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items()))
    if result.note:
        lines.append(result.note)
    return lines


def message_html(result: Result | None = None, problems: list[str] = ()) -> str:
    """The message area: what went wrong (kept until the next request), or the warnings and the
    summary of a result, or what to do first."""
    if problems:
        return _box(_ERROR_STYLE, "Could not reconstruct", list(problems), role="alert")
    if result is None:
        return f'<div style="{_INFO_STYLE}">{WELCOME}</div>'
    parts = [_box(_WARNING_STYLE, "Check the inputs", result.warnings, role="alert")] if result.warnings else []
    return "".join(parts) + _box(_INFO_STYLE, "Reconstruction", summary_lines(result))


def viewer_html(result: Result | None) -> str:
    """The report's viewer (slices, bone surface) for a result, in an iframe: its scripts run
    there (Gradio's HTML component does not run <script>), and its styles stay inside."""
    from xray2ct.report import viewer_page

    if result is None:
        return VIEWER_PLACEHOLDER
    page = viewer_page(result.hu, result.spacing, result.std_hu, result.mesh)
    return (f'<iframe title="CT viewer" srcdoc="{html.escape(page, quote=True)}" '
            'style="width:100%;height:760px;border:0;display:block"></iframe>')


def respond(reconstructor: Reconstructor, pa, lat, progress=lambda f, desc: None, refine: bool = True) -> list:
    """One press of Reconstruct -> the values of OUTPUTS (message, viewer, physics check, downloads).
    A failure clears the previous result and says why; it never leaves an old volume beside a new error."""
    try:
        result = reconstructor(pa, lat, progress=progress, refine=refine)
    except UserError as e:  # bad input: say why in the page, keep serving
        problems = getattr(e, "problems", [str(e)])
        return [message_html(problems=problems), viewer_html(None), "", None]
    except Exception as e:  # a bug or out of memory: still a readable page, and the trace in the log
        log.exception("reconstruction failed")
        return [message_html(problems=[f"The reconstruction failed ({type(e).__name__}: {e}); "
                                       "the details are in the server's log."]), viewer_html(None), "", None]
    return [message_html(result), viewer_html(result), result.projections, [str(p) for p in result.files.values()]]


OUTPUTS = ("status", "viewer", "physics", "downloads")  # elem_ids of respond's outputs, in order


def build_app(reconstructor: Reconstructor):
    """The Gradio Blocks app around a Reconstructor."""
    import gradio as gr

    suffixes = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".npy"]
    with gr.Blocks(title="xray2ct", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("# xray2ct\nTwo plain X-rays (PA and lateral) in, a 3D CT volume out; one of them alone "
                    "also works, less certainly. Research use only; not for diagnosis.")
        uploads, thumbs = {}, {}
        with gr.Row():
            for view, elem in (("PA", "pa"), ("lateral", "lat")):
                with gr.Column():
                    uploads[view] = gr.File(label=f"{view} X-ray", file_types=suffixes, type="filepath",
                                            elem_id=f"{elem}-upload")
                    thumbs[view] = gr.Image(label=f"{view} as the model reads it", type="numpy", interactive=False,
                                            height=THUMBNAIL_PX, elem_id=f"{elem}-thumb", buttons=["fullscreen"])
        pa, lat = uploads["PA"], uploads["lateral"]
        if reconstructor.examples:
            gr.Examples([[str(ex.pa), None if ex.lat is None else str(ex.lat)] for ex in reconstructor.examples],
                        inputs=[pa, lat],
                        example_labels=[ex.id for ex in reconstructor.examples], label="Bundled examples")
        refine = gr.Checkbox(True, label="Refine against the X-rays (physics-consistent; the network's uncertainty "
                             "says how far each voxel may move)", elem_id="refine")
        run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
        outputs = {
            "status": gr.HTML(message_html(), elem_id="status", js_on_load=None),
            "viewer": gr.HTML(VIEWER_PLACEHOLDER, elem_id="viewer", js_on_load=None, min_height=120),
            "physics": gr.HTML("", elem_id="physics", js_on_load=None),
            "downloads": gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"),
        }

        def reconstruct(pa_file, lat_file, refine_on, progress=gr.Progress()):
            return respond(reconstructor, pa_file, lat_file, progress=lambda f, desc: progress(f, desc=desc),
                           refine=refine_on)

        run.click(reconstruct, inputs=[pa, lat, refine], outputs=[outputs[k] for k in OUTPUTS], concurrency_limit=1)
        for view, upload in uploads.items():
            upload.change(lambda f, v=view: thumbnail(f, v), inputs=upload, outputs=thumbs[view],
                          show_progress="hidden")
    return app


class _StopServer(BaseException):
    """SIGTERM (what `kill` and service managers send), raised in the main thread like Ctrl-C."""


def _raise_stop(signum, frame):
    raise _StopServer()


def serve(checkpoint=None, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
          block: bool = True):
    """Start the app; returns the Gradio app (with block=False the server runs in a thread).

    Blocking, it runs until Ctrl-C or SIGTERM (even one that comes while it starts), then stops
    the server and removes its work folder; it removes it too when the server cannot start (a
    port in use).
    """
    reconstructor = Reconstructor(checkpoint, device=device)
    handle_term = block and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if handle_term else None
    app, started = None, False
    try:
        app = build_app(reconstructor)
        app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
        _launch(app, reconstructor, host, port)
        started = True
        if not block:
            atexit.register(reconstructor.close)
            return app
        while True:
            time.sleep(0.5)
    except (KeyboardInterrupt, _StopServer):
        if not block:
            raise
        # asked to stop: stop, and clean up below
    finally:
        if block or not started:
            if handle_term:
                signal.signal(signal.SIGTERM, previous)
            if app is not None:
                app.close()
            reconstructor.close()
    return app


def _launch(app, reconstructor: Reconstructor, host: str, port: int) -> None:
    examples = {str(ex.pa.parent) for ex in reconstructor.examples}
    try:
        # quiet: no "set share=True" hint (a public link is the last thing a medical tool should
        # suggest); the CLI prints the address itself
        app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                   prevent_thread_lock=True, max_file_size=f"{MAX_UPLOAD_MB}mb", ssr_mode=False,
                   allowed_paths=[str(reconstructor.workdir), *examples], quiet=True)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port} ({str(e).split('. ')[0]}); "
                         "is another server using that port? Pass --port N") from None
