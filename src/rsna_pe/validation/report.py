"""report.md and a self-contained report.html from the validation's numbers (metrics.json).

Both are rendered from one list of blocks, so they say the same. The page follows the study
viewer's safety rules: every value is escaped for HTML, there is no script at all, and a
Content-Security-Policy forbids loading anything (the plots are data: URIs).
"""
import base64
import html

import numpy as np

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
         "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}"
         "img{max-width:100%}.note{color:#555}")


def f3(x):
    return "-" if x is None or not np.isfinite(x) else f"{x:.3f}"


def with_ci(value, ci):
    return f"{f3(value)} [{f3(ci[0])}, {f3(ci[1])}]" if ci and np.isfinite(value) else f3(value)


def rate(r):
    """'0.900 [0.745, 0.965] (18/20)' of a rate from metrics.at_threshold."""
    return f"{with_ci(r['value'], r['ci'])} ({r['k']}/{r['n']})"


def _label_rows(labels):
    return [[label, m["n"], f"{m['n_pos']} ({f3(m['prevalence'])})", with_ci(m["auc"], m["auc_ci"]),
             with_ci(m["brier"], m["brier_ci"]), f3(m["ece"])] for label, m in labels.items()]


def _point_rows(labels):
    rows = []
    for label, m in labels.items():
        for op in m["fixed"]:
            rows.append([label, f3(op["target_sensitivity"]), f3(op["threshold"]),
                         f3(op.get("dev_sensitivity", float("nan"))), rate(op["sensitivity"]),
                         rate(op["specificity"]), rate(op["ppv"]), rate(op["npv"])])
    return rows


def _best_rows(labels):
    return [[label, f3(m["site_best"]["threshold"]), rate(m["site_best"]["sensitivity"]),
             rate(m["site_best"]["specificity"]), rate(m["site_best"]["ppv"]), rate(m["site_best"]["npv"])]
            for label, m in labels.items() if m["site_best"]]


LABEL_HEAD = ["label", "studies", "positives (prevalence)", "AUC [95 % CI]", "Brier [95 % CI]", "ECE"]
RATE_HEAD = ["sensitivity", "specificity", "PPV", "NPV"]


def overview_blocks(res, images):
    s = res["settings"]
    blocks = [("h1", "Site validation"),
              ("p", f"Labels: {res['inputs']['labels']}. Predictions: {res['inputs']['predictions']} "
                    f"({res['inputs']['kind']}). Studies with both: {res['inputs']['n_studies']}."),
              ("p", f"Intervals: 95 %; AUC and Brier by a stratified bootstrap of {s['n_boot']} resamples "
                    f"(seed {s['seed']}); rates by Wilson's score interval. A call is positive when "
                    f"p >= threshold. pe_present is predicted by the study's largest image probability. "
                    f"ECE over {s['ece_bins']} equal-width bins. Definitions: docs/validation.md.")]
    if res["notes"]:
        blocks.append(("ul", res["notes"]))
    cs = res["competition_score"]
    blocks.append(("h2", "Competition score (weighted log loss, lower is better)"))
    blocks.append(("p", f"{f3(cs['value'])} ({cs['kind']}). {cs['note']}" if cs["value"] is not None
                   else f"Not computed: {cs['note']}"))
    blocks += [("h2", "Per label"), ("table", LABEL_HEAD, _label_rows(res["labels"])),
               ("img", "roc.png", images.get("roc.png"), "ROC curves with 95 % bootstrap bands"),
               ("img", "reliability.png", images.get("reliability.png"), "reliability diagrams")]
    blocks.append(("h2", "Operating points fixed in advance (development cross-validation)"))
    rows = _point_rows(res["labels"])
    if rows:
        blocks.append(("table", ["label", "target sensitivity", "threshold", "dev sensitivity", *RATE_HEAD], rows))
    else:
        blocks.append(("p", f"None applied ({res['inputs']['operating_points'] or 'no --operating-points given'})."))
    blocks += [("h2", "The site's own best threshold (Youden; chosen on these data, so optimistic)"),
               ("table", ["label", "threshold", *RATE_HEAD], _best_rows(res["labels"]))]
    return blocks


