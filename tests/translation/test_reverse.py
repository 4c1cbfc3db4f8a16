"""A two-way translator used the other way round: directions swapped, one-way ones refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.translation.test_cut import tiny as tiny_cut
from tests.translation.test_cyclegan import batch
from tests.translation.test_cyclegan import tiny as tiny_cyclegan
from udaseg.errors import UdasegError
from udaseg.translation.io import orientation
from udaseg.translation.registry import translates_back
from udaseg.translation.reverse import ReversedTranslator


def test_the_two_directions_are_swapped_exactly():
    inner = tiny_cyclegan("cyclegan.v1").eval()
    reversed_ = ReversedTranslator(inner).eval()
    ct, mr = batch(1)
    with torch.no_grad():
        assert torch.equal(reversed_.translate(mr), inner.translate_back(mr))
        assert torch.equal(reversed_.translate_back(ct), inner.translate(ct))
        assert not torch.equal(reversed_.translate(mr), inner.translate(mr))
    assert translates_back(reversed_)
    # the wrapped weights are the module's own: moving or freezing it reaches them
    assert {id(p) for p in reversed_.parameters()} == {id(p) for p in inner.parameters()}


def test_a_one_way_translator_and_style_codes_are_refused():
    with pytest.raises(UdasegError, match="trained one-way") as info:
        ReversedTranslator(tiny_cut())
    assert "bidirectional=true" in info.value.hint
    reversed_ = ReversedTranslator(tiny_cut(bidirectional=True))
    with pytest.raises(UdasegError, match="default style"):
        reversed_.translate(batch(2)[0], style=torch.zeros(2, 8))


def test_orientation_compares_dataset_and_domain():
    info = {
        "source": {"dataset": "abdominal", "domain": "ct"},
        "target": {"dataset": "abdominal", "domain": "mr"},
    }

    def store(dataset: str, domain: str) -> SimpleNamespace:
        return SimpleNamespace(dataset=dataset, domain=domain)

    ct, mr = store("abdominal", "ct"), store("abdominal", "mr")
    assert orientation(info, ct, mr) == "forward"
    assert orientation(info, mr, ct) == "reversed"
    assert orientation(info, store("abdominal-translated", "ct"), mr) == "other"
    assert orientation(info, store("cardiac", "mr"), store("cardiac", "ct")) == "other"
