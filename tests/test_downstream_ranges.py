"""Activation ranges chosen by their error at the next weighted layers (leantorch.ptq.downstream_ranges)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leantorch import QuantSim
from leantorch.errors import CalibrationDataError, InvalidOptionError
from leantorch.ptq.downstream_ranges import downstream_ranges


class _IgnoredOutlierChannel(nn.Module):
    """Channel 1 of the first conv's output is 100x larger than channel 0, and the second conv ignores it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 1)
        self.relu = nn.ReLU()
        self.pad = nn.ZeroPad2d(1)
        self.second = nn.Conv2d(2, 1, 3)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([1.0, 100.0]).reshape(2, 1, 1, 1))
            self.first.bias.zero_()
            self.second.weight.zero_()
            self.second.weight[0, 0] = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
            self.second.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.pad(self.relu(self.first(x))))


def _consumer_error(sim: QuantSim, net: nn.Module, x: torch.Tensor) -> float:
    """The second conv's normalised squared error (its own output quantizer off), in float64."""
    captured = {}
    hook = sim.layers()["second"].register_forward_hook(lambda m, a, o: captured.update(out=o))
    out_q = sim.layers()["second"].output_quantizers[0]
    was = out_q.enabled
    out_q.enabled = False
    try:
        with torch.no_grad():
            sim.model(x)
    finally:
        out_q.enabled = was
        hook.remove()
    with torch.no_grad():
        goal = net.second(net.pad(net.relu(net.first(x)))).double()
    return float((captured["out"].double() - goal).pow(2).sum() / goal.pow(2).sum())


def test_a_range_the_next_layer_does_not_need_is_clipped() -> None:
    net = _IgnoredOutlierChannel().eval()
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    sim = QuantSim(net, x[:1], param_bw=8, act_bw=8, scheme="minmax", per_channel=True)
    sim.compute_encodings([x], progress=False)
    before = _consumer_error(sim, net, x)
    rows = downstream_ranges(sim, [x], fractions=(0.02, 0.05, 0.1, 0.5), progress=False)
    after = _consumer_error(sim, net, x)
    relu = next(r for r in rows if r.consumers == ("second",))
    # Channel 0 is at most 1 of the range's 100: only a small range quantizes it finely, and the second conv
    # never reads channel 1, so clipping it costs nothing.
    assert relu.fraction == pytest.approx(0.02)
    assert relu.error_after < relu.error_before / 100
    assert after < before / 100
    assert relu.error_after == pytest.approx(after, rel=1e-3)  # the recorded error is the measured one


def test_errors_never_grow_and_ranges_without_weighted_consumers_stay() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    ).eval()
    data = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    sim = QuantSim(net, data[0][:1], scheme="tf_enhanced")
    sim.compute_encodings(data, progress=False)
    outputs = {n: q.encoding for n, q in sim.activation_quantizers().items() if "5" in n.split(".")[0]}
    rows = downstream_ranges(sim, data, progress=False)
    assert {r.consumers for r in rows} == {("0",), ("2",), ("5",)}  # the input, the ReLUs (through Flatten)
    assert all(r.error_after <= r.error_before for r in rows)
    for name, enc in outputs.items():  # the Linear's output feeds no weighted layer: unchanged
        new = sim.activation_quantizers()[name].encoding
        assert enc is None or (new is not None and torch.equal(new.scale, enc.scale))


def test_bad_calls_are_refused_before_anything_changes() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    sim = QuantSim(net, torch.randn(1, 4))
    with pytest.raises(InvalidOptionError, match="compute_encodings"):
        downstream_ranges(sim, [torch.randn(4, 4)], progress=False)
    sim.compute_encodings([torch.randn(8, 4)], progress=False)
    before = {n: q.encoding for n, q in sim.activation_quantizers().items()}
    with pytest.raises(CalibrationDataError):
        downstream_ranges(sim, [], progress=False)
    with pytest.raises(InvalidOptionError, match="positive"):
        downstream_ranges(sim, [torch.randn(4, 4)], fractions=(0.5, 0.0), progress=False)
    for name, q in sim.activation_quantizers().items():
        assert (q.encoding is None) == (before[name] is None)
        if q.encoding is not None and before[name] is not None:
            assert torch.equal(q.encoding.scale, before[name].scale)


def test_scheme_downstream_is_minmax_then_the_downstream_search_on_two_batches() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    data = [torch.randn(8, 3, 10, 10) * (1 + i) for i in range(3)]
    chosen = QuantSim(net, data[0][:1], scheme="downstream")
    chosen.compute_encodings(data, progress=False)
    by_hand = QuantSim(net, data[0][:1], scheme="minmax")
    by_hand.compute_encodings(data, progress=False)
    rows = downstream_ranges(by_hand, data[:2], progress=False)
    assert any(r.fraction < 1.0 for r in rows)  # the search changed something, and the scheme did the same
    for name, q in chosen.quantizers().items():
        other = by_hand.quantizers()[name]
        assert (q.encoding is None) == (other.encoding is None)
        if q.encoding is not None and other.encoding is not None:
            assert torch.equal(q.encoding.scale, other.encoding.scale), name
            assert torch.equal(q.encoding.offset, other.encoding.offset), name


def test_scheme_downstream_needs_batches_not_a_callable() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    sim = QuantSim(net, torch.randn(1, 4), scheme="downstream")
    with pytest.raises(InvalidOptionError, match="list or DataLoader"):
        sim.compute_encodings(lambda m: m(torch.randn(4, 4)), progress=False)
    assert all(q.encoding is None for q in sim.activation_quantizers().values())
