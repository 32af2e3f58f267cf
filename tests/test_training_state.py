"""A training checkpoint resumes exactly or not at all: missing or mismatched state is an error that
names the file and what is missing (no Ray: tcl.training)."""
import os

import pytest
import torch

from tcl.model import TCL, TCLConfig
from tcl.training import TASKS, TrainingStateError, load_training_state, param_groups, save_training_state, trained_state
from tests.helpers import tiny_grounder_config


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = TCL(TCLConfig(grounder=tiny_grounder_config(), unfreeze_block_step=10))
    return model, torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)


def saved(tmp_path, step: int = 7):
    model, optimizer = model_and_optimizer(1)
    images, tokens = torch.randn(2, 3, 32, 32), model.grounder.clip.tokenize(["a star", "a ring"])
    model(images, tokens)["total"].backward()
    optimizer.step()  # optimizer state worth restoring
    save_training_state(str(tmp_path), model, optimizer, step, [{"step": step, "loss/total": 1.0}])
    return model, optimizer


def test_a_saved_state_resumes_exactly(tmp_path):
    model, optimizer = saved(tmp_path)
    fresh, fresh_optimizer = model_and_optimizer(2)
    step, history, extra = load_training_state(str(tmp_path), fresh, fresh_optimizer, TASKS["tcl"], torch.device("cpu"))
    assert (step, history, extra) == (7, [{"step": 7, "loss/total": 1.0}], {})
    for key, value in trained_state(model).items():
        assert torch.equal(trained_state(fresh)[key], value), key
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


@pytest.mark.parametrize("damage, message", [
    ("empty_model", "has no model"),
    ("no_optimizer", "has no optimizer"),
    ("missing_key", r"missing \['grounder.mask_bias'\]"),
    ("unknown_key", r"unknown \['grounder.extra'\]"),
    ("other_shape", r"other shapes \['grounder.proj'\]"),
    ("garbage", "cannot be read"),
])
def test_a_damaged_state_is_an_error_naming_the_file_and_what_is_missing(tmp_path, damage, message):
    saved(tmp_path)
    path = os.path.join(tmp_path, "training_state.pt")
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"not a checkpoint")
    else:
        state = torch.load(path, weights_only=True)
        if damage == "empty_model":
            state["model"] = {}
        elif damage == "no_optimizer":
            del state["optimizer"]
        elif damage == "missing_key":
            del state["model"]["grounder.mask_bias"]
        elif damage == "unknown_key":
            state["model"]["grounder.extra"] = torch.zeros(1)
        else:
            state["model"]["grounder.proj"] = torch.zeros(3, 3)
        torch.save(state, path)
    model, optimizer = model_and_optimizer()
    with pytest.raises(TrainingStateError, match=message) as error:
        load_training_state(str(tmp_path), model, optimizer, TASKS["tcl"], torch.device("cpu"))
    assert path in str(error.value)
