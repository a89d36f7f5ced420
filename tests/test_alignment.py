"""The per-host channel-alignment micro-benchmark: its rule on scripted times, and a real run."""

from __future__ import annotations

from autoprune.measure.alignment import STEPS, channel_alignment, preferred_step


def test_a_runtime_whose_time_grows_with_width_needs_no_step():
    assert preferred_step({w: 0.01 * w for w in range(48, 81)}) == 1


def test_only_multiples_of_8_on_the_fast_path_give_step_8():
    """Blocked kernels: a width costs its next multiple of 8, plus a penalty off the block."""
    times = {w: 0.01 * (-(-w // 8) * 8) + (0.0 if w % 8 == 0 else 0.2) for w in range(48, 81)}
    assert preferred_step(times) == 8


def test_a_width_slower_than_a_wider_one_within_tolerance_still_counts_as_fast():
    times = {w: 0.01 * w for w in range(48, 81)}
    times[61] = times[62] * 1.03  # 3% noise: inside the 5% tolerance
    assert preferred_step(times) == 1
    times[61] = times[62] * 1.5  # clearly off the fast path: odd widths are not all efficient
    assert preferred_step(times) == 2


def test_a_real_measurement_is_cached_per_host(tmp_path, monkeypatch):
    import autoprune.measure.alignment as alignment

    calls = []
    real = alignment.measure_widths
    monkeypatch.setattr(
        alignment, "measure_widths", lambda *a, **k: calls.append(1) or real(*a, **{**k, "seconds": 0.2})
    )
    first = channel_alignment("torch", batch_size=1, threads=1, cache_dir=tmp_path)
    again = channel_alignment("torch", batch_size=1, threads=1, cache_dir=tmp_path)
    assert first.step in STEPS and first == again and len(calls) == 1  # the second came from the cache
    assert sorted(first.times) == list(range(48, 81)) and all(t > 0 for t in first.times.values())
    other = channel_alignment("onnxruntime", batch_size=1, threads=1, cache_dir=tmp_path)
    assert other.key != first.key and len(calls) == 2 and len(list(tmp_path.iterdir())) == 2
