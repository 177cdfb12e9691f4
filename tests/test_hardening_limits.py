"""Bounds that need no server: what one request can make the process build or hold."""

from __future__ import annotations

import pytest

from supertonic_grpc import audio
from supertonic_grpc.audio import resampling

NATIVE = 44100
# Rates a request may ask for, including the odd ones whose kernels used to be 10 MB.
ODD_RATES = [12345, 39510, 8001, 47999, audio.MIN_SAMPLE_RATE, audio.MAX_SAMPLE_RATE]


@pytest.mark.parametrize("rate", ODD_RATES)
def test_a_resampler_kernel_for_any_allowed_rate_stays_within_one_mebibyte(rate: int) -> None:
    kernel = resampling._Kernel(NATIVE, rate)
    table = kernel.table if kernel.table is not None else kernel.phases
    assert table.nbytes <= 1 << 20


def test_the_kernel_cache_is_bounded() -> None:
    resampling._kernel.cache_clear()
    for rate in range(8000, 8000 + 40):
        resampling._kernel(NATIVE, rate)
    assert resampling._kernel.cache_info().currsize <= 16
    resampling._kernel.cache_clear()


def test_api_keys_never_appear_in_the_settings_repr() -> None:
    from supertonic_grpc.settings import Settings

    assert "sekrit-key" not in repr(Settings(api_keys="sekrit-key-0123456789"))


def test_short_api_keys_are_refused(tmp_path) -> None:
    from supertonic_grpc.security import load_api_keys
    from supertonic_grpc.settings import Settings, SettingsError

    keys = tmp_path / "keys"
    keys.write_text("# comment\nlong-enough-key-0123 # trailing comment\n\n")
    assert load_api_keys(Settings(api_keys_file=str(keys))) == ("long-enough-key-0123",)
    with pytest.raises(SettingsError):
        load_api_keys(Settings(api_keys="short"))
