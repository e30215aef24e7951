"""Network speed: Wav2Lip forward fps at batch 1/16/64/128 and GFPGAN v1.4 seconds per 512x512 face.

For each case: items/s, the realtime factor for 25 fps video (one face per frame), GFLOPs per item
(counted with torch.utils.flop_counter on a batch-1 forward), the GFLOP/s reached and the fraction of
this machine's measured fp32 matmul rate that represents. Every case runs contiguous (NCHW) and
channels_last, because which one is faster depends on the machine; the table marks the faster one. Each
case runs in its own subprocess so its peak RSS is its own.

The machine may be shared, and other processes only ever slow a measurement down. So the headline rate
is the best iteration (the median is reported beside it), and the sgemm rate is timed again next to every
case and the best figure kept, so that the fractions compare like with like.

CPU rows always; CUDA rows in fp32 and fp16 when torch.cuda.is_available(). On CUDA, "fp32" convolutions
use TF32 when torch's default ``cudnn.allow_tf32`` is on (recorded in the JSON), so their fraction of the
(strict fp32) sgemm rate can exceed 1.

Weights are random (speed does not depend on them). Usage:
    .venv/bin/python benchmarks/nets.py [--quick]
Writes benchmarks/results/nets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results" / "nets.json"
VIDEO_FPS = 25.0  # realtime factor = items/s / 25: one face per frame of 25 fps video
SGEMM_N = 2048  # CPU sgemm size: large enough to reach the BLAS peak, small enough to repeat many times


def _build(net: str) -> tuple[torch.nn.Module, Callable[[int], tuple[torch.Tensor, ...]]]:
    """The module and a function batch -> its random inputs (float32, CPU)."""
    from lipsync.nets import Wav2Lip, gfpgan_v14

    torch.manual_seed(0)
    if net == "wav2lip":
        return Wav2Lip().eval(), lambda b: (torch.randn(b, 1, 80, 16), torch.rand(b, 6, 96, 96))
    if net == "gfpgan":
        return gfpgan_v14().eval(), lambda b: (torch.rand(b, 3, 512, 512) * 2 - 1,)
    raise ValueError(net)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, min_time: float) -> float:
    """Best sustained GFLOP/s of an n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        a @ b  # warm-up (thread pool / cuBLAS handle)
        _sync(device)
        start = time.perf_counter()
        while time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def gflops_per_item(net: str) -> float:
    model, make_inputs = _build(net)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*make_inputs(1))
    return counter.get_total_flops() / 1e9


def run_case(case: dict) -> dict:
    """Runs in the child process: time one (net, device, dtype, batch, memory format)."""
    from lipsync.nets import to_channels_last

    device = torch.device(case["device"])
    dtype = torch.float16 if case["dtype"] == "fp16" else torch.float32
    fmt = torch.channels_last if case["channels_last"] else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
    model, make_inputs = _build(case["net"])
    model = model.to(device=device, dtype=dtype)
    if case["channels_last"]:
        to_channels_last(model)
    inputs = [x.to(device=device, dtype=dtype, memory_format=fmt) for x in make_inputs(case["batch"])]
    sgemm = matmul_gflops(torch.device("cpu"), torch.float32, SGEMM_N, 1.0)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(case["warmup"]):
            model(*inputs)
        _sync(device)
        start = time.perf_counter()
        while len(times) < case["min_iters"] or time.perf_counter() - start < case["min_time"]:
            t0 = time.perf_counter()
            model(*inputs)
            _sync(device)
            times.append(time.perf_counter() - t0)
    best = min(times)
    out = {
        **case,
        "iters": len(times),
        "sec_per_batch": best,
        "sec_per_batch_median": statistics.median(times),
        "sec_per_batch_mean": statistics.fmean(times),
        "sec_per_item": best / case["batch"],
        "items_per_s": case["batch"] / best,
        "items_per_s_median": case["batch"] / statistics.median(times),
        "realtime_factor_25fps": case["batch"] / best / VIDEO_FPS,
        "peak_rss_mb": peak_rss_mb(),
        "sgemm_cpu_gflops": sgemm,
    }
    if device.type == "cuda":
        out["cuda_peak_alloc_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _spawn(case: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cases(quick: bool, cuda: bool) -> list[dict]:
    wav2lip_batches = [1, 16] if quick else [1, 16, 64, 128]
    cases = []
    targets = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "fp16")] if cuda else [])
    for device, dtype in targets:
        on_gpu = device == "cuda"
        common = {
            "device": device,
            "dtype": dtype,
            "warmup": 3 if on_gpu else 1,
            "min_iters": 3 if on_gpu else (1 if quick else 2),
            "min_time": (0.3 if quick else 1.0) if on_gpu else (0.5 if quick else 3.0),
        }
        for channels_last in (False, True):
            for batch in wav2lip_batches:
                cases.append({"net": "wav2lip", "batch": batch, "channels_last": channels_last, **common})
            for batch in [1, 8] if on_gpu else [1]:
                cases.append({"net": "gfpgan", "batch": batch, "channels_last": channels_last, **common})
    return cases


