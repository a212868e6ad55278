"""Self-contained HTML reports: one file that opens anywhere, offline, with no server.

Everything is inside the page: the input X-rays as PNG data URIs, the volume as base64
int16 HU (and the uncertainty as uint8) drawn by a few lines of JavaScript into canvases
with a slider per plane, window presets and an uncertainty overlay, and the bone surface
as a rotatable flat-shaded mesh. No script or style is fetched from the network, so the
report can be mailed or archived next to the NIfTI it describes.

    reconstruction_report(path, ...)   one reconstruction (`xray2ct reconstruct --report`)
    evaluation_report(path, ...)       metrics of a split (`xray2ct evaluate --report`)
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
from xray2ct.viz import PLANES, WINDOWS, uncertainty_scale

MAX_SIDE = 128  # volumes are subsampled to at most this many voxels per axis (keeps the file small)
MAX_FACES = 60_000  # the canvas renderer stays interactive below this


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
               "windows": {k: list(v) for k, v in WINDOWS.items()}, "std": None, "std_max": None}
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


def _page(title: str, sections: list[str], volume: dict | None = None, mesh: dict | None = None) -> str:
    data = json.dumps({"volume": volume, "mesh": mesh})
    return (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__BODY__", "\n".join(sections))
            .replace("__DATA__", data.replace("</", "<\\/")))


def _viewer_sections(volume: dict | None, mesh: dict | None) -> list[str]:
    out = []
    if volume is not None:
        windows = "".join(f'<option value="{html.escape(w)}"{" selected" if w == "soft tissue" else ""}>'
                          f"{html.escape(w)}</option>" for w in WINDOWS)
        unc = ('<label><input type="checkbox" id="unc"> uncertainty overlay</label>'
               if volume["std"] is not None else '<input type="checkbox" id="unc" hidden>')
        planes = "".join(f'<figure><canvas id="c-{p}"></canvas><input type="range" id="s-{p}" min="0">'
                         f'<figcaption>{p} <span id="n-{p}"></span></figcaption></figure>' for p in PLANES)
        out.append(f'<h2>Slices</h2><p>window <select id="win">{windows}</select> {unc}</p>'
                   f'<div class="row">{planes}</div>')
    if mesh is not None:
        out.append(f'<h2>Bone surface</h2><p>drag to rotate; {mesh["faces"]} triangles</p>'
                   '<canvas id="mesh" width="480" height="480"></canvas>')
    return out


def write_html(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def reconstruction_report(path: str | os.PathLike, hu: np.ndarray, spacing, xrays: dict[str, np.ndarray],
                          std_hu: np.ndarray | None = None, metrics: dict[str, float] | None = None,
                          mesh=None, title: str = "xray2ct reconstruction", details: dict | None = None) -> Path:
    """One reconstruction as a self-contained HTML page.

    Args:
        hu: (D, H, W) volume in HU; spacing: its voxel size in mm.
        xrays: {"PA": image, "lateral": image}, model inputs in [0, 1].
        std_hu: optional predicted std in HU (same shape): the overlay.
        metrics: optional {name: value} against a ground truth.
        mesh: optional `xray2ct.surface.Mesh` (the bone surface).
        details: optional {label: value} shown as a table (checkpoint, sizes, timings).
    """
    figs = "".join(f'<figure><img src="{png_data_uri(img)}" alt="{html.escape(name)} X-ray">'
                   f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, img in xrays.items())
    sections = [f'<h2>Input X-rays</h2><div class="row">{figs}</div>']
    if metrics:
        sections.append("<h2>Metrics against the ground truth</h2>"
                        + _table([[k, f"{v:.4g}"] for k, v in metrics.items()], ["metric", "value"]))
    if details:
        sections.append("<h2>Details</h2>" + _table([[k, v] for k, v in details.items()], ["", ""]))
    volume, mesh_data = _volume_payload(np.asarray(hu), spacing, std_hu), _mesh_payload(mesh)
    sections += _viewer_sections(volume, mesh_data)
    return write_html(path, _page(title, sections, volume, mesh_data))


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


# The page: plain CSS and ~70 lines of JavaScript; nothing fetched.
_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}.row{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
figure img,figure canvas{width:256px;image-rendering:pixelated;background:#000;display:block}
img.wide{width:100%;max-width:1100px;image-rendering:auto}input[type=range]{width:256px}
#mesh{background:#111;cursor:grab}.note{color:#666;font-size:.9em}
</style></head><body>
<h1>__TITLE__</h1>
__BODY__
<p class="note">Research use only; not for diagnosis. Generated by xray2ct.</p>
<script>
const DATA = __DATA__;
function decode(s, T) { const b = atob(s), u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return new T(u.buffer); }
if (DATA.volume) {
  const V = DATA.volume, [D, H, W] = V.shape, sp = V.spacing;
  const hu = decode(V.hu, Int16Array), std = V.std ? decode(V.std, Uint8Array) : null;
  // (rows, cols, index of voxel (k, r, c)) per plane, oriented as the PNG previews
  const planes = {
    axial: [D, H, W, (k, r, c) => (k * H + r) * W + c, sp[1], sp[2]],
    coronal: [H, D, W, (k, r, c) => (r * H + k) * W + c, sp[0], sp[2]],
    sagittal: [W, D, H, (k, r, c) => (r * H + c) * W + k, sp[0], sp[1]],
  };
  const win = document.getElementById("win"), unc = document.getElementById("unc");
  function draw(name) {
    const [n, R, C, at, sr, sc] = planes[name], slider = document.getElementById("s-" + name);
    const k = +slider.value, cv = document.getElementById("c-" + name), ctx = cv.getContext("2d");
    cv.width = C; cv.height = R; cv.style.height = (256 * R * sr / (C * sc)) + "px";
    const img = ctx.createImageData(C, R), [wc, ww] = V.windows[win.value], lo = wc - ww / 2;
    const overlay = unc.checked && std;
    for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) {
      const i = at(k, r, c), o = (r * C + c) * 4;
      const g = Math.min(1, Math.max(0, (hu[i] - lo) / ww));
      let rgb = [g, g, g];
      if (overlay) { const s = std[i] / 255;
        rgb = [.5 * g + .5 * Math.min(1, 2 * s), .5 * g + .5 * Math.max(0, 2 * s - 1), .5 * g]; }
      img.data[o] = 255 * rgb[0]; img.data[o + 1] = 255 * rgb[1]; img.data[o + 2] = 255 * rgb[2]; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    document.getElementById("n-" + name).textContent = (k + 1) + " / " + n;
  }
  const drawAll = () => Object.keys(planes).forEach(draw);
  for (const name of Object.keys(planes)) {
    const s = document.getElementById("s-" + name);
    s.max = planes[name][0] - 1; s.value = Math.floor(planes[name][0] / 2);
    s.addEventListener("input", () => draw(name));
  }
  win.addEventListener("change", drawAll); unc.addEventListener("change", drawAll); drawAll();
}
if (DATA.mesh) {
  const v = decode(DATA.mesh.v, Float32Array), f = decode(DATA.mesh.f, Uint32Array);
  const cv = document.getElementById("mesh"), ctx = cv.getContext("2d");
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
      const shade = 0.25 + 0.75 * Math.abs(nz) / (Math.hypot(nx, ny, nz) || 1);
      const g = Math.round(235 * shade);
      ctx.fillStyle = ctx.strokeStyle = `rgb(${g},${Math.round(g * 0.95)},${Math.round(g * 0.85)})`;
      ctx.beginPath(); ctx.moveTo(h + s * p[a], h - s * p[a + 1]);
      ctx.lineTo(h + s * p[b], h - s * p[b + 1]); ctx.lineTo(h + s * p[c], h - s * p[c + 1]);
      ctx.closePath(); ctx.fill(); ctx.stroke();
    }
  }
  cv.addEventListener("mousedown", e => drag = [e.clientX, e.clientY]);
  window.addEventListener("mouseup", () => drag = null);
  cv.addEventListener("mousemove", e => { if (!drag) return;
    yaw += (e.clientX - drag[0]) * 0.01; pitch += (e.clientY - drag[1]) * 0.01; drag = [e.clientX, e.clientY]; render(); });
  render();
}
</script></body></html>
"""
