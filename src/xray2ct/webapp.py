"""`xray2ct serve`: a local web app (Gradio). Two X-rays in, the CT explored in the browser.

    upload PA + lateral (PNG, JPEG, TIFF, DICOM, NPY) or pick a bundled example
      -> Reconstructor (model loaded once) -> HU volume, std, bone surface, files
      -> three slice views with sliders, window presets and an uncertainty overlay,
         a 3D bone surface, downloads (NIfTI volume and uncertainty, OBJ, HTML report)

The logic lives in plain functions (`Reconstructor`, `render_views`) that the tests call
directly; `build_app` only wires them to Gradio components. Requests go through Gradio's
queue one at a time (a reconstruction holds the model and a few volumes in memory), so a
burst of users waits in line instead of running the machine out of memory.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
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


class AppInputError(UserError, ValueError):
    """An upload the app cannot use; the message is shown in the page."""


class ServeError(UserError, OSError):
    """The server cannot start (port taken, address not on this machine)."""


@dataclass
class Result:
    """One reconstruction: arrays for the views and the files offered for download."""

    hu: np.ndarray  # (D, H, W) HU
    std_hu: np.ndarray | None  # (D, H, W) predicted std, HU
    spacing: tuple[float, float, float]
    files: dict[str, Path]  # "volume", "uncertainty", "surface", "report"
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # against the ground truth of a bundled example
    note: str = ""


def _uploaded_path(upload, view: str) -> Path:
    """Gradio gives a path string (or None when the view was not uploaded)."""
    if upload is None or upload == "":
        raise AppInputError(f"The {view} X-ray is missing: upload both a PA and a lateral image.")
    path = Path(getattr(upload, "name", upload))
    if not path.is_file():
        raise AppInputError(f"The {view} upload ({path.name}) could not be read; please upload it again.")
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise AppInputError(f"The {view} file {path.name} is {size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB.")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Reconstructor:
    """Loads the model once; each call reconstructs one pair into its own result folder.

    Args:
        checkpoint: .safetensors or run folder; None: the bundled default weights.
        device: "auto" | "cpu" | "cuda".
        workdir: where result folders go (default: a new temp folder).
    """

    def __init__(self, checkpoint=None, device: str = "cpu", workdir: str | Path | None = None) -> None:
        from xray2ct.engine.demo import bundled_examples
        from xray2ct.engine.reconstruct import load_for_inference

        self.model, self.cfg, self.device = load_for_inference(checkpoint, device)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="xray2ct-serve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.examples = bundled_examples()
        # ground truth of a bundled example is recognised by the PA file's content, whatever its name
        self._truth = {_digest(ex.pa): ex for ex in self.examples if ex.ct is not None}
        self._count = 0

    def __call__(self, pa, lat, progress: Callable[[float, str], None] = lambda f, desc: None) -> Result:
        from xray2ct.engine.reconstruct import load_pair, reconstruct_pair, save_report, save_volume
        from xray2ct.surface import try_bone_surface, write_obj

        started = time.perf_counter()
        pa, lat = _uploaded_path(pa, "PA"), _uploaded_path(lat, "lateral")
        progress(0.1, "reading the X-rays")
        try:
            xrays = load_pair(pa, lat, self.cfg.model.xray_img_size)
        except UserError as e:  # name the file as the user knows it, not by the server's upload folder
            raise AppInputError(str(e).replace(f"{pa.parent}/", "").replace(f"{lat.parent}/", "")) from None
        progress(0.3, "reconstructing")
        rec = reconstruct_pair(self.model, self.cfg, self.device, xrays)
        hu, std, spacing = rec.hu, rec.std_hu, rec.spacing
        out = self._new_folder()
        progress(0.6, "writing files")
        files = {"volume": save_volume(out / "ct.nii.gz", hu, spacing, "nifti")}
        if std is not None:
            files["uncertainty"] = save_volume(out / "uncertainty_std.nii.gz", std, spacing, "nifti", dtype="float32")
        progress(0.75, "bone surface")
        mesh, note = try_bone_surface(hu, spacing)
        if mesh is not None:
            write_obj(out / "bone_surface.obj", mesh)
            files["surface"] = out / "bone_surface.obj"
        metrics = self._metrics(pa, rec.volume)
        progress(0.9, "report")
        files["report"] = save_report(out / "report.html", hu, std, spacing, xrays, mesh=mesh,
                                      title=f"{pa.name} + {lat.name}", metrics=metrics or None)
        return Result(hu, std, spacing, files, time.perf_counter() - started, metrics, note)

    def _new_folder(self) -> Path:
        self._count += 1
        out = self.workdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._count:04d}"
        out.mkdir(parents=True)
        for old in sorted(p for p in self.workdir.iterdir() if p.is_dir())[:-KEEP_RESULTS]:
            shutil.rmtree(old, ignore_errors=True)
        return out

    def _metrics(self, pa: Path, volume) -> dict[str, float]:
        """Against the ground truth when the PA is a bundled example's, labelled for display."""
        from xray2ct.engine.demo import ground_truth_metrics

        ex = self._truth.get(_digest(pa))
        metrics = ground_truth_metrics(volume, ex.ct) if ex is not None else {}
        return {METRIC_LABELS[k]: v for k, v in metrics.items()}


