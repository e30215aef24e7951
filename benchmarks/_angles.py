"""Rows of benchmarks/faces.py for issue 14 (faces at any angle): what the quarter-turn fallback and the
aligned crop cost per frame.

  * angles: detection per 720p frame through ``AngleDetector`` (SCRFD-2.5G), ``detect_angles`` upright
    (the default) vs fallback, on an upright photo, the same photo turned by 90 degrees, a photo tilted by
    30 degrees (upright refinement, in both modes) and a frame with no face; ``searches`` is detector runs
    per frame. Times are the fastest of the repetitions.
  * align: per face at 720p, crop (to 96x96) + paste back (resize, mask, feathered or Poisson), today's
    axis-aligned path vs the aligned crop for an upright face (the same code path) and a face tilted by 30
    degrees; and the torch crop (``crop_faces_torch``, CPU torch here) per face in a batch of 16.
"""

from __future__ import annotations

import time

import cv2
import numpy as np


def _best_ms(fn, reps: int) -> float:
    """The fastest of ``reps`` runs: on cores shared with other work the minimum is the stable figure."""
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.min(times))


def _tilt(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def fit_720p(image: np.ndarray) -> np.ndarray:
    """``image`` scaled (aspect kept) and centred on a grey 1280x720 frame."""
    h, w = image.shape[:2]
    scale = min(1280 / w, 720 / h)
    small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    y, x = (720 - small.shape[0]) // 2, (1280 - small.shape[1]) // 2
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    return frame


def bench_angles(detector, photo: np.ndarray, reps: int) -> list[dict]:
    from lipsync.faces.angles import AngleDetector

    frame = fit_720p(photo)
    cases = {
        "upright": frame,
        "turned90": fit_720p(cv2.rotate(photo, cv2.ROTATE_90_CLOCKWISE)),
        "tilted30": _tilt(frame, 30.0),
        "no-face": np.full_like(frame, 90),
    }
    rows = []
    for case, image in cases.items():
        for mode in ("upright", "fallback"):
            angles = AngleDetector(detector, fallback=mode == "fallback")
            faces = angles.detect(image)
            before = angles.searches
            ms = _best_ms(lambda a=angles, i=image: a.detect(i), reps)
            searches = (angles.searches - before) / (reps + 1)
            rows.append({"row": "angles", "backend": "scrfd-2.5g", "res": "720p", "case": case, "mode": mode,
                         "ms_per_frame": ms, "fps": 1000.0 / ms, "realtime": 1000.0 / ms / 25.0,
                         "searches": searches, "faces": len(faces)})  # fmt: skip
            print(f"  angles {case:9s} {mode:8s} {ms:8.1f} ms/frame  searches={searches:.0f}  faces={len(faces)}",
                  flush=True)  # fmt: skip
    return rows


def bench_align(detector, photo: np.ndarray, reps: int) -> list[dict]:
    import torch

    from lipsync.stages.align_crop import crop_face, crop_faces_torch, crop_mask, face_crop, paste_face
    from lipsync.stages.composite import composite_face
    from lipsync.stages.lipsync import postprocess_face, prepare_face

    pads = (0, 20, 0, 0)
    frame = fit_720p(photo)
    rows = []
    for case, image in {"upright": frame, "tilted30": _tilt(frame, 30.0)}.items():
        face = max(detector.detect(image), key=lambda f: f.box.area)
        box = face.box.padded(pads, 1280, 720)

        def today(poisson, i=image, b=box):
            gen = prepare_face(i, b)
            composite_face(i, postprocess_face(gen, b), b, poisson=poisson)

        def aligned(poisson, i=image, f=face):
            crop = face_crop(f.box, f.landmarks, pads, 1280, 720)
            paste_face(i, crop_face(i, crop), crop, crop_mask(crop), poisson=poisson)

        for path, fn in (("axis-aligned", today), ("aligned", aligned)):
            for poisson in (False, True):
                ms = _best_ms(lambda fn=fn, p=poisson: fn(p), reps)
                blend = "poisson" if poisson else "feather"
                rows.append({"row": "align", "backend": path, "res": "720p", "case": case, "mode": blend,
                             "ms_per_frame": ms, "fps": 1000.0 / ms, "realtime": 1000.0 / ms / 25.0})  # fmt: skip
                print(f"  align  {case:9s} {path:12s} {blend:7s} {ms:8.2f} ms/face (crop + paste)", flush=True)
        crops = [face_crop(face.box, face.landmarks, pads, 1280, 720)] * 16
        frames = torch.from_numpy(image[None].copy())
        ms = _best_ms(lambda c=crops, f=frames: crop_faces_torch(f, [0] * 16, c), reps) / 16
        rows.append({"row": "align", "backend": "torch-crop-cpu", "res": "720p", "case": case, "ms_per_frame": ms,
                     "fps": 1000.0 / ms, "realtime": 1000.0 / ms / 25.0})  # fmt: skip
        print(f"  align  {case:9s} torch crop   {ms:8.2f} ms/face (96x96 crop only, CPU torch, batch 16)", flush=True)
    return rows
