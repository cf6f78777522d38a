"""The portable Philox4x32-10 noise generator: known answers, the Box-Muller layer, the
counter layout the native runtimes must reproduce, statistics, and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualrate.exporter.errors import SpecError
from dualrate.exporter.rng import PHILOX_NAME, PhiloxNoise, normal_draw, philox4x32_10

# Random123 known-answer vectors, the three "philox4x32 10" rows of tests/kat_vectors in
# DEShawResearch/random123 (checked against commit 9545ff6413f258be2f04c1d319d99aaef7521150,
# lines 27-29). Row format there: counter[4] key[2] -> expected[4], 32-bit hex words.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

SEED = 0x0123456789ABCDEF  # both key words non-zero, so a swapped k0/k1 split shows


def _scalar_philox(ctr, key):
    """A from-the-paper scalar Philox4x32-10 in plain ints, independent of the vectorised one."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _box_muller_by_hand(words):
    """The docstring's step 4-6 written out by hand with ``math`` for one 4-word block."""
    u = [(w + 0.5) / 2.0 ** 32 for w in words]
    out = []
    for a, b in ((u[0], u[1]), (u[2], u[3])):
        r = math.sqrt(-2.0 * math.log(a))
        t = 2.0 * math.pi * b
        out += [r * math.cos(t), r * math.sin(t)]
    return np.array(out, np.float32)


def _key(seed):
    return seed & 0xFFFFFFFF, seed >> 32


# -- Philox itself ---------------------------------------------------------------------

def test_name_matches_spec_kind():
    assert PHILOX_NAME == "philox4x32-10"


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    out = philox4x32_10(np.array(ctr, np.uint32), key)
    assert out.dtype == np.uint32 and out.shape == (4,)
    assert [int(x) for x in out] == list(expected)


def test_philox_batched_with_per_row_keys_matches_kat_and_scalar_reference():
    rng = np.random.default_rng(7)
    ctr = rng.integers(0, 2 ** 32, size=(64, 4), dtype=np.uint64).astype(np.uint32)
    key = rng.integers(0, 2 ** 32, size=(64, 2), dtype=np.uint64).astype(np.uint32)
    ctr[:3] = [k[0] for k in KAT]
    key[:3] = [k[1] for k in KAT]
    out = philox4x32_10(ctr, key)
    assert out.shape == (64, 4) and out.dtype == np.uint32
    for i in range(64):
        want = _scalar_philox([int(x) for x in ctr[i]], [int(x) for x in key[i]])
        assert tuple(int(x) for x in out[i]) == want, i
    assert [tuple(int(x) for x in out[i]) for i in range(3)] == [k[2] for k in KAT]


def test_philox_tuple_key_broadcasts_over_counters():
    ctr = np.array([k[0] for k in KAT], np.uint32)
    out = philox4x32_10(ctr, (0xA4093822, 0x299F31D0))
    assert tuple(int(x) for x in out[2]) == KAT[2][2]
    assert tuple(int(x) for x in out[0]) == _scalar_philox((0, 0, 0, 0), (0xA4093822, 0x299F31D0))


# -- Box-Muller and the counter layout -------------------------------------------------

def _expected_block(seed, block, draw, sample):
    words = philox4x32_10(np.array([block, draw, sample, 0], np.uint32), _key(seed))
    return _box_muller_by_hand([int(w) for w in words])


def test_first_four_normals_are_box_muller_of_block_zero():
    got = normal_draw(SEED, 0, (1, 4))
    assert got.dtype == np.float32 and got.shape == (1, 4)
    # The docstring allows 1 float32 ulp: numpy's float64 log/cos/sin need not be libm's.
    np.testing.assert_array_max_ulp(got[0], _expected_block(SEED, 0, 0, 0), maxulp=1)


def test_element_e_uses_block_e_div_4_lane_e_mod_4_with_draw_and_sample_lanes():
    draw, batch, offset = 3, 3, 5
    got = normal_draw(SEED, draw, (batch, 2, 5), sample_offset=offset)  # 10 elements: 3 blocks, tail cut
    assert got.shape == (batch, 2, 5)
    for b in range(batch):
        flat = got[b].reshape(-1)
        want = np.concatenate([_expected_block(SEED, k, draw, b + offset) for k in range(3)])[:10]
        np.testing.assert_array_max_ulp(flat, want, maxulp=1)


