"""Every registered model keeps its initialisation and its outputs (issue 25, part 7).

The pins were taken before the library's restructuring, from the code of commit 9d3c608:

    python tests/test_pinned_models.py --write

For each model in ``list_models()``: after ``torch.manual_seed(0)``, a digest of its state
dict, and its logits in eval mode on one fixed input (``torch.manual_seed(1)``, one image of
224 x 224). The digest is exact. It hashes each tensor's dtype, shape and bytes and sorts the
per-tensor hashes, so a renamed key (``Downsample``'s named children) keeps it while any
changed value, shape or random draw breaks it. The logits must agree within 1e-6 of their
norm: float sums may be ordered differently on another CPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from coatlib import create_model, list_models

PINS = Path(__file__).resolve().parent / "pinned"
DIGESTS = PINS / "digests.json"
LOGITS = PINS / "logits.pt"


def state_digest(model: torch.nn.Module) -> str:
    """sha256 over the sorted per-tensor hashes of dtype, shape and bytes (names left out)."""
    tensor_hashes = []
    for value in model.state_dict().values():
        h = hashlib.sha256(f"{value.dtype} {tuple(value.shape)}".encode())
        h.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        tensor_hashes.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(tensor_hashes)).encode()).hexdigest()


def fixed_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, 224, 224)


def pin(name: str) -> tuple[str, torch.Tensor]:
    """The digest and the logits of ``name``, built after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    digest = state_digest(model)
    with torch.no_grad():
        logits = model(fixed_input())[0]
    return digest, logits


@pytest.fixture(scope="module")
def pinned():
    return json.loads(DIGESTS.read_text()), torch.load(LOGITS)


def test_every_registered_model_is_pinned(pinned):
    digests, logits = pinned
    assert sorted(digests) == list_models() == sorted(logits)


@pytest.mark.parametrize("name", list_models())
def test_initialisation_and_outputs_unchanged(name, pinned):
    digests, logits = pinned
    digest, out = pin(name)
    assert digest == digests[name], f"{name}: the state dict after torch.manual_seed(0) changed"
    ref = logits[name]
    err = (out - ref).norm() / ref.norm()
    assert err <= 1e-6, f"{name}: logits moved by {err:.2e} of their norm"


def test_digest_sees_one_changed_value_and_ignores_names():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    before = state_digest(model)
    renamed = torch.nn.Sequential()
    renamed.add_module("first", model[0])
    renamed.add_module("second", model[1])
    assert state_digest(renamed) == before
    with torch.no_grad():
        model[1].bias[0] += 1e-7
    assert state_digest(model) != before


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_pinned_models.py --write   (only before a change)")
    PINS.mkdir(exist_ok=True)
    digests, logits = {}, {}
    for name in list_models():
        digests[name], logits[name] = pin(name)
        print(name, digests[name][:12], flush=True)
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    torch.save(logits, LOGITS)