def subgroup_blocks(res, images):
    if not res["subgroups"]:
        return [("h2", "Subgroups"), ("p", res["subgroup_note"])]
    blocks = [("h2", "Subgroups"), ("p", f"Groups under {res['settings']['min_group']} studies are pooled "
                                         "(named 'pooled: ...'). Every label, per group:")]
    if res["subgroup_notes"]:
        blocks.append(("ul", res["subgroup_notes"]))
    head = ["group", "label", "studies", "positives", "AUC [95 % CI]", "Brier [95 % CI]", "ECE",
            "sens. at 1st fixed point", "spec. at 1st fixed point"]
    for column, gs in res["subgroups"].items():
        rows = []
        for g in gs:
            for label, m in g["labels"].items():
                op = m["fixed"][0] if m["fixed"] else None
                name = g["group"] + (" (under the minimum)" if g["below_minimum"] else "")
                rows.append([name, label, m["n"], m["n_pos"], with_ci(m["auc"], m["auc_ci"]),
                             with_ci(m["brier"], m["brier_ci"]), f3(m["ece"]),
                             rate(op["sensitivity"]) if op else "-", rate(op["specificity"]) if op else "-"])
        blocks += [("h3", f"by {column}"), ("table", head, rows)]
    blocks.append(("img", "forest.png", images.get("forest.png"), "forest plot of AUC by subgroup"))
    return blocks


def calibration_blocks(res, images):
    cal = res["calibration"]
    if cal is None:
        return []
    blocks = [("h2", f"Calibration ({cal['method']}) on a calibration split"),
              ("p", f"Fit on {cal['n_calibration']} studies ({f3(cal['fraction'])} of each pe_present stratum, "
                    f"seed {cal['seed']}), shown on the {cal['n_held_out']} held-out studies; "
                    f"parameters in {cal['file']}.")]
    if cal["not_fit"]:
        blocks.append(("p", f"Not calibrated (under {cal['min_per_class']} studies of a class among the "
                            "calibration studies): " + ", ".join(cal["not_fit"]) + "."))
    rows = []
    for label, c in cal["labels"].items():
        b, a = c["before"], c["after"]
        params = ", ".join(f"{k} {v:.3f}" for k, v in c["params"].items())
        rows.append([label, params, b["n"], f"{f3(b['ece'])} -> {f3(a['ece'])}",
                     f"{f3(b['brier'])} -> {f3(a['brier'])}", f"{f3(b['log_loss'])} -> {f3(a['log_loss'])}"])
    blocks += [("table", ["label", "parameters", "held-out studies", "ECE before -> after",
                          "Brier before -> after", "log loss before -> after"], rows),
               ("img", "calibration.png", images.get("calibration.png"),
                "held-out reliability before and after calibration")]
    return blocks


def blocks_of(res, images):
    return overview_blocks(res, images) + subgroup_blocks(res, images) + calibration_blocks(res, images)


def _md_text(x):
    # Escaped so that a value can neither break a table nor become markup where md renders HTML.
    return str(x).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def render_md(blocks):
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + _md_text(rest[0]))
        elif kind == "p":
            out.append(_md_text(rest[0]))
        elif kind == "ul":
            out.append("\n".join("- " + _md_text(x) for x in rest[0]))
        elif kind == "table":
            head, rows = rest
            lines = ["| " + " | ".join(map(_md_text, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(_md_text, r)) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "img" and rest[1] is not None:
            out.append(f"![{_md_text(rest[2])}]({rest[0]})")
    return "\n\n".join(out) + "\n"


def _html_block(kind, rest):
    e = html.escape
    if kind in ("h1", "h2", "h3", "p"):
        return f"<{kind}>{e(str(rest[0]))}</{kind}>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li class=\"note\">{e(str(x))}</li>" for x in rest[0]) + "</ul>"
    if kind == "table":
        head, rows = rest
        th = "".join(f"<th>{e(str(h))}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
    if kind == "img" and rest[1] is not None:
        data = base64.b64encode(rest[1]).decode("ascii")
        return f"<img src=\"data:image/png;base64,{data}\" alt=\"{e(str(rest[2]))}\">"
    return ""


def render_html(blocks, title="Site validation"):
    body = "\n".join(_html_block(kind, rest) for kind, *rest in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{html.escape(CSP)}\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
