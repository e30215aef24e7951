"""Which CPU path runs the Wav2Lip generator fastest: the decision behind ``Wav2LipGenerator(fold_bn=True)``.

Cases, each on the same seeded network (BatchNorm statistics randomised as trained ones are) and the same
batch of 16 faces (the CPU batch):

* ``torch``: the network as loaded (NCHW), what the original Wav2Lip inference runs;
* ``torch-cl``: channels_last;
* ``folded-cl``: BatchNorm folded into the convolutions + channels_last (lipsync's CPU path);
* ``onnxruntime``: the folded network exported with torch.onnx and run by onnxruntime (all graph
  optimisations on);
* ``mnn``: that export converted for MNN and run by one engine (Winograd convolutions, float32): the CPU
  default (lipsync.stages.wav2lip_mnn), there in worker processes of one engine each.

Rounds interleave the cases so that load from other processes hits them alike; each case reports its best
round as items/s of wall time with ``--threads`` threads, and as items/s of CPU time with one thread (a
figure other processes barely disturb: on a shared machine, compare those). The output of each case is
compared with the unfolded torch network's in grey levels (0-255). Usage:
    .venv/bin/python benchmarks/generator_backends.py [--rounds N] [--threads T]
Writes benchmarks/results/generator_backends.json.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import time

import torch
from torch import nn

from _common import RESULTS_DIR

BATCH = 16


def build() -> nn.Module:
    from lipsync.nets import Wav2Lip

    torch.manual_seed(0)
    net = Wav2Lip().eval()
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
    return net


def cases(threads: int) -> tuple[dict, torch.Tensor]:
    import onnxruntime as ort

    from lipsync.nets import fold_batchnorm

    net = build()
    mel, face = torch.randn(BATCH, 1, 80, 16), torch.rand(BATCH, 6, 96, 96)
    face_cl = face.contiguous(memory_format=torch.channels_last)
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(copy.deepcopy(net))
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    buf = io.BytesIO()
    torch.onnx.export(folded, (mel, face), buf, input_names=["mel", "face"], output_names=["out"],
                      dynamic_axes={"mel": {0: "b"}, "face": {0: "b"}, "out": {0: "b"}}, dynamo=False)  # fmt: skip
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    feeds = {"mel": mel.numpy(), "face": face.numpy()}
    engine = mnn_engine(buf.getvalue(), threads)
    with torch.inference_mode():
        ref = net(mel, face)
    return {
        "torch": lambda: net(mel, face),
        "torch-cl": lambda: cl(mel, face_cl),
        "folded-cl": lambda: folded_cl(mel, face_cl),
        "onnxruntime": lambda: torch.from_numpy(session.run(None, feeds)[0]),
        "mnn": lambda: torch.from_numpy(engine.run({"mel": feeds["mel"], "face": feeds["face"]})["out"]),
    }, ref


def mnn_engine(onnx_bytes: bytes, threads: int):
    """An MNN engine of the exported network, converted the way lipsync converts it."""
    import tempfile
    from pathlib import Path

    from lipsync.stages.wav2lip_mnn import _engine, convert

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "w.onnx"
        export.write_bytes(onnx_bytes)
        return _engine(convert(export, Path(tmp) / "w.mnn"), threads)


def measure(rounds: int, threads: int, clock) -> tuple[dict, dict]:
    torch.set_num_threads(threads)
    fns, ref = cases(threads)
    best = dict.fromkeys(fns, 0.0)
    diff = {}
    with torch.inference_mode():
        for name, fn in fns.items():  # warm-up, and the agreement with the unfolded network
            diff[name] = float(((fn() - ref).abs().max() * 255).item())
        for _ in range(rounds):
            for name, fn in fns.items():
                t = clock()
                fn()
                best[name] = max(best[name], BATCH / (clock() - t))
    return best, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    wall, diff = measure(args.rounds, args.threads, time.perf_counter)
    cpu, _ = measure(args.rounds, 1, time.thread_time)
    print(f"{'case':12s} {'wall items/s':>13s} {'1-thread CPU items/s':>21s} {'max diff (grey)':>16s}")
    for name in wall:
        print(f"{name:12s} {wall[name]:13.2f} {cpu[name]:21.2f} {diff[name]:16.4f}")
    out = RESULTS_DIR / "generator_backends.json"
    RESULTS_DIR.mkdir(exist_ok=True)
    out.write_text(json.dumps({"batch": BATCH, "threads": args.threads, "rounds": args.rounds,
                               "wall_items_per_s": wall, "cpu_items_per_s_1thread": cpu,
                               "max_diff_grey": diff, "loadavg": os.getloadavg()}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