def render_views(result: Result | None, window: str, overlay: bool, indices: tuple[int, int, int]):
    """The three slice images (RGB uint8) for the current sliders, window and overlay toggle."""
    from xray2ct.viz import PLANES, slice_rgb, uncertainty_scale

    if result is None:
        return [None, None, None]
    std = result.std_hu if overlay else None
    top = uncertainty_scale(std) if std is not None else None  # one colour scale for the three planes
    views = []
    for plane, index, n in zip(PLANES, indices, result.hu.shape):
        img = slice_rgb(result.hu, plane, int(np.clip(index, 0, n - 1)), window, std_hu=std, std_max=top)
        factor = max(1, 256 // max(img.shape[:2]))  # nearest-neighbour zoom: crisp voxels at a readable size
        views.append(np.kron(img, np.ones((factor, factor, 1), dtype=np.uint8)))
    return views


def summary_markdown(result: Result) -> str:
    d = result.hu.shape
    lines = [f"**Done in {result.seconds:.1f} s**: {d[0]}×{d[1]}×{d[2]} voxels of {result.spacing[0]:.1f} mm, HU."]
    if result.metrics:
        lines.append("Bundled example, compared with its ground truth: "
                     + ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items()))
    if result.note:
        lines.append(result.note)
    return "\n\n".join(lines)


def build_app(reconstructor: Reconstructor):
    """The Gradio Blocks app around a Reconstructor."""
    import gradio as gr

    from xray2ct.viz import PLANES, WINDOWS

    suffixes = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".npy"]
    with gr.Blocks(title="xray2ct", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("# xray2ct\nTwo plain X-rays (PA and lateral) in, a 3D CT volume out. "
                    "Research use only; not for diagnosis.")
        state = gr.State(None)
        with gr.Row():
            pa = gr.File(label="PA X-ray", file_types=suffixes, type="filepath", elem_id="pa-upload")
            lat = gr.File(label="Lateral X-ray", file_types=suffixes, type="filepath", elem_id="lat-upload")
        if reconstructor.examples:
            gr.Examples([[str(ex.pa), str(ex.lat)] for ex in reconstructor.examples], inputs=[pa, lat],
                        example_labels=[ex.id for ex in reconstructor.examples], label="Bundled examples")
        run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            window = gr.Radio(list(WINDOWS), value="soft tissue", label="Window")
            overlay = gr.Checkbox(False, label="Uncertainty overlay")
        n = reconstructor.cfg.model.volume_size
        sliders, images = [], []
        with gr.Row():
            for plane in PLANES:
                with gr.Column():
                    images.append(gr.Image(label=plane, type="numpy", interactive=False, elem_id=f"view-{plane}"))
                    sliders.append(gr.Slider(0, n - 1, value=n // 2, step=1, label=f"{plane} slice"))
        with gr.Row():
            surface = gr.Model3D(label="Bone surface (250 HU)", elem_id="surface", clear_color=(0.92, 0.92, 0.94, 1.0))
            downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")

        def reconstruct(pa_file, lat_file, window_name, show_std, progress=gr.Progress()):
            try:
                result = reconstructor(pa_file, lat_file, progress=lambda f, desc: progress(f, desc=desc))
            except UserError as e:  # bad input: say why in the page, keep serving
                raise gr.Error(str(e), print_exception=False) from None
            mid = tuple(s // 2 for s in result.hu.shape)
            views = render_views(result, window_name, show_std, mid)
            slider_updates = [gr.Slider(maximum=s - 1, value=m) for s, m in zip(result.hu.shape, mid)]
            files = [str(p) for p in result.files.values()]
            return [result, *views, *slider_updates, result.files.get("surface") and str(result.files["surface"]),
                    files, summary_markdown(result)]

        def redraw(result, window_name, show_std, i_ax, i_cor, i_sag):
            return render_views(result, window_name, show_std, (i_ax, i_cor, i_sag))

        run.click(reconstruct, inputs=[pa, lat, window, overlay],
                  outputs=[state, *images, *sliders, surface, downloads, status], concurrency_limit=1)
        view_inputs = [state, window, overlay, *sliders]
        for control in (window, overlay, *sliders):
            control.change(redraw, inputs=view_inputs, outputs=images, show_progress="hidden")
    return app


def serve(checkpoint=None, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
          block: bool = True):
    """Start the app; returns the Gradio app (with block=False the server runs in a thread)."""
    reconstructor = Reconstructor(checkpoint, device=device)
    app = build_app(reconstructor)
    app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    examples = {str(ex.pa.parent) for ex in reconstructor.examples}
    try:
        app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                   prevent_thread_lock=not block, max_file_size=f"{MAX_UPLOAD_MB}mb", ssr_mode=False,
                   allowed_paths=[str(reconstructor.workdir), *examples], quiet=not block)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port} ({str(e).split('. ')[0]}); "
                         "is another server using that port? Pass --port N") from None
    return app
