"""A study's self-contained HTML viewer, and an index page over many studies.

``viewer.html`` holds everything it shows: per slice one preview strip (lung | PE | mediastinal
window, grey WebP as a data URI), the activation map as an RGBA WebP overlay where one was
computed, the per-slice probabilities and the exam labels. No server, no network (a
Content-Security-Policy forbids fetching anything), no external script or style.

Privacy: the page carries the Study/Series/SOP Instance UIDs, z and the model's outputs only;
never patient tags, nor file or folder names (they may carry a patient's name).

Hostile input: every value (header, config) is text. Pages are filled in one pass (a value that
spells a placeholder stays literal), values are HTML-escaped or serialised into the JSON data
block with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, and a content policy allows only the
page's own script and style (by their sha256 hash), images from ``data:`` and nothing else.
"""
import base64
import hashlib
import html
import re
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from ..core.io import atomic_write_text, strict_json
from ..data.windows import WINDOWS

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


def viewer_data(study, series, infos, img_prob, exam, previews, cams=None, cam_note="", no_maps=""):
    """The page's data: ``infos`` (SliceInfo in z order), ``img_prob`` (S,), ``exam`` {label: p},
    ``previews`` uint8 (S, 3, s, s), ``cams`` {slice index: map (s, s)}; ``no_maps``: why the
    page can have no activation maps (shown beside the map toggle), if that is so."""
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
            "start": int(np.argmax(img_prob)), "cam_note": cam_note, "slices": slices,
            **({"no_maps": str(no_maps)} if no_maps else {})}


_PLACEHOLDER = re.compile(r"__([A-Z]+)__")
_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S),  # the data block has a type
           "style": re.compile(r"<style>(.*?)</style>", re.S)}
# Characters that could end or confuse the data block, as JSON escapes (valid in any string).
_JSON_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}


def content_policy(template):
    """The page's Content-Security-Policy: nothing from anywhere, except images from ``data:``
    and the template's own inline scripts and styles, allowed by their sha256 hash."""
    def sources(kind):
        hashes = [base64.b64encode(hashlib.sha256(t.encode()).digest()).decode("ascii")
                  for t in _INLINE[kind].findall(template)]
        return " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"
    return ("default-src 'none'; img-src data:; connect-src 'none'; base-uri 'none'; "
            f"form-action 'none'; style-src {sources('style')}; script-src {sources('script')}")


def fill(template, values):
    """``template`` with every ``__NAME__`` replaced by ``values[NAME]`` in one pass, so a value
    that spells a placeholder stays literal; ``__CSP__`` gets the template's content policy."""
    values = {"CSP": content_policy(template), **values}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def json_block(data, where):
    """Strict JSON (no NaN) safe inside ``<script type="application/json">``."""
    return strict_json(data, where, separators=(",", ":")).translate(_JSON_ESCAPES)


def render_viewer(data):
    """The viewer page for ``viewer_data(...)``."""
    title = html.escape(f"PE viewer: study {data['study']}")
    # Outside the script (whose hash the page's policy allows), and empty when maps can be made,
    # so those pages are as they were.
    no_maps = f' <span class="note">({html.escape(data["no_maps"])})</span>' if data.get("no_maps") else ""
    return fill(TEMPLATE.read_text(), {"TITLE": title, "HEADING": title, "NOMAPS": no_maps,
                                       "DATA": json_block(data, f"viewer of study {data['study']}")})


def write_viewer(path, data):
    atomic_write_text(path, render_viewer(data))


_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="__CSP__">
<title>PE predictions</title><style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; } h1 { font-size: 16px; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.pos td { font-weight: 600; }
.uid { font-family: monospace; font-size: 12px; }
</style></head><body>
<h1>PE predictions, most probable first</h1>
<p>P(PE) is the largest per-slice probability; an exam is positive above 0.5.
A research model, not a medical device.</p>
<table id="studies"><thead><tr><th>#</th><th>study</th><th>slices</th><th>P(PE)</th>
<th>PE</th><th>exam labels &gt; 0.5</th></tr></thead><tbody>
__ROWS__</tbody></table></body></html>
"""


def _index_row(rank, r):
    study = html.escape(str(r["study"]))
    if "error" in r:
        return (f"<tr><td>{rank}</td><td class='uid'>{study}</td><td colspan='4'>not read: "
                f"{html.escape(str(r['error']))}</td></tr>")
    pos = [k for k, v in r["exam"].items() if v > 0.5]
    return (f"<tr class='{'pos' if r['max_prob'] > 0.5 else ''}'><td>{rank}</td>"
            f"<td class='uid'><a href='{html.escape(quote(r['href']))}'>{study}</a></td>"
            f"<td class='num'>{r['slices']}</td><td class='num'>{r['max_prob']:.3f}</td>"
            f"<td>{'present' if r['max_prob'] > 0.5 else 'absent'}</td>"
            f"<td>{html.escape(', '.join(pos))}</td></tr>")


def render_index(rows):
    """``index.html`` linking each study's viewer, by P(PE) (max slice probability) descending;
    rows: {study, href, slices, max_prob, exam} or {study, error}. ``href`` is a relative path
    (URL-encoded here); no row may hold a file or folder name the user has not chosen to show."""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: (-r["max_prob"], str(r["study"])))
    bad = sorted((r for r in rows if "error" in r), key=lambda r: str(r["study"]))
    return fill(_INDEX, {"ROWS": "".join(_index_row(i + 1, r) + "\n" for i, r in enumerate(ok + bad))})


def write_index(path, rows):
    atomic_write_text(path, render_index(rows))
