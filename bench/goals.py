#!/usr/bin/env python3
"""Check a biomatch-bench --json result against the goals of issue 3.

Usage: goals.py [--table] RESULT.json   (--table adds a Markdown table of
every row; prints one line per goal and the JSON rows it
used; exit status 0 even when a goal is missed: this is a report, not a test).
Goals are read at all cores, the CPU's best SIMD level, d=512 dense.
"""
import json
import sys


def table(doc):
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    print("| modality | format | gallery | batch | threads | simd | comparisons/s | bandwidth | "
          "recall@10 | FAISS/s | ours/FAISS | popcount | mate@1 |")
    print("|" + "---|" * 13)
    for r in doc["results"]:
        bw = r["bandwidth_fraction"]
        pc = r.get("popcount_fraction")
        print(f"| {r['modality']} | {r['format']} | {r['gallery']} | {r['batch']} | "
              f"{r['threads']} | {r['simd']} | {f(r['comparisons_per_s'], '.3g')} | "
              f"{'-' if bw is None else format(100 * bw, '.0f') + '%'} | "
              f"{f(r['recall_at_10'], '.3f')} | {f(r['faiss_comparisons_per_s'], '.3g')} | "
              f"{f(r['ratio_vs_faiss'], '.2f')} | "
              f"{'-' if pc is None else format(100 * pc, '.0f') + '%'} | "
              f"{f(r.get('mate_at_1'), '.2f')} |")


def main():
    args = [a for a in sys.argv[1:] if a != "--table"]
    doc = json.load(open(args[0]))
    m = doc["machine"]
    cores, simd = m["cores"], m["simd"]

    def row(modality, fmt, batch):
        for r in doc["results"]:
            if (r["modality"], r["format"], r["batch"], r["threads"], r["simd"]) == \
                    (modality, fmt, batch, cores, simd):
                return r
        return None

    def fmt(v, pct=False):
        if v is None:
            return "null"
        return f"{100 * v:.1f}%" if pct else f"{v:.3g}"

    checks = []
    for f in ("int8", "f16", "f32"):
        r = row("dense", f, 1)
        if r:
            bw = r["bandwidth_fraction"]
            checks.append((f"single probe {f} >= 70% of read bandwidth",
                           bw is not None and bw >= 0.70,
                           f"bandwidth_fraction {fmt(bw, True)}", r))
    r = row("dense", "int8", 64)
    if r:
        ok = (r["ratio_vs_faiss"] or 0) >= 2 and (r["recall_at_10"] or 0) >= 0.99
        checks.append(("batch 64 int8 >= 2x FAISS f32, recall@10 >= 0.99", ok,
                       f"ratio {fmt(r['ratio_vs_faiss'])}, recall {fmt(r['recall_at_10'])}", r))
    r = row("dense", "f32", 64)
    if r:
        checks.append(("batch 64 f32 >= 0.8x FAISS", (r["ratio_vs_faiss"] or 0) >= 0.8,
                       f"ratio {fmt(r['ratio_vs_faiss'])}", r))
    for b in (1, 64):
        r = row("iris", "bits", b)
        if r:
            ok = (r.get("popcount_fraction") or 0) >= 0.5 and r["comparisons_per_s"] >= 1e6
            checks.append((f"iris batch {b}: >= 50% popcount limit and >= 1M comparisons/s",
                           ok, f"popcount_fraction {fmt(r.get('popcount_fraction'), True)}, "
                           f"{fmt(r['comparisons_per_s'])} comparisons/s", r))
    print(f"machine: {m['cpu']}, {cores} cores, {simd}, read bandwidth "
          f"{m['read_bandwidth_gbs']:.1f} GB/s; FAISS: {doc.get('faiss', {}).get('version')} "
          f"{doc.get('faiss', {}).get('simd')}")
    for name, ok, detail, r in checks:
        print(f"{'MET   ' if ok else 'MISSED'} {name}: {detail}")
        print(f"       {json.dumps(r)}")
    if "--table" in sys.argv:
        print()
        table(doc)


if __name__ == "__main__":
    main()
