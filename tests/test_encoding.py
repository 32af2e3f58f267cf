import numpy as np
import pytest

from tcl.encoding import pixel_fractions, run_length_decode, run_length_encode


def test_run_length_encoding_by_hand_and_round_trip():
    labels = np.array([[0, 0, 2], [2, 2, 1]])
    encoded = run_length_encode(labels)
    assert encoded == {"size": [2, 3], "values": [0, 2, 1], "counts": [2, 3, 1]}  # row-major runs
    assert np.array_equal(run_length_decode(encoded), labels)
    random = np.random.default_rng(0).integers(0, 5, (17, 23))
    assert np.array_equal(run_length_decode(run_length_encode(random)), random)


def test_run_length_decode_rejects_runs_of_the_wrong_total():
    with pytest.raises(ValueError, match="add up to 5, not 2x3"):
        run_length_decode({"size": [2, 3], "values": [0, 1], "counts": [2, 3]})


def test_pixel_fractions_list_every_class():
    labels = np.array([[0, 0, 2, 2]])
    assert pixel_fractions(labels, ["background", "star", "sky"]) == {"background": 0.5, "star": 0.0, "sky": 0.5}