def test_box_muller_at_the_extreme_words():
    # Words 0 and 2^32-1 are where a missing +0.5 shows: log(0) = -inf, or r = 0 at u = 1.
    from dualrate.exporter.rng import _box_muller

    words = [0, 0xFFFFFFFF, 0xFFFFFFFF, 0]
    got = _box_muller(*(np.array([w], np.uint64) for w in words))[0]
    assert np.isfinite(got).all() and got[2] != 0.0
    np.testing.assert_array_max_ulp(got.astype(np.float32), _box_muller_by_hand(words), maxulp=1)


def test_normals_are_finite_and_bounded():
    x = normal_draw(SEED, 0, (2, 1 << 16))
    assert np.isfinite(x).all()
    # u >= 2^-33 bounds r by sqrt(66 ln 2) ~ 6.77: a u = 0 bug would show up as inf here.
    assert np.abs(x).max() <= math.sqrt(-2.0 * math.log(0.5 / 2 ** 32)) + 1e-6


# -- Determinism and layout -------------------------------------------------------------

def test_same_seed_and_draw_is_identical():
    a = normal_draw(SEED, 2, (3, 4, 7))
    b = normal_draw(SEED, 2, (3, 4, 7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(PhiloxNoise(SEED, 3).draw(2, (4, 7)), a)


def test_sample_b_equals_single_sample_with_offset_b():
    batch = normal_draw(SEED, 1, (5, 3, 6))
    for b in range(5):
        np.testing.assert_array_equal(batch[b], normal_draw(SEED, 1, (1, 3, 6), sample_offset=b)[0])


def test_batch_size_and_shape_do_not_change_a_sample():
    small = PhiloxNoise(SEED, 2).draw(4, (3, 8))
    large = PhiloxNoise(SEED, 7).draw(4, (3, 8))
    np.testing.assert_array_equal(small, large[:2])
    # Only the flattened element count matters, and a shorter tensor is a prefix.
    np.testing.assert_array_equal(normal_draw(SEED, 0, (2, 24)), normal_draw(SEED, 0, (2, 4, 6)).reshape(2, 24))
    np.testing.assert_array_equal(normal_draw(SEED, 0, (2, 9)), normal_draw(SEED, 0, (2, 24))[:, :9])


def test_draw_seed_and_sample_each_change_the_output():
    base = normal_draw(SEED, 0, (1, 64))[0]
    for other in (normal_draw(SEED, 1, (1, 64))[0],
                  normal_draw(SEED + 1, 0, (1, 64))[0],
                  normal_draw(SEED ^ (1 << 40), 0, (1, 64))[0],  # high key word alone
                  normal_draw(SEED, 0, (1, 64), sample_offset=1)[0]):
        assert not np.any(other == base)


def test_per_row_uses_seed_b_with_sample_zero():
    seeds = [SEED, 0, 2 ** 64 - 1]
    got = PhiloxNoise.per_row(seeds).draw(1, (2, 3))
    assert got.shape == (3, 2, 3) and got.dtype == np.float32
    for b, s in enumerate(seeds):
        np.testing.assert_array_equal(got[b], normal_draw(s, 1, (1, 2, 3))[0])
        np.testing.assert_array_equal(got[b], PhiloxNoise(s, 1).draw(1, (2, 3))[0])
    # A repeated seed repeats the row: rows are keyed by seed alone, not by position.
    twice = PhiloxNoise.per_row([SEED, SEED]).draw(0, (16,))
    np.testing.assert_array_equal(twice[0], twice[1])
    assert PhiloxNoise.per_row(seeds).batch == 3 and PhiloxNoise(SEED, 4).batch == 4


def test_scalar_sample_shape_and_empty_tensors():
    assert PhiloxNoise(SEED, 2).draw(0, ()).shape == (2,)
    assert normal_draw(SEED, 0, (0, 5)).shape == (0, 5)
    assert normal_draw(SEED, 0, (2, 0)).shape == (2, 0)


# -- Statistics ------------------------------------------------------------------------

N = 1 << 18


def test_mean_and_std():
    x = normal_draw(SEED, 0, (1, N))[0].astype(np.float64)
    assert abs(x.mean()) < 0.01
    assert abs(x.std() - 1.0) < 0.01
    # A lane-ordering bug (e.g. reusing u0 for the angle) skews the odd moments.
    assert abs(np.mean(x ** 3)) < 0.03
    assert abs(np.mean(x ** 4) - 3.0) < 0.06


def _corr(a, b):
    return float(np.corrcoef(a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64))[0, 1])


def test_draws_samples_rows_and_lanes_are_uncorrelated():
    noise = PhiloxNoise(SEED, 2)
    d0, d1 = noise.draw(0, (N,)), noise.draw(1, (N,))
    assert abs(_corr(d0[0], d1[0])) < 0.01  # different draws
    assert abs(_corr(d0[0], d0[1])) < 0.01  # different samples
    rows = PhiloxNoise.per_row([1, 2]).draw(0, (N,))
    assert abs(_corr(rows[0], rows[1])) < 0.01  # adjacent per-row seeds
    lanes = d0[0].reshape(-1, 4)
    assert abs(_corr(lanes[:, 0], lanes[:, 1])) < 0.01  # cos/sin of one pair
    assert abs(_corr(lanes[:, 1], lanes[:, 2])) < 0.01  # across pairs


# -- Argument checks -------------------------------------------------------------------

@pytest.mark.parametrize("call,name", [
    (lambda: normal_draw(-1, 0, (1, 4)), "seed"),
    (lambda: normal_draw(2 ** 64, 0, (1, 4)), "seed"),
    (lambda: normal_draw(1.5, 0, (1, 4)), "seed"),
    (lambda: normal_draw(True, 0, (1, 4)), "seed"),
    (lambda: normal_draw(0, -1, (1, 4)), "draw"),
    (lambda: normal_draw(0, 2 ** 32, (1, 4)), "draw"),
    (lambda: normal_draw(0, 0, ()), "shape"),
    (lambda: normal_draw(0, 0, 4), "shape"),
    (lambda: normal_draw(0, 0, (1, -2)), "shape[1]"),
    (lambda: normal_draw(0, 0, (1, 2.0)), "shape[1]"),
    (lambda: normal_draw(0, 0, (1, 1 << 17, (1 << 17) + 1)), "shape"),  # > 4 * 2**32 per sample
    (lambda: normal_draw(0, 0, (1, 4), sample_offset=-1), "sample_offset"),
    (lambda: normal_draw(0, 0, (2, 4), sample_offset=2 ** 32 - 1), "sample_offset"),
    (lambda: PhiloxNoise(-3, 1), "seed"),
    (lambda: PhiloxNoise(0, 0), "batch"),
    (lambda: PhiloxNoise(0, 1).draw(-1, (4,)), "index"),
    (lambda: PhiloxNoise(0, 1).draw(0, (4, -1)), "sample_shape[1]"),
    (lambda: PhiloxNoise.per_row([]), "seeds"),
    (lambda: PhiloxNoise.per_row([1, 2 ** 64]), "seeds[1]"),
    (lambda: PhiloxNoise.per_row(5), "seeds"),
    (lambda: philox4x32_10(np.zeros(3, np.uint32), (0, 0)), "counter"),
    (lambda: philox4x32_10(np.array([0, 0, 0, -1]), (0, 0)), "counter"),
    (lambda: philox4x32_10(np.zeros(4, np.float32), (0, 0)), "counter"),
    (lambda: philox4x32_10(np.zeros(4, np.uint32), (0, 2 ** 32)), "key"),
    (lambda: philox4x32_10(np.zeros(4, np.uint32), (0, 0, 0)), "key"),
])
def test_bad_arguments_raise_spec_error_naming_the_argument(call, name):
    with pytest.raises(SpecError) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(name + " ") or msg.startswith(name + "["), msg
    assert "expected" in msg, msg
