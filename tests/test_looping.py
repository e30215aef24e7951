"""The loop planner: exact small cases, then hypothesis properties over all modes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipsync.errors import InputError
from lipsync.stages.looping import LoopPlan, plan_loop
from lipsync.types import LOOP_MODES, PlanFrame


def srcs(plan) -> list[int]:
    return [f.src for f in plan]


# --- exact cases ------------------------------------------------------------------------------------


def test_none_trims_to_shorter():
    assert srcs(plan_loop(5, 3, "none")) == [0, 1, 2]
    assert srcs(plan_loop(3, 5, "none")) == [0, 1, 2]
    assert len(plan_loop(3, 0, "none")) == 0


def test_repeat():
    assert srcs(plan_loop(3, 8, "repeat")) == [0, 1, 2, 0, 1, 2, 0, 1]


def test_pingpong():
    assert srcs(plan_loop(4, 12, "pingpong")) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert srcs(plan_loop(2, 5, "pingpong")) == [0, 1, 0, 1, 0]
    assert srcs(plan_loop(1, 4, "pingpong")) == [0, 0, 0, 0]


def test_crossfade_exact():
    plan = plan_loop(6, 14, "crossfade", crossfade_frames=2)
    assert plan.crossfade == 2
    expected = [
        PlanFrame(0), PlanFrame(1), PlanFrame(2), PlanFrame(3),  # first pass, plain 0 .. V-C-1
        PlanFrame(4, 0, 1 / 3), PlanFrame(5, 1, 2 / 3),  # tail 4,5 fades into head 0,1
        PlanFrame(2), PlanFrame(3),  # head continues at C
        PlanFrame(4, 0, 1 / 3), PlanFrame(5, 1, 2 / 3),
        PlanFrame(2), PlanFrame(3),
        PlanFrame(4, 0, 1 / 3), PlanFrame(5, 1, 2 / 3),
    ]  # fmt: skip
    assert list(plan) == expected
    assert all(f.is_blend for f in plan if f.src2 is not None)


def test_crossfade_is_clamped_and_degenerates_to_repeat():
    # C is capped at (V-1)//2 so every pass keeps one plain frame.
    assert plan_loop(5, 20, "crossfade", 10).crossfade == 2
    assert srcs(plan_loop(2, 5, "crossfade", 10)) == [0, 1, 0, 1, 0]
    assert srcs(plan_loop(1, 3, "crossfade", 10)) == [0, 0, 0]
    assert list(plan_loop(4, 9, "crossfade", 0)) == list(plan_loop(4, 9, "repeat"))


@pytest.mark.parametrize("mode", LOOP_MODES)
def test_video_longer_than_audio_is_trimmed(mode):
    plan = plan_loop(100, 30, mode, 10)
    assert list(plan) == [PlanFrame(i) for i in range(30)]
    assert not plan.loops


def test_plan_is_a_lazy_sequence():
    plan = plan_loop(250, 10_800 * 30, "pingpong")  # 3 hours at 30 fps, nothing materialised
    assert isinstance(plan, Sequence) and isinstance(plan, LoopPlan)
    assert len(plan) == 324_000
    assert plan[-1] == plan[len(plan) - 1]
    assert plan[498] == PlanFrame(0) and plan[249] == PlanFrame(249) and plan[250] == PlanFrame(248)
    assert plan[2:5] == [PlanFrame(2), PlanFrame(3), PlanFrame(4)]
    assert plan.sources(0) == (0,)
    with pytest.raises(IndexError):
        plan[len(plan)]
    cf = plan_loop(10, 30, "crossfade", 3)
    assert cf.sources(7) == (7, 0)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 10, "repeat", 10), "video_frames"),
        ((-1, 10, "repeat", 10), "video_frames"),
        ((2.5, 10, "repeat", 10), "video_frames"),
        ((True, 10, "repeat", 10), "video_frames"),
        ((5, -1, "repeat", 10), "audio_frames"),
        ((5, "10", "repeat", 10), "audio_frames"),
        ((5, 10, "bounce", 10), "loop_mode"),
        ((5, 10, None, 10), "loop_mode"),
        ((5, 10, "crossfade", -1), "crossfade_frames"),
        ((5, 10, "crossfade", 1.5), "crossfade_frames"),
    ],
)
def test_invalid_arguments_name_the_field(args, field):
    with pytest.raises(InputError) as info:
        plan_loop(*args)
    assert info.value.field == field
    assert field.split("_")[0] in info.value.message


def test_numpy_integers_are_accepted():
    plan = plan_loop(np.int64(4), np.int32(9), "repeat", np.int16(2))
    assert len(plan) == 9 and isinstance(plan.video_frames, int)


# --- properties -------------------------------------------------------------------------------------

videos = st.integers(min_value=1, max_value=60)
audios = st.integers(min_value=0, max_value=400)
crossfades = st.integers(min_value=0, max_value=40)
modes = st.sampled_from(LOOP_MODES)


def _moves_one_step(a: PlanFrame, b: PlanFrame) -> bool:
    """Some source of b is exactly one frame after some source of a (a tail or head track advances)."""
    a_sources = {a.src} | ({a.src2} if a.src2 is not None else set())
    b_sources = {b.src} | ({b.src2} if b.src2 is not None else set())
    return any(s + 1 in b_sources for s in a_sources)


@settings(max_examples=300, deadline=None)
@given(v=videos, a=audios, mode=modes, c=crossfades)
def test_length_and_bounds(v, a, mode, c):
    plan = plan_loop(v, a, mode, c)
    frames = list(plan)
    assert len(frames) == len(plan) == (min(v, a) if mode == "none" else a)
    for f in frames:
        assert 0 <= f.src < v
        if f.src2 is not None:
            assert mode == "crossfade"
            assert 0 <= f.src2 < v
            assert 0.0 < f.weight < 1.0
        else:
            assert f.weight == 0.0
    if a <= v:
        assert frames == [PlanFrame(i) for i in range(len(frames))]
    if frames:
        assert frames[0] == PlanFrame(0)


@settings(max_examples=300, deadline=None)
@given(v=videos, a=audios, mode=modes, c=crossfades)
def test_continuity(v, a, mode, c):
    frames = list(plan_loop(v, a, mode, c))
    for i in range(1, len(frames)):
        prev, cur = frames[i - 1], frames[i]
        if v == 1:
            assert cur == PlanFrame(0)
        elif mode == "pingpong":
            assert abs(cur.src - prev.src) == 1
        elif mode == "crossfade" and (plan_c := plan_loop(v, a, mode, c).crossfade) > 0:
            assert _moves_one_step(prev, cur), (i, prev, cur, plan_c)
        else:
            # none / repeat / crossfade without room to blend: +1, or the documented wrap V-1 -> 0.
            assert cur.src == prev.src + 1 or (prev.src == v - 1 and cur.src == 0 and mode != "none")


@settings(max_examples=300, deadline=None)
@given(v=st.integers(min_value=2, max_value=60), a=audios)
def test_pingpong_turns_are_not_duplicated(v, a):
    s = srcs(plan_loop(v, a, "pingpong"))
    assert all(s[i] != s[i - 1] for i in range(1, len(s)))
    # It turns exactly at the ends: a local extremum only at 0 or V-1.
    for i in range(1, len(s) - 1):
        if (s[i] - s[i - 1]) * (s[i + 1] - s[i]) < 0:
            assert s[i] in (0, v - 1)


@settings(max_examples=300, deadline=None)
@given(v=st.integers(min_value=3, max_value=60), extra=st.integers(1, 300), c=st.integers(1, 40))
def test_crossfade_blends(v, extra, c):
    a = v + extra
    plan = plan_loop(v, a, "crossfade", c)
    cc = plan.crossfade
    assert cc == min(c, (v - 1) // 2) and cc >= 1
    frames = list(plan)
    # Group consecutive blends: each run is one crossfade with strictly rising weight from the tail to the head.
    runs: list[list[PlanFrame]] = []
    for i, f in enumerate(frames):
        if f.src2 is not None:
            if runs and frames[i - 1].src2 is not None:
                runs[-1].append(f)
            else:
                runs.append([f])
    for run in runs:
        weights = [f.weight for f in run]
        assert all(0.0 < w < 1.0 for w in weights)
        assert all(w1 < w2 for w1, w2 in itertools.pairwise(weights))
        assert [f.src for f in run] == list(range(v - cc, v - cc + len(run)))
        assert [f.src2 for f in run] == list(range(len(run)))
    # Every complete run has C frames; only the last one may be cut by the end of the audio.
    assert all(len(r) == cc for r in runs[:-1])
    # A blend starts right after the first pass's plain frames.
    if a > v - cc:
        assert frames[v - cc].src2 == 0
