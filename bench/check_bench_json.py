#!/usr/bin/env python3
"""Check biomatch-bench --json output: exactly one JSON object with the
documented keys and types. Never checks a speed (figures only need to be
numbers or null). Usage: check_bench_json.py FILE  (exit 0 = valid)."""
import json
import sys

MACHINE = {"cpu": str, "cores": int, "read_bandwidth_gbs": (int, float), "simd": str}
ROW = ("modality", "format", "dim", "gallery", "batch", "threads", "simd",
       "comparisons_per_s", "bandwidth_fraction", "recall_at_10",
       "faiss_comparisons_per_s", "ratio_vs_faiss")
NUMBER_OR_NULL = ("bandwidth_fraction", "recall_at_10", "faiss_comparisons_per_s",
                  "ratio_vs_faiss", "popcount_fraction")


def fail(msg):
    print(f"check_bench_json: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    text = open(sys.argv[1]).read()
    try:
        doc = json.loads(text)  # raises on trailing data: exactly one object
    except ValueError as e:
        fail(f"not one JSON value: {e}")
    if not isinstance(doc, dict):
        fail("top level is not an object")
    m = doc.get("machine")
    if not isinstance(m, dict):
        fail("no machine object")
    for k, t in MACHINE.items():
        if not isinstance(m.get(k), t):
            fail(f"machine.{k} missing or not {t}")
    rows = doc.get("results")
    if not isinstance(rows, list) or not rows:
        fail("no results")
    seen = set()
    for i, r in enumerate(rows):
        for k in ROW:
            if k not in r:
                fail(f"results[{i}] lacks {k}")
        if not isinstance(r["comparisons_per_s"], (int, float)) or r["comparisons_per_s"] <= 0:
            fail(f"results[{i}].comparisons_per_s is not a positive number")
        for k in NUMBER_OR_NULL:
            if k in r and r[k] is not None and not isinstance(r[k], (int, float)):
                fail(f"results[{i}].{k} is neither a number nor null")
        if r["modality"] == "iris" and "popcount_fraction" not in r:
            fail(f"results[{i}] (iris) lacks popcount_fraction")
        if r["batch"] == 1 and r["bandwidth_fraction"] is None:
            fail(f"results[{i}] is single-probe without bandwidth_fraction")
        if r["modality"] == "dense" and r["recall_at_10"] is None:
            fail(f"results[{i}] (dense) has no recall_at_10")
        seen.add(r["modality"])
    if seen != {"dense", "iris"}:
        fail(f"modalities seen: {sorted(seen)}")
    print(f"check_bench_json: ok ({len(rows)} rows)")


if __name__ == "__main__":
    main()
