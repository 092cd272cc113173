"""A study's self-contained HTML viewer, and an index page over many studies.

``viewer.html`` holds everything it shows: per slice one preview strip (lung | PE | mediastinal
window, grey WebP as a data URI), the activation map as an RGBA WebP overlay where one was
computed, the per-slice probabilities and the exam labels. No server, no network (a
Content-Security-Policy forbids fetching anything), no external script or style.

Privacy: the page carries the Study/Series/SOP Instance UIDs, z and the model's outputs only;
never patient tags, nor the series' folder path (folder names may carry a patient's name).
"""
import base64
import html
import json
from pathlib import Path

import cv2
import numpy as np

from .io import atomic_write_text
from .windows import WINDOWS

TEMPLATE = Path(__file__).with_name("viewer_template.html")
PREVIEW_SIZE = 256  # px per window; three windows side by side
QUALITY = 80  # WebP: about half the bytes of a JPEG at the same setting on noisy CT
OVERLAY_SIZE = 128  # Grad-CAM maps are smooth (a 2x2 to 16x16 feature map upsampled)
OVERLAY_ALPHA = 0.6  # opacity at a map's peak; below OVERLAY_FLOOR the slice shows through
OVERLAY_FLOOR = 0.2


def data_uri(img, fmt="webp", quality=QUALITY):
    """uint8 image (H, W) grey, (H, W, 3) BGR or (H, W, 4) BGRA -> ``data:image/...;base64,...``."""
    flag = cv2.IMWRITE_WEBP_QUALITY if fmt == "webp" else cv2.IMWRITE_JPEG_QUALITY
    ok, buf = cv2.imencode(f".{fmt}", img, [flag, int(quality)])
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {img.shape} image as {fmt}")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def window_strip(rgb):
    """uint8 (3, s, s) in WINDOWS order -> grey (s, 3 s): the windows side by side."""
    return np.ascontiguousarray(np.concatenate(list(rgb), axis=1))


def cam_overlay(cam, size=OVERLAY_SIZE):
    """Map (H, W) in [0, 1] -> BGRA uint8 (size, size): jet colours, opacity rising with the map."""
    m = cv2.resize(np.asarray(cam, np.float32), (size, size), interpolation=cv2.INTER_AREA)
    m = np.clip(m, 0, 1)
    bgr = cv2.applyColorMap(np.rint(m * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.clip((m - OVERLAY_FLOOR) / (1 - OVERLAY_FLOOR), 0, 1) * OVERLAY_ALPHA
    return np.dstack([bgr, np.rint(alpha * 255).astype(np.uint8)])


def viewer_data(study, series, infos, img_prob, exam, previews, cams=None, cam_note=""):
    """The page's data: ``infos`` (SliceInfo in z order), ``img_prob`` (S,), ``exam`` {label: p},
    ``previews`` uint8 (S, 3, s, s), ``cams`` {slice index: map (s, s)}."""
    cams = cams or {}
    img_prob = np.asarray(img_prob, dtype=np.float64)
    slices = [{"sop": str(i.sop), "z": None if i.z is None else float(i.z), "p": float(p),
               "img": data_uri(window_strip(previews[k])),
               "cam": data_uri(cam_overlay(cams[k])) if k in cams else None,
               "cam_empty": bool(k in cams and not np.max(cams[k]) > 0)}
              for k, (i, p) in enumerate(zip(infos, img_prob))]
    return {"study": str(study), "series": str(series), "preview": int(previews.shape[-1]),
            "windows": list(WINDOWS), "exam": {k: float(v) for k, v in exam.items()},
            "pe_present": bool(img_prob.max() > 0.5), "max_prob": float(img_prob.max()),
            "start": int(np.argmax(img_prob)), "cam_note": cam_note, "slices": slices}


def render_viewer(data):
    """The viewer page for ``viewer_data(...)``."""
    # "</" inside a script element would end it early; JSON allows the escaped form.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"PE viewer: study {data['study']}")
    page = TEMPLATE.read_text()
    return (page.replace("__TITLE__", title).replace("__HEADING__", title)
            .replace("__DATA__", payload))


def write_viewer(path, data):
    atomic_write_text(path, render_viewer(data))


_INDEX_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>PE predictions</title><style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.pos td { font-weight: 600; }
.uid { font-family: monospace; font-size: 12px; }
</style></head><body>
<h1 style="font-size:16px">PE predictions, most probable first</h1>
<p>P(PE) is the largest per-slice probability; an exam is positive above 0.5.
A research model, not a medical device.</p>
<table id="studies"><thead><tr><th>#</th><th>study</th><th>slices</th><th>P(PE)</th>
<th>PE</th><th>exam labels &gt; 0.5</th></tr></thead><tbody>
"""


def _index_row(rank, r):
    study = html.escape(str(r["study"]))
    if r.get("error"):
        return (f"<tr><td>{rank}</td><td class='uid'>{study}</td><td colspan='4'>not read: "
                f"{html.escape(str(r['error']))}</td></tr>")
    pos = [k for k, v in r["exam"].items() if v > 0.5]
    return (f"<tr class='{'pos' if r['max_prob'] > 0.5 else ''}'><td>{rank}</td>"
            f"<td class='uid'><a href='{html.escape(r['href'])}'>{study}</a></td>"
            f"<td class='num'>{r['slices']}</td><td class='num'>{r['max_prob']:.3f}</td>"
            f"<td>{'present' if r['max_prob'] > 0.5 else 'absent'}</td>"
            f"<td>{html.escape(', '.join(pos))}</td></tr>")


def write_index(path, rows):
    """``index.html`` linking each study's viewer, by P(PE) (max slice probability) descending;
    rows: {study, href, slices, max_prob, exam} or {study, error}."""
    ok = sorted((r for r in rows if not r.get("error")), key=lambda r: (-r["max_prob"], r["study"]))
    bad = sorted((r for r in rows if r.get("error")), key=lambda r: r["study"])
    body = "".join(_index_row(i + 1, r) + "\n" for i, r in enumerate(ok + bad))
    atomic_write_text(path, _INDEX_HEAD + body + "</tbody></table></body></html>\n")