def _table(rows: list[dict]) -> str:
    head = (
        f"{'net':8} {'dev':4} {'dtype':5} {'batch':>5} {'layout':6} {'items/s':>9} {'median':>8} {'ms/item':>9} "
        f"{'rt@25fps':>8} {'GFLOP/it':>8} {'GFLOP/s':>8} {'%fp32mm':>7} {'rss MB':>7}  best"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['net']:8} {r['device']:4} {r['dtype']:5} {r['batch']:>5} ERROR {r['error']}")
            continue
        lines.append(
            f"{r['net']:8} {r['device']:4} {r['dtype']:5} {r['batch']:>5} "
            f"{'CL' if r['channels_last'] else 'NCHW':6} {r['items_per_s']:9.2f} {r['items_per_s_median']:8.2f} {1000 * r['sec_per_item']:9.1f} "
            f"{r['realtime_factor_25fps']:8.3f} {r['gflops_per_item']:8.1f} {r['achieved_gflops']:8.1f} "
            f"{100 * r['fraction_of_fp32_matmul']:6.1f}% {r['peak_rss_mb']:7.0f}  {'*' if r.get('faster') else ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and shorter timings")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0

    cuda = torch.cuda.is_available()
    load_before = os.getloadavg()
    print(f"measuring sgemm {SGEMM_N}x{SGEMM_N} ...", flush=True)
    peaks = {
        "cpu_fp32": matmul_gflops(torch.device("cpu"), torch.float32, SGEMM_N, 2.0 if args.quick else 5.0)
    }
    if cuda:
        dev = torch.device("cuda")
        peaks["cuda_fp32"] = matmul_gflops(dev, torch.float32, 8192, 2.0)
        peaks["cuda_fp16"] = matmul_gflops(dev, torch.float16, 8192, 2.0)
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)
    flops = {net: gflops_per_item(net) for net in ("wav2lip", "gfpgan")}

    rows = []
    for case in _cases(args.quick, cuda):
        print(
            f"  {case['net']} {case['device']} {case['dtype']} batch {case['batch']} "
            f"{'channels_last' if case['channels_last'] else 'contiguous'}",
            flush=True,
        )
        row = _spawn(case, timeout=1800)
        if "error" not in row:
            peaks["cpu_fp32"] = max(peaks["cpu_fp32"], row["sgemm_cpu_gflops"])
            row["gflops_per_item"] = flops[row["net"]]
            row["achieved_gflops"] = row["gflops_per_item"] * row["items_per_s"]
        rows.append(row)
    for row in rows:  # fractions of the best sgemm rate seen over the whole run
        if "error" not in row:
            row["fraction_of_fp32_matmul"] = row["achieved_gflops"] / peaks[f"{row['device']}_fp32"]
            if row["dtype"] == "fp16":
                row["fraction_of_fp16_matmul"] = row["achieved_gflops"] / peaks["cuda_fp16"]

    # Mark the faster memory format for each (net, device, dtype, batch).
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["net"], r["device"], r["dtype"], r["batch"]), []).append(r)
    faster_channels_last = {}
    for key, pair in groups.items():
        best = max(pair, key=lambda r: r["items_per_s"])
        best["faster"] = True
        faster_channels_last["/".join(map(str, key))] = best["channels_last"]
    rows.sort(key=lambda r: (r["net"] != "wav2lip", r["device"], r["dtype"], r["batch"], r["channels_last"]))

    print()
    print(_table(rows))
    print(
        f"sgemm fp32: {peaks['cpu_fp32']:.0f} GFLOP/s on CPU ({torch.get_num_threads()} threads); "
        f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if cuda else None,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
            # 1-minute load average before and after: other processes on the machine skew CPU rows.
            "loadavg_1min": [load_before[0], os.getloadavg()[0]],
        },
        "quick": args.quick,
        "matmul_gflops": peaks,
        "gflops_per_item": flops,
        "channels_last_faster": faster_channels_last,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
