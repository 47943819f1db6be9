#!/usr/bin/env python3
"""FAISS peer for biomatch-bench: IndexFlatIP on the same f32 data.

biomatch-bench writes the L2-normalised gallery and probes as float32 NumPy
.npy files (N x d and P x d, C order) and runs this script; it prints exactly
one JSON object on stdout:

  {"faiss_version", "faiss_simd", "faiss_module", "compile_options",
   "rows": [{"batch", "threads", "comparisons_per_s"}],
   "top10": [[ids of probe 0], ...],          # exact top-10, full gallery
   "top10_subset": [[...], ...]}              # same, first --subset rows

or {"error": "why"} (exit status 0) when numpy/faiss are missing or fail, so
the benchmark can record why the FAISS columns are null. Inner product on
unit vectors is cosine, the score biomatch computes.
"""
import argparse
import json
import sys
import time


def fail(msg):
    print(json.dumps({"error": msg}))
    sys.exit(0)


def faiss_build_info(faiss):
    info = {"faiss_version": getattr(faiss, "__version__", None)}
    # faiss-cpu >= 1.12 is one library with run-time dispatch; older wheels
    # ship one SWIG module per instruction set and pick one at import.
    mods = [m for m in ("faiss.swigfaiss_avx512_spr", "faiss.swigfaiss_avx512",
                        "faiss.swigfaiss_avx2", "faiss.swigfaiss_sve",
                        "faiss.swigfaiss") if m in sys.modules]
    info["faiss_module"] = mods[0] if mods else None
    level = None
    try:
        level = faiss.SIMDConfig.get_level_name()
    except Exception:  # older faiss: no SIMDConfig
        mod = info["faiss_module"] or ""
        level = mod.rsplit("_", 1)[-1].upper() if "_" in mod.rsplit(".", 1)[-1] else "generic"
    info["faiss_simd"] = level
    try:
        info["compile_options"] = faiss.get_compile_options().strip()
    except Exception:
        info["compile_options"] = None
    return info


def rate(index, probes, batch, k, min_time, reps):
    """Best comparisons/s over 'reps' repetitions of at least min_time s."""
    best = 0.0
    nprobes = probes.shape[0]
    for _ in range(reps):
        done, start, t0 = 0, 0, time.perf_counter()
        while True:
            if start + batch > nprobes:
                start = 0
            index.search(probes[start:start + batch], k)
            start += batch
            done += batch
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = max(best, done * index.ntotal / dt)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--probes", required=True)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--subset", type=int, default=0)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    try:
        import numpy as np
    except Exception as e:
        fail(f"numpy not importable: {e}")
    try:
        import faiss
    except Exception as e:
        fail(f"faiss not importable ({e}); install with: pip install faiss-cpu numpy")
    try:
        out = faiss_build_info(faiss)
        g = np.load(a.gallery, mmap_mode="r")
        p = np.ascontiguousarray(np.load(a.probes), dtype=np.float32)
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(np.ascontiguousarray(g, dtype=np.float32))
        batches = [int(x) for x in a.batches.split(",") if x]
        threads = [int(x) for x in a.threads.split(",") if x]
        rows = []
        for t in threads:
            faiss.omp_set_num_threads(t)
            for b in batches:
                rows.append({"batch": b, "threads": t,
                             "comparisons_per_s": rate(index, p, b, a.k, a.min_time, a.reps)})
        faiss.omp_set_num_threads(max(threads))
        _, ids = index.search(p, a.k)
        out["top10"] = ids.tolist()
        if 0 < a.subset < g.shape[0]:
            sub = faiss.IndexFlatIP(g.shape[1])
            sub.add(np.ascontiguousarray(g[:a.subset], dtype=np.float32))
            _, ids = sub.search(p, a.k)
            out["top10_subset"] = ids.tolist()
        else:
            out["top10_subset"] = out["top10"]
        out["rows"] = rows
        print(json.dumps(out))
    except Exception as e:
        fail(f"faiss run failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
