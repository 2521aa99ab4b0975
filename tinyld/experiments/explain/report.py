"""``report.html``: what ``explain`` measured, as one self-contained page to open in a browser (figures drawn as
inline SVG, no script, nothing fetched from the network): the summary table first, then one section per pair with
its curves and its response tokens coloured by the change of their log-probability (hover a token for the numbers),
then the run's config and versions."""
from __future__ import annotations

import html
import json

from tinyld.squeeze import MASS_CLASSES

COLORS = {"chosen": "#1f77b4", "rejected": "#d62728", "star": "#2ca02c"}
NAMES = {"chosen": "log π(y⁺|x)", "rejected": "log π(y⁻|x)", "star": "log π(y*|x)"}
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td{white-space:nowrap}
th{background:#f3f3f3}td.text{text-align:left;max-width:380px;white-space:normal}.fell{color:#d62728;font-weight:bold}
.tok{padding:1px 0;border-radius:2px;white-space:pre-wrap}.legend span{padding:0 6px}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:80%}svg{background:#fff}"""


def lines_svg(xs: list[float], series: dict[str, list[float]], width: int = 520, height: int = 220) -> str:
    """Curves as an inline SVG: one polyline per series (colour from :data:`COLORS`), the y range written on the
    axis, the x axis in steps, a legend."""
    ys = [y for s in series.values() for y in s]
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1.0
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    L, R, T, B = 60, 10, 10, 40

    def pt(x, y):
        return f"{L + (x - x0) / (x1 - x0) * (width - L - R):.1f},{T + (hi - y) / (hi - lo) * (height - T - B):.1f}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
           f'<rect x="{L}" y="{T}" width="{width - L - R}" height="{height - T - B}" fill="none" stroke="#999"/>',
           f'<text x="{L - 4}" y="{T + 10}" font-size="11" text-anchor="end">{hi:.2f}</text>',
           f'<text x="{L - 4}" y="{height - B}" font-size="11" text-anchor="end">{lo:.2f}</text>',
           f'<text x="{L}" y="{height - B + 14}" font-size="11">{x0:g}</text>',
           f'<text x="{width - R}" y="{height - B + 14}" font-size="11" text-anchor="end">{x1:g}</text>',
           f'<text x="{(L + width - R) / 2}" y="{height - B + 14}" font-size="11" text-anchor="middle">DPO step</text>']
    for k, (name, ys_) in enumerate(series.items()):
        color = COLORS.get(name, "#555")
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                   + " ".join(pt(x, y) for x, y in zip(xs, ys_)) + '"/>')
        out.append(f'<text x="{L + 8 + 150 * k}" y="{height - 6}" font-size="12" fill="{color}">'
                   f'{html.escape(NAMES.get(name, name))}</text>')
    return "\n".join(out + ["</svg>"])


def token_spans(tokens: list[dict]) -> str:
    """A response's tokens, each coloured by its change of log-probability over the run (green up, red down, the
    strength saturating at 2 nats); the title (hover) gives the change and the tokens that gained most there."""
    spans = []
    for t in tokens:
        d = t["dlogp"]
        a = min(abs(d) / 2.0, 1.0)
        color = f"rgba(44,160,44,{a:.2f})" if d > 0 else f"rgba(214,39,40,{a:.2f})"
        gained = ", ".join(f"{g!r} {v:+.3f}" for g, v in t["gained"])
        spans.append(f'<span class="tok" style="background:{color}" title="Δ log π = {d:+.3f} · gained most: '
                     f'{html.escape(gained)}">{html.escape(t["token"])}</span>')
    return "".join(spans)


def shown_prompt(prompt: str, limit: int = 300) -> str:
    """The prompt as the page shows it: the last user turn of a chat template (the system message and the control
    tokens are the same in every pair), else the text itself; at most ``limit`` characters, from the end."""
    if "<|im_start|>user\n" in prompt:
        prompt = prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    return prompt if len(prompt) <= limit else "…" + prompt[-limit:]


def pair_section(k: int, pair: dict, forecast: dict | None, run: dict | None) -> str:
    """One pair: its texts, the forecast (if made), and (once the run measured it) its curves, the mass at y⁺'s
    and y⁻'s positions and its tokens."""
    head = f"""<section id="pair-{k}"><h2>Pair {k}: y⁺ {_fell(run, k)}</h2>
<p><b>prompt</b> <code>{html.escape(shown_prompt(pair['prompt']))}</code></p>"""
    if forecast is not None:
        s = forecast["step_chosen"]
        head += f"""
<p><b>forecast before training</b> (one DPO step on this pair alone, per unit lr): Δ log π(y⁺) = {s['total']:+.4g}
= pull {s['pull']:+.4g} + push {s['push']:+.4g} + shared prefix {s['shared']:+.4g}; CHES {forecast['ches']:.4g}.
One SFT step on y⁺ alone: Δ log π(y⁺) = {forecast['sft_chosen'][0]:+.4g}.</p>"""
    if run is None:
        return head + "<p>The DPO run did not reach this pair.</p></section>"
    p, steps = run["pairs"][k], run["steps"]
    m0, m1 = p["mass"][0], p["mass"][-1]
    mass_rows = "".join(f"<tr><th>{half}</th>" + "".join(f"<td>{m0[key][c]:.3f} → {m1[key][c]:.3f}</td>"
                                                           for c in MASS_CLASSES) + "</tr>"
                        for half, key in (("at y⁺ positions", "chosen"), ("at y⁻ positions", "rejected")))
    return head + f"""
<figure class="curves">{lines_svg(steps, {n: p[n] for n in ('chosen', 'rejected', 'star')})}</figure>
<p><b>where the probability sits</b> (mean over positions, before → after)</p>
<table><tr><th></th>{''.join(f'<th>{c}</th>' for c in MASS_CLASSES)}</tr>{mass_rows}</table>
<p><b>y⁺</b> {token_spans(run['tokens'][k]['chosen'])}</p>
<p><b>y⁻</b> {token_spans(run['tokens'][k]['rejected'])}</p></section>"""


