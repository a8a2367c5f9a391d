#!/usr/bin/env python3
"""Plots soak.sh's CSVs (RSS and open descriptors over time, one line per
bus) as a standalone SVG, standard library only, and prints a Markdown table.

    plot.py OUT.svg NAME=FILE.csv [NAME=FILE.csv ...]
"""

import csv
import sys

W, H, PAD = 760, 250, 55
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def load(path):
    with open(path, newline="") as f:
        return [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def panel(y0, series, key, label):
    xs = [r["t_s"] for _, rows in series for r in rows]
    ys = [r[key] for _, rows in series for r in rows]
    xmax = max(xs) or 1
    ymin, ymax = 0, max(ys) * 1.15 or 1
    out = [f'<text x="{PAD}" y="{y0 + 15}" font-size="13">{label}</text>',
           f'<line x1="{PAD}" y1="{y0 + H - PAD}" x2="{W - 10}" y2="{y0 + H - PAD}" stroke="#000"/>',
           f'<line x1="{PAD}" y1="{y0 + 25}" x2="{PAD}" y2="{y0 + H - PAD}" stroke="#000"/>']

    def px(x):
        return PAD + (W - 10 - PAD) * x / xmax

    def py(y):
        return y0 + H - PAD - (H - PAD - 25) * (y - ymin) / (ymax - ymin)

    for i in range(5):
        v = ymin + (ymax - ymin) * i / 4
        out.append(f'<text x="{PAD - 5}" y="{py(v) + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{v:.0f}</text>')
    for i in range(6):
        v = xmax * i / 5
        out.append(f'<text x="{px(v):.1f}" y="{y0 + H - PAD + 15}" font-size="10" '
                   f'text-anchor="middle">{v:.0f} s</text>')
    for n, (name, rows) in enumerate(series):
        pts = " ".join(f"{px(r['t_s']):.1f},{py(r[key]):.1f}" for r in rows)
        c = COLORS[n % len(COLORS)]
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        out.append(f'<text x="{W - 120}" y="{y0 + 35 + 14 * n}" font-size="11" '
                   f'fill="{c}">{name}</text>')
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    series = []
    for a in sys.argv[2:]:
        name, _, path = a.partition("=")
        series.append((name, load(path)))
    body = panel(0, series, "rss_kib", "RSS (KiB)") + panel(H, series, "fds", "open descriptors")
    with open(sys.argv[1], "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{2 * H}" '
                f'font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/>\n')
        f.write("\n".join(body) + "\n</svg>\n")
    print("| t (s) | " + " | ".join(f"{n} RSS KiB | {n} fds | {n} calls ok / failed"
                                    for n, _ in series) + " |")
    print("|---|" + "---|---|---|" * len(series))
    n = min(len(rows) for _, rows in series)
    for i in range(n):
        cells = []
        for _, rows in series:
            r = rows[i]
            cells.append(f"{r['rss_kib']} | {r['fds']} | {r['calls_ok']} / {r['calls_failed']}")
        print(f"| {series[0][1][i]['t_s']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
