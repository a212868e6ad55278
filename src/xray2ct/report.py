"""Self-contained HTML reports: one file that opens anywhere, offline, with no server.

Everything is inside the page: the input X-rays as PNG data URIs, the volume as base64
int16 HU (and the uncertainty as uint8) drawn by a few lines of JavaScript into canvases
with a slider per plane, window presets and an uncertainty overlay, and the bone surface
as a rotatable flat-shaded mesh. No script or style is fetched from the network, so the
report can be mailed or archived next to the NIfTI it describes. The slices carry the
patient's sides (R/L, A/P, S/I, from `viz.orientation_labels`), the HU under the pointer,
a numeric window (level, width) beside the presets and a legend for the uncertainty colours.

    reconstruction_report(path, ...)   one reconstruction (`xray2ct reconstruct --report`)
    evaluation_report(path, ...)       metrics of a split (`xray2ct evaluate --report`)
    viewer_page(...)                   the viewer alone, as a string: what the web app embeds
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from xray2ct.fileio import atomic_path
from xray2ct.viz import PLANE_AXIS, PLANES, WINDOWS, XRAY_PLANE, orientation_labels, plane_axes, uncertainty_scale

MAX_SIDE = 128  # volumes are subsampled to at most this many voxels per axis (keeps the file small)
MAX_FACES = 60_000  # the canvas renderer stays interactive below this
DEFAULT_WINDOW = "soft tissue"
HOVER_HINT = "Point at a slice to read its HU value."


def png_data_uri(image: np.ndarray) -> str:
    """2D grey (float in [0, 1] or uint8) or (H, W, 3) uint8 image -> 'data:image/png;base64,...'."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_data_uri(path: str | os.PathLike, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _volume_payload(hu: np.ndarray, spacing, std_hu: np.ndarray | None) -> dict:
    """The viewer's data: int16 HU and uint8 std (0..255 = 0..std_max), subsampled to MAX_SIDE."""
    step = max(1, -(-max(hu.shape) // MAX_SIDE))
    hu = hu[::step, ::step, ::step]
    payload = {"shape": list(hu.shape), "spacing": [float(s) * step for s in spacing],
               "hu": _b64(np.clip(np.rint(hu), -32768, 32767).astype("<i2")),
               "windows": {k: list(v) for k, v in WINDOWS.items()}, "std": None, "std_max": None,
               # which (d, h, w) axis each plane cuts, and which run along its rows and columns
               "planes": {p: dict(zip(("axis", "rows", "cols"), (PLANE_AXIS[p], *plane_axes(p)))) for p in PLANES}}
    if std_hu is not None:
        std = std_hu[::step, ::step, ::step]
        top = uncertainty_scale(std)
        payload.update(std=_b64(np.clip(std / top * 255 + 0.5, 0, 255).astype(np.uint8)), std_max=top)
    return payload


def _mesh_payload(mesh) -> dict | None:
    if mesh is None or mesh.num_faces == 0:
        return None
    faces = mesh.faces
    if len(faces) > MAX_FACES:  # keep an even subset: a preview, not the surface of record
        faces = faces[np.linspace(0, len(faces) - 1, MAX_FACES).astype(np.int64)]
    return {"v": _b64(mesh.vertices.astype("<f4")), "f": _b64(faces.astype("<u4")), "faces": int(mesh.num_faces)}


def _table(rows: list[list], header: list[str]) -> str:
    esc = lambda v: html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, sections: list[str], volume: dict | None = None, mesh: dict | None = None,
          embedded: bool = False) -> str:
    data = json.dumps({"volume": volume, "mesh": mesh})
    return (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__CLASS__", "embedded" if embedded else "")
            .replace("__HOVER_HINT__", json.dumps(HOVER_HINT))
            .replace("__BODY__", "\n".join(sections))
            .replace("__DATA__", data.replace("</", "<\\/")))


def _sides(plane: str) -> str:
    """The patient's side at each edge of a picture of `plane`, as letters laid over it."""
    return "".join(f'<span class="side {edge}">{side}</span>' for edge, side in orientation_labels(plane).items())


def _plane_figure(plane: str) -> str:
    """One slice canvas with the patient's side written at each edge, its slider and caption."""
    return (f'<figure><div class="view"><canvas id="c-{plane}"></canvas>{_sides(plane)}</div>'
            f'<input type="range" id="s-{plane}" min="0" aria-label="{plane} slice">'
            f'<figcaption>{plane} <span id="n-{plane}"></span></figcaption></figure>')


def _slices_section(volume: dict) -> str:
    presets = "".join(f'<option value="{html.escape(w)}"{" selected" if w == DEFAULT_WINDOW else ""}>'
                      f"{html.escape(w)}</option>" for w in WINDOWS) + '<option value="custom">custom</option>'
    level, width = WINDOWS[DEFAULT_WINDOW]
    controls = (f'<label>window <select id="win">{presets}</select></label> '
                f'<label>level <input type="number" id="wl-c" value="{level:g}" step="10"> HU</label> '
                f'<label>width <input type="number" id="wl-w" value="{width:g}" min="1" step="10"> HU</label> ')
    if volume["std"] is not None:
        # the overlay's colours, and the std they stand for (the scale stops at the 99th percentile)
        controls += ('<label><input type="checkbox" id="unc"> uncertainty overlay</label> '
                     '<span id="legend" hidden title="predicted standard deviation of each voxel\'s HU; '
                     'the colour scale stops at the volume\'s 99th percentile">predicted std: 0 '
                     '<canvas id="legend-bar" width="128" height="10"></canvas> '
                     f'&ge; {volume["std_max"]:.3g} HU</span>')
    else:
        controls += '<input type="checkbox" id="unc" hidden>'
    figures = "".join(_plane_figure(p) for p in PLANES)
    return (f'<section><h2>Slices</h2><p class="controls">{controls}</p><div class="row">{figures}</div>'
            f'<p id="readout" class="readout">{HOVER_HINT}</p></section>')


def _surface_section(mesh: dict) -> str:
    return (f'<section><h2>Bone surface</h2><p class="note">{mesh["faces"]} triangles; seen from the front '
            "(patient's right on the left, head up); drag to rotate</p>"
            '<canvas id="mesh" width="480" height="480" aria-label="bone surface"></canvas></section>')


def _viewer_sections(volume: dict | None, mesh: dict | None) -> list[str]:
    parts = ([_slices_section(volume)] if volume is not None else []) + ([_surface_section(mesh)] if mesh else [])
    return [f'<div class="viewer">{"".join(parts)}</div>'] if parts else []


def viewer_page(hu: np.ndarray, spacing, std_hu: np.ndarray | None = None, mesh=None,
                title: str = "xray2ct viewer") -> str:
    """The slices and the bone surface alone, as an HTML page (a string, nothing written): the
    web app shows it in an iframe, so the app and the report draw with the same code."""
    volume, mesh_data = _volume_payload(np.asarray(hu), spacing, std_hu), _mesh_payload(mesh)
    return _page(title, _viewer_sections(volume, mesh_data), volume, mesh_data, embedded=True)


def write_html(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def reconstruction_report(path: str | os.PathLike, hu: np.ndarray, spacing, xrays: dict[str, np.ndarray],
                          std_hu: np.ndarray | None = None, metrics: dict[str, float] | None = None,
                          mesh=None, title: str = "xray2ct reconstruction", details: dict | None = None,
                          projections: str | None = None) -> Path:
    """One reconstruction as a self-contained HTML page.

    Args:
        hu: (D, H, W) volume in HU; spacing: its voxel size in mm.
        xrays: {"PA": image, "lateral": image}, model inputs in [0, 1].
        std_hu: optional predicted std in HU (same shape): the overlay.
        metrics: optional {name: value} against a ground truth.
        mesh: optional `xray2ct.surface.Mesh` (the bone surface).
        details: optional {label: value} shown as a table (checkpoint, sizes, timings).
        projections: optional HTML from `projection_section` (inputs against the result's DRRs).
    """
    figs = "".join(f'<figure><div class="view"><img src="{png_data_uri(img)}" alt="{html.escape(name)} X-ray">'
                   f'{_sides(XRAY_PLANE[name]) if name in XRAY_PLANE else ""}</div>'
                   f"<figcaption>{html.escape(name)} (as the model reads it)</figcaption></figure>"
                   for name, img in xrays.items())
    sections = [f'<h2>Input X-rays</h2><div class="row">{figs}</div>']
    if metrics:
        sections.append("<h2>Metrics against the ground truth</h2>"
                        + _table([[k, f"{v:.4g}"] for k, v in metrics.items()], ["metric", "value"]))
    if projections:
        sections.append(projections)
    if details:
        sections.append("<h2>Details</h2>" + _table([[k, v] for k, v in details.items()], ["", ""]))
    volume, mesh_data = _volume_payload(np.asarray(hu), spacing, std_hu), _mesh_payload(mesh)
    sections += _viewer_sections(volume, mesh_data)
    return write_html(path, _page(title, sections, volume, mesh_data))


DIFF_GAIN = 5  # the difference images are |input − DRR| × this: errors of 0.2 image units show white


def projection_section(xrays: dict[str, np.ndarray], reprojected: dict[str, np.ndarray],
                       network: dict[str, np.ndarray] | None = None, errors: tuple[float, float] | None = None) -> str:
    """HTML: each input X-ray beside the result's DRR (on the input's intensities) and their
    difference; with `network`, the network's own DRR and difference before refinement too.

    xrays, reprojected, network: {view name: (S, S) image in [0, 1]}; errors: the mean squared
    image error (before, after) refinement.
    """
    def figure(img, caption):
        return (f'<figure><img src="{png_data_uri(img)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    rows = []
    for name, x in xrays.items():
        cells = [figure(x, f"{name} input")]
        if network is not None:
            cells += [figure(network[name], f"{name}: DRR of the network's volume"),
                      figure(np.abs(x - network[name]) * DIFF_GAIN, f"|difference| × {DIFF_GAIN}, network")]
        label = "refined" if network is not None else "result"
        cells += [figure(reprojected[name], f"{name}: DRR of the {label} volume"),
                  figure(np.abs(x - reprojected[name]) * DIFF_GAIN, f"|difference| × {DIFF_GAIN}, {label}")]
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    note = ("<p>Does the volume explain the X-rays it came from? Each DRR of the result is mapped onto the "
            "input's intensities (a fitted exposure and fog) and subtracted.")
    if errors is not None:
        note += (f" Mean squared difference, both views: {errors[0]:.2e} from the network, "
                 f"{errors[1]:.2e} after refinement.")
    return "<h2>Physics check: the X-rays against the DRRs of the result</h2>" + note + "</p>" + "".join(rows)


def evaluation_report(path: str | os.PathLike, summary: dict, rows: list[dict], montages: list[Path] = (),
                      hu: np.ndarray | None = None, spacing=None, mesh=None,
                      title: str = "xray2ct evaluation") -> Path:
    """Metrics of an evaluated split (summary with 95 % CIs, every case) with montages and
    optionally one case's volume and bone surface, as a self-contained HTML page."""
    srows = []
    for name, s in summary.get("metrics", {}).items():
        ci = f"{s['ci95'][0]:.4g} – {s['ci95'][1]:.4g}" if s.get("ci95") else "-"
        srows.append([name, s.get("protocol", ""), f"{s['mean']:.4g}", ci, s.get("n", "")])
    sections = [f"<p>split <b>{html.escape(str(summary.get('split')))}</b>, "
                f"{summary.get('n_cases', len(rows))} case(s), checkpoint "
                f"<code>{html.escape(str(summary.get('checkpoint', '')))}</code></p>",
                "<h2>Summary</h2>" + _table(srows, ["metric", "protocol", "mean", "95% CI", "n"])]
    if rows:
        keys = list(rows[0])
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else v  # noqa: E731
        sections.append("<h2>Per case</h2>" + _table([[fmt(r.get(k, "")) for k in keys] for r in rows], keys))
    if montages:
        imgs = "".join(f'<figure><img class="wide" src="{file_data_uri(m)}" alt="{html.escape(Path(m).stem)}">'
                       f"<figcaption>{html.escape(Path(m).stem)}</figcaption></figure>" for m in montages)
        sections.append(f"<h2>Montages</h2>{imgs}")
    volume = _volume_payload(np.asarray(hu), spacing, None) if hu is not None else None
    mesh_data = _mesh_payload(mesh)
    sections += _viewer_sections(volume, mesh_data)
    return write_html(path, _page(title, sections, volume, mesh_data))


# The page: plain CSS and ~120 lines of JavaScript; nothing fetched.
_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
body.embedded{margin:0 4px;max-width:none}body.embedded>h1,body.embedded>.note{display:none}
h2{font-size:1.15em;margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}.row,.viewer{display:flex;flex-wrap:wrap;gap:1em}.viewer{gap:1.5em}figure{margin:0}
figure img,figure canvas{width:256px;image-rendering:pixelated;background:#000;display:block}
img.wide{width:100%;max-width:1100px;image-rendering:auto}input[type=range]{width:256px}
.view{position:relative}.view canvas{cursor:crosshair}
.side{position:absolute;color:#ffd54a;font:600 13px system-ui,sans-serif;text-shadow:0 0 3px #000,0 0 2px #000;pointer-events:none}
.side.top{top:2px;left:50%;transform:translateX(-50%)}.side.bottom{bottom:2px;left:50%;transform:translateX(-50%)}
.side.left{left:4px;top:50%;transform:translateY(-50%)}.side.right{right:4px;top:50%;transform:translateY(-50%)}
.viewer>section:first-child{flex:0 1 820px}.controls label,#legend{margin-right:.8em;white-space:nowrap}.controls input[type=number]{width:5.5em}
#legend-bar{vertical-align:middle;border:1px solid #888}
.readout{font-variant-numeric:tabular-nums;min-height:1.3em;margin:.3em 0}
#mesh{background:#111;cursor:grab}.note{color:#666;font-size:.9em}
body.embedded #mesh{width:320px;height:320px}body.embedded .viewer .note{max-width:320px}
</style></head><body class="__CLASS__">
<h1>__TITLE__</h1>
__BODY__
<p class="note">Research use only; not for diagnosis. Generated by xray2ct.</p>
<script>
const DATA = __DATA__;
const $ = id => document.getElementById(id);
function decode(s, T) { const b = atob(s), u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return new T(u.buffer); }
const heat = s => [Math.min(1, 2 * s), Math.max(0, 2 * s - 1), 0];  // uncertainty colours: black -> red -> yellow
if (DATA.volume) {
  const V = DATA.volume, S = V.shape, sp = V.spacing, stride = [S[1] * S[2], S[2], 1];
  const hu = decode(V.hu, Int16Array), std = V.std ? decode(V.std, Uint8Array) : null;
  const win = $("win"), level = $("wl-c"), width = $("wl-w"), unc = $("unc");
  // a plane shows voxels (k, r, c) along (its cut axis, its rows' axis, its columns' axis) of (d, h, w)
  const at = (p, k, r, c) => k * stride[p.axis] + r * stride[p.rows] + c * stride[p.cols];
  function draw(name) {
    const p = V.planes[name], R = S[p.rows], C = S[p.cols], k = +$("s-" + name).value;
    const cv = $("c-" + name), ctx = cv.getContext("2d");
    cv.width = C; cv.height = R; cv.style.height = (256 * R * sp[p.rows] / (C * sp[p.cols])) + "px";
    const img = ctx.createImageData(C, R), w = Math.max(1, +width.value), lo = +level.value - w / 2;
    const overlay = unc.checked && std;
    for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) {
      const i = at(p, k, r, c), o = (r * C + c) * 4;
      const g = Math.min(1, Math.max(0, (hu[i] - lo) / w));
      let rgb = [g, g, g];
      if (overlay) { const h = heat(std[i] / 255); rgb = rgb.map((x, j) => .5 * x + .5 * h[j]); }
      img.data[o] = 255 * rgb[0]; img.data[o + 1] = 255 * rgb[1]; img.data[o + 2] = 255 * rgb[2]; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    $("n-" + name).textContent = (k + 1) + " / " + S[p.axis];
  }
  function drawAll() {
    Object.keys(V.planes).forEach(draw);
    if ($("legend")) $("legend").hidden = !unc.checked;
  }
  function readout(name, e) {  // the voxel under the pointer: its position and HU (and predicted std)
    const p = V.planes[name], cv = $("c-" + name), R = S[p.rows], C = S[p.cols], k = +$("s-" + name).value;
    const r = Math.min(R - 1, Math.max(0, Math.floor(e.offsetY / cv.clientHeight * R)));
    const c = Math.min(C - 1, Math.max(0, Math.floor(e.offsetX / cv.clientWidth * C)));
    const v = [0, 0, 0]; v[p.axis] = k; v[p.rows] = r; v[p.cols] = c;
    const i = at(p, k, r, c);
    let text = `${name}, voxel (${v.join(", ")}): ${hu[i]} HU`;
    if (std) text += `, predicted std ${std[i] === 255 ? "≥ " : ""}${Math.round(std[i] / 255 * V.std_max)} HU`;
    $("readout").textContent = text;
  }
  for (const name of Object.keys(V.planes)) {
    const s = $("s-" + name), n = S[V.planes[name].axis], cv = $("c-" + name);
    s.max = n - 1; s.value = Math.floor(n / 2);
    s.addEventListener("input", () => draw(name));
    cv.addEventListener("mousemove", e => readout(name, e));
    cv.addEventListener("mouseleave", () => $("readout").textContent = __HOVER_HINT__);
  }
  win.addEventListener("change", () => {  // a preset fills in level and width
    const w = V.windows[win.value]; if (w) { level.value = w[0]; width.value = w[1]; } drawAll(); });
  for (const box of [level, width]) box.addEventListener("input", () => {  // typed numbers: a preset if they match one
    win.value = Object.keys(V.windows).find(k => V.windows[k][0] == +level.value && V.windows[k][1] == +width.value) || "custom";
    drawAll(); });
  unc.addEventListener("change", drawAll);
  const bar = $("legend-bar");
  if (bar) { const b = bar.getContext("2d");
    for (let x = 0; x < bar.width; x++) { const h = heat(x / (bar.width - 1));
      b.fillStyle = `rgb(${255 * h[0]},${255 * h[1]},${255 * h[2]})`; b.fillRect(x, 0, 1, bar.height); } }
  drawAll();
}
if (DATA.mesh) {
  const v = decode(DATA.mesh.v, Float32Array), f = decode(DATA.mesh.f, Uint32Array);
  const cv = $("mesh"), ctx = cv.getContext("2d");
  let yaw = 0, pitch = 0, radius = 1e-9, drag = null;
  for (let i = 0; i < v.length; i++) radius = Math.max(radius, Math.abs(v[i]));
  function render() {
    const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), spi = Math.sin(pitch);
    const n = v.length / 3, p = new Float32Array(v.length);
    for (let i = 0; i < n; i++) {  // rotate about y (yaw), then x (pitch)
      const x = v[3 * i], y = v[3 * i + 1], z = v[3 * i + 2];
      const x1 = cy * x + sy * z, z1 = -sy * x + cy * z;
      p[3 * i] = x1; p[3 * i + 1] = cp * y - spi * z1; p[3 * i + 2] = spi * y + cp * z1;
    }
    const m = f.length / 3, order = new Uint32Array(m), depth = new Float32Array(m);
    for (let t = 0; t < m; t++) { order[t] = t; depth[t] = p[3 * f[3 * t] + 2] + p[3 * f[3 * t + 1] + 2] + p[3 * f[3 * t + 2] + 2]; }
    order.sort((a, b) => depth[a] - depth[b]);  // painter's algorithm: far (small z) first
    const s = 0.45 * cv.width / radius, h = cv.width / 2;
    ctx.fillStyle = "#111"; ctx.fillRect(0, 0, cv.width, cv.height);
    for (const t of order) {
      const a = 3 * f[3 * t], b = 3 * f[3 * t + 1], c = 3 * f[3 * t + 2];
      const ux = p[b] - p[a], uy = p[b + 1] - p[a + 1], uz = p[b + 2] - p[a + 2];
      const wx = p[c] - p[a], wy = p[c + 1] - p[a + 1], wz = p[c + 2] - p[a + 2];
      const nx = uy * wz - uz * wy, ny = uz * wx - ux * wz, nz = ux * wy - uy * wx;
      // headlight: a face turned to the viewer is bright, one seen edge-on dark
      const shade = 0.25 + 0.75 * Math.abs(nz) / (Math.hypot(nx, ny, nz) || 1);
      const g = Math.round(235 * shade);
      ctx.fillStyle = ctx.strokeStyle = `rgb(${g},${Math.round(g * 0.95)},${Math.round(g * 0.85)})`;
      ctx.beginPath(); ctx.moveTo(h + s * p[a], h - s * p[a + 1]);
      ctx.lineTo(h + s * p[b], h - s * p[b + 1]); ctx.lineTo(h + s * p[c], h - s * p[c + 1]);
      ctx.closePath(); ctx.fill(); ctx.stroke();
    }
    cv.dataset.rendered = "1";
  }
  cv.addEventListener("mousedown", e => drag = [e.clientX, e.clientY]);
  window.addEventListener("mouseup", () => drag = null);
  cv.addEventListener("mousemove", e => { if (!drag) return;
    yaw += (e.clientX - drag[0]) * 0.01; pitch += (e.clientY - drag[1]) * 0.01; drag = [e.clientX, e.clientY]; render(); });
  // say it is coming, let the browser paint that, then draw (a large mesh takes a moment)
  ctx.fillStyle = "#111"; ctx.fillRect(0, 0, cv.width, cv.height);
  ctx.fillStyle = "#bbb"; ctx.font = "16px system-ui, sans-serif"; ctx.textAlign = "center";
  ctx.fillText("rendering the bone surface…", cv.width / 2, cv.height / 2);
  requestAnimationFrame(() => setTimeout(render, 0));
}
try {  // inside the web app's iframe: grow the frame to the page, so nothing scrolls twice
  const frame = window.frameElement;
  // the body's own extent: the document's scrollHeight never drops below the frame, so it could only grow
  if (frame) { const fit = () => frame.style.height = Math.ceil(document.body.getBoundingClientRect().bottom + 16) + "px";
    fit(); new ResizeObserver(fit).observe(document.body); }
} catch (e) { /* a frame of another origin: keep its own height */ }
</script></body></html>
"""