def _fell(run: dict | None, k: int, yes: str = '<span class="fell">fell</span>', no: str = "did not fall") -> str:
    return "–" if run is None or len(run["steps"]) < 2 else yes if run["fell"][k] else no


def fixes_table(fixes: list[dict]) -> str:
    """What the one-step forecast predicts for each fix (:func:`tinyld.explain.fixes`)."""
    rows = "".join(f"<tr><td class=\"text\">{html.escape(x['what'])}</td><td>{x['chosen']:+.4g}</td>"
                   f"<td>{x['rejected']:+.4g}</td><td>{x['fall']} of {x['of']}</td></tr>" for x in fixes)
    return ('<table id="fixes"><tr><th>fix</th><th>forecast Δ log π(y⁺)</th><th>forecast Δ log π(y⁻)</th>'
            f'<th>pairs whose y⁺ is forecast to fall</th></tr>{rows}</table>')


def report_html(result: dict) -> str:
    """The whole page for an ``explain`` result (the dict its JSON holds; after a Ctrl-C, what was measured)."""
    run, cfg, pairs = result["run"], result["config"], result["pairs"]
    fc = result["forecasts"] or []
    rows = []
    for k, pair in enumerate(pairs):
        f = fc[k] if k < len(fc) else None
        p = run["pairs"][k] if run is not None else None
        cells = [f'<a href="#pair-{k}">{k}</a>' if f else str(k), html.escape(pair["chosen"][:80]),
                 f'{p["chosen"][0]:.2f} → {p["chosen"][-1]:.2f}' if p else "–",
                 f'{p["rejected"][-1] - p["rejected"][0]:+.2f}' if p else "–", f'{f["ches"]:.3g}' if f else "–",
                 f'{f["step_chosen"]["pull"]:+.3g} / {f["step_chosen"]["push"]:+.3g}' if f else "–",
                 _fell(run, k, '<span class="fell">yes</span>', "no")]
        rows.append("<tr>" + "".join(f'<td{" class=text" if i == 1 else ""}>{c}</td>' for i, c in enumerate(cells))
                    + "</tr>")
    v = result["verdict"]
    auc = lambda key: "n/a" if v[key] is None else f"{v[key]:.2f}"  # noqa: E731
    verdict = ("<p id=\"verdict\">No DPO step was measured, so there is no verdict.</p>" if v is None else
               f"""<p id="verdict">y⁺ fell in {v['fell']} of {v['of']} pairs. AUC for "y⁺ falls" (1: the pairs that
fell ranked first; 0.5: chance): CHES {auc('ches')}, length-normalised CHES {auc('ches_norm')}, one-step forecast
{auc('step')}.</p>""")
    stopped = (f'<p id="stopped" class="fell">Stopped early — {html.escape(result["stopped"])}. This page shows what '
               'was measured until then.</p>' if result.get("stopped") else "")
    fixes = ("" if not result.get("fixes") else
             "<h2>What the forecast predicts for each fix</h2><p>Per unit lr (plain SGD), the mean over the pairs "
             "forecast; a forecast of one step, not advice: a whole run can differ.</p>" + fixes_table(result["fixes"]))
    legend = ('<p class="legend">tokens: <span style="background:rgba(44,160,44,.8)">log π rose</span> '
              '<span style="background:rgba(214,39,40,.8)">log π fell</span> (full colour: 2 nats; hover a token '
              'for its numbers)</p>')
    mean = ("" if run is None else
            f"<h2>Mean over the pairs</h2><figure class=\"curves\">{lines_svg(run['steps'], run['mean'])}</figure>")
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tinyld explain</title>
<style>{STYLE}</style></head><body>
<h1>Where did the probability go?</h1>
{stopped}
<p>{len(pairs)} pairs · model <code>{html.escape(str(cfg['model']))}</code> · DPO {html.escape(str(cfg['loss']))},
β {cfg['beta']}, {html.escape(str(cfg['optimizer']))} lr {cfg['lr']}, {cfg['steps']} steps,
batch {cfg['batch_size']}</p>
<h2>Summary</h2>
<table id="summary"><tr><th>pair</th><th>y⁺</th><th>log π(y⁺) before → after</th><th>Δ log π(y⁻)</th>
<th>CHES</th><th>forecast pull / push</th><th>y⁺ fell</th></tr>{''.join(rows)}</table>
{verdict}
{fixes}
{mean}
{legend}
{''.join(pair_section(k, pairs[k], fc[k] if k < len(fc) else None, run)
         for k in range(len(fc) if run is None else len(pairs)))}
<h2>Config and versions</h2><pre>{html.escape(json.dumps({'config': cfg, 'versions': result.get('versions')},
                                                          indent=1))}</pre>
</body></html>
"""
