#!/usr/bin/python3
"""report.py OUT STACK_ROOT SECONDS WORKERS [smoke] - turns OUT/results.tsv (written by
scripts/bench.sh) into OUT/report.md, a Markdown table of every scenario against its baseline
and target, and OUT/ratios.png, a gnuplot chart of the ratios with the targets marked."""

import csv
import datetime
import os
import subprocess
import sys


def main():
    out, stack_root, secs, workers = sys.argv[1:5]
    smoke = sys.argv[5:] == ["smoke"]
    with open(os.path.join(out, "results.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    commit = subprocess.run(["git", "-C", stack_root, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    lines = [
        "# Numatix bench report",
        "",
        "%s; commit %s; %d cores; %s s a figure; workers: %s.%s" % (
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit,
            os.cpu_count(), secs, workers,
            " **Smoke run: every scenario briefly and small; the figures mean nothing.**" if smoke else ""),
        "",
        "Every figure is a ratio against a baseline measured in the same run. Latencies are wrk's,"
        " from the client: p50, p99, p99.9 in ms.",
        "",
        "| scenario | figure | baseline | ratio | target | met | p50 | p99 | p99.9 |",
        "| --- | ---: | --- | ---: | --- | :---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append("| %s | %s %s | %s: %s | %s× | %s | %s | %s | %s | %s |" % (
            r["scenario"], r["figure"], r["unit"], r["baseline"], r["baseline_figure"], r["ratio"],
            r["target"], r["met"], r["p50_ms"], r["p99_ms"], r["p999_ms"]))
    missed = [r for r in rows if r["met"] == "NO"]
    lines += ["", "Targets met: %d of %d." % (sum(r["met"] == "yes" for r in rows),
                                                sum(r["met"] in ("yes", "NO") for r in rows))]
    if missed:
        lines.append("Not met: " + "; ".join("%s (%s× against %s)" % (r["scenario"], r["ratio"], r["target"])
                                             for r in missed) + ".")
    lines += ["", "![ratios](ratios.png)", "", "Reproduce: `make bench` (see README, *Performance*)."]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    # the chart: one bar per ratio that has a target, the target as a point beside it
    charted = [r for r in rows if r["target"] != "-"]
    with open(os.path.join(out, "ratios.dat"), "w") as f:
        for i, r in enumerate(charted):
            target = r["target"].split(",")[0].split()[1]
            label = r["scenario"][:48] + "\\n÷ " + r["baseline"][:44]
            f.write('%d "%s" %s %s\n' % (i, label.replace('"', "'"), r["ratio"], target))
    script = """
set terminal pngcairo size 1200,%d font "sans,10" background "#ffffff" noenhanced
set output "%s"
set title "Numatix bench: each figure against its same-run baseline (bars), and the target (diamonds)"
set style fill solid 0.8 border -1
set boxwidth 0.6
set logscale x 10
set xlabel "ratio (log scale)"
set ytics nomirror
set yrange [-1:%d]
set grid xtics
unset key
plot "%s" using (($3 > 0) ? $3 : 0.01):1:(0.01):($3 > 0 ? $3 : 0.01):($1 - 0.3):($1 + 0.3):ytic(2) with boxxyerror lc rgb "#0b5cad", \\
     "%s" using 4:1 with points pt 13 ps 1.6 lc rgb "#a40e26"
""" % (120 + 50 * len(charted), os.path.join(out, "ratios.png"), len(charted),
       os.path.join(out, "ratios.dat"), os.path.join(out, "ratios.dat"))
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print("\n".join(lines[8:8 + len(rows)]))


if __name__ == "__main__":
    main()
