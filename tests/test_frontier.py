"""Frontier: node-by-node advance of a data set equals plain forward passes; bias correction built on it
equals the layer-by-layer algorithm that re-runs the model for every layer."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from torch import fx, nn

import leantorch as lt
from leantorch.models import ResNetSmall, TransformerClassifier
from leantorch.ptq.frontier import Frontier


def test_frontier_values_equal_forward_passes_and_dead_values_are_dropped(resnet) -> None:
    gm = fx.symbolic_trace(resnet)
    batches = [(torch.randn(4, 3, 32, 32),), (torch.randn(2, 3, 32, 32),)]
    frontier = Frontier(gm, batches)
    outputs, held = None, []
    for node, values in frontier:
        held.append(max(len(env) for env in frontier.envs))
        if node.op == "output":
            outputs = values
    with torch.no_grad():
        for (x,), y in zip(batches, outputs):
            assert torch.equal(resnet(x), y)
    assert max(held) < len(frontier.nodes) / 2  # only the live values are kept, not every node's


def test_rerun_propagates_a_changed_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(5, 3)
    frontier = Frontier(fx.symbolic_trace(model), [(x,)])
    with torch.no_grad():
        for node, _ in frontier:
            if node.target == "0":
                model[0].bias.add_(1.0)  # the traced module shares the parameter
                frontier.rerun()
            if node.op == "output":
                assert torch.equal(_[0], model(x))


def _layer_by_layer_reference(model: nn.Module, x: torch.Tensor, data: list[torch.Tensor]) -> nn.Module:
    """Empirical bias correction the quadratic way: for each layer in graph order, run the whole corrected
    sim, take the layer's per-channel output mean and move the bias by the float mean minus it."""
    gm = lt.prepare(model, x)
    sim = lt.QuantSim(gm, x, param_bw=4)
    sim.compute_encodings(data, progress=False)
    layers = [
        str(n.target)
        for n in sim.model.graph.nodes
        if n.op == "call_module"
        and str(n.target) in sim.layers()
        and sim.layers()[str(n.target)].op_type in ("Conv", "Linear")
    ]

    def channel_means(net: nn.Module, module: nn.Module, layer: nn.Module) -> torch.Tensor:
        captured = []
        handle = module.register_forward_hook(lambda m, i, out: captured.append(out.detach().double()))
        with torch.no_grad():
            for batch in data:
                net(batch)
        handle.remove()

        def dims(y: torch.Tensor) -> list[int]:
            return [d for d in range(y.dim()) if d != (y.dim() - 1 if isinstance(layer, nn.Linear) else 1)]

        return sum(y.sum(dims(y)) for y in captured) / sum(
            y.numel() // y.shape[-1 if isinstance(layer, nn.Linear) else 1] for y in captured
        )

    float_means = {n: channel_means(gm, gm.get_submodule(n), gm.get_submodule(n)) for n in layers}
    for name in layers:
        layer = sim.layers()[name].module
        shift = float_means[name] - channel_means(sim.model, sim.layers()[name], layer)
        for module in (gm.get_submodule(name), layer):
            if module.bias is None:  # a layer without bias gets one
                module.bias = nn.Parameter(torch.zeros(shift.shape, dtype=module.weight.dtype))
            module.bias.data += shift.to(module.bias.dtype)
    return gm


def test_bias_correction_equals_the_layer_by_layer_reference() -> None:
    torch.manual_seed(0)
    for model, data in [
        (ResNetSmall(width=8).eval(), [torch.randn(8, 3, 32, 32) for _ in range(3)]),
        (
            TransformerClassifier(in_features=16, num_classes=5, dim=32, depth=2).eval(),
            [torch.randn(4, 10, 16) for _ in range(2)],
        ),
    ]:
        corrected = lt.bias_correction(model, data[0][:1], data, param_bw=4, progress=False)
        reference = _layer_by_layer_reference(model, data[0][:1], data)
        for (name, got), (_, want) in zip(corrected.state_dict().items(), reference.state_dict().items()):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)


def test_fork_runs_the_suffix_without_touching_the_frontier() -> None:
    torch.manual_seed(0)
    # An in-place ReLU in the suffix must not change the values the parent frontier goes on with.
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).eval()
    gm = fx.symbolic_trace(model)
    x = torch.randn(5, 3)
    frontier = Frontier(gm, [(x,)])
    relu = next(n for n in gm.graph.nodes if n.target == "1")
    frontier.advance_to(relu)
    before = frontier.inputs_of(relu)[0][0].clone()
    assert (before < 0).any()
    with torch.no_grad():
        forked = frontier.fork().run_rest()
        assert torch.equal(forked[0], model(x))
        assert torch.equal(frontier.inputs_of(relu)[0][0], before)
        assert torch.equal(frontier.run_rest()[0], model(x))


def test_spilled_values_give_the_same_outputs(resnet) -> None:
    gm = fx.symbolic_trace(resnet)
    batches = [(torch.randn(3, 3, 32, 32),), (torch.randn(2, 3, 32, 32),)]
    with torch.no_grad():
        in_memory = Frontier(gm, batches).run_rest()
        on_disk = Frontier(gm, batches, max_bytes=0)
        spilled = on_disk.run_rest()
    assert on_disk.spilled_bytes > 0 and on_disk.held_bytes <= 0
    for a, b in zip(in_memory, spilled):
        assert torch.equal(a, b)


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = torch.relu_(y)  # z is y
        z.mul_(2.0)
        return self.b(y) + self.c(z)


def test_in_place_ops_see_one_tensor_when_spilling_and_forking() -> None:
    gm = fx.symbolic_trace(_InPlace().eval())
    x = torch.randn(16, 8)
    with torch.no_grad():
        expected = gm(x)
        spilled = Frontier(gm, [(x,)], max_bytes=0)
        assert torch.equal(spilled.run_rest()[0], expected)
        assert spilled.spilled_bytes > 0  # something was spilled, just not the values written in place
        for node in list(gm.graph.nodes)[1:-1]:
            frontier = Frontier(gm, [(x,)], max_bytes=0)
            frontier.advance_to(node)
            assert torch.equal(frontier.fork().run_rest()[0], expected), node.name
            assert torch.equal(frontier.run_rest()[0], expected), node.name


def test_bfloat16_values_spill_and_come_back_exactly() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).to(torch.bfloat16).eval()
    gm = fx.symbolic_trace(model)
    x = torch.randn(5, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        frontier = Frontier(gm, [(x,)], max_bytes=0)
        out = frontier.run_rest()[0]
        assert frontier.spilled_bytes > 0 and out.dtype == torch.bfloat16
        assert torch.equal(out, model(x))


def test_batch_inputs_read_one_batch_at_a_time_through_the_transform() -> None:
    from leantorch.ptq.layer_rounding import BatchInputs

    torch.manual_seed(0)
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    xs = [torch.randn(2, 3), torch.randn(5, 3)]
    frontier = Frontier(gm, [(x,) for x in xs], max_bytes=0)  # every value on disk
    relu = next(n for n in gm.graph.nodes if n.target == "1")
    frontier.advance_to(relu)
    inputs = BatchInputs(frontier, relu, transform=lambda x: 2 * x)
    with torch.no_grad():
        want = [2 * gm.get_submodule("0")(x) for x in xs]
    assert len(inputs) == 2
    assert torch.equal(inputs[0], want[0]) and torch.equal(inputs[-1], want[1])
    assert [torch.equal(a, b) for a, b in zip(inputs[0:2], want)] == [True, True]
    assert [tuple(x.shape) for x in inputs] == [(2, 4), (5, 4)]
    with pytest.raises(IndexError):
        inputs[2]


def test_advancing_a_spilled_frontier_reads_no_value_back(monkeypatch) -> None:
    """advance_to runs nodes without loading their values: a spilled node's batches are never all in memory at
    once (iterating did that, 7.4 GB per frontier on a spilled EfficientNet-Lite0 block at 1,536 crops)."""
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    frontier = Frontier(gm, [(torch.randn(2, 3),) for _ in range(3)], max_bytes=0)
    loads: list[int] = []
    original = Frontier._load

    def counting(self: Frontier, value: object) -> object:
        loads.append(1)
        return original(self, value)

    monkeypatch.setattr(Frontier, "_load", counting)
    last = [n for n in gm.graph.nodes if n.op == "call_module"][-1]
    frontier.advance_to(last)
    # only the nodes' own input reads, one batch at a time: 3 batches × 2 nodes (the placeholder reads none);
    # iterating would also read back every batch of every node it passed (9 more)
    assert frontier.spilled_bytes > 0 and len(loads) == 3 * 2


def test_the_memory_budget_is_a_quarter_of_the_memory_still_available(tmp_path, monkeypatch) -> None:
    """Not of physical memory: the calibration set and the models already take their share (a 4,096-crop GPTQ
    on a 23 GB machine was killed with two quarter-of-RAM frontiers beside 2.5 GB of images)."""
    import leantorch.ptq.frontier as frontier

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:   100 kB\nMemAvailable:    8000000 kB\n")
    assert frontier._available_memory(str(meminfo)) == 8_000_000 * 1024
    (tmp_path / "none").write_text("MemTotal: 1 kB\n")
    assert frontier._available_memory(str(tmp_path / "none")) is None
    assert frontier._available_memory(str(tmp_path / "missing")) is None
    monkeypatch.setattr(frontier, "_available_memory", lambda: 8_000_000 * 1024)
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 4)))
    assert Frontier(gm, [(torch.randn(2, 3),)]).max_bytes == 2_000_000 * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc")
def test_spilled_values_are_neither_mapped_into_memory_nor_left_open(resnet) -> None:
    """Spill files are read, not memory-mapped: a mapped file's pages counted as the process's memory (a
    4,096-crop EfficientNet-Lite0 GPTQ held 7.8 GB of them beside its frontiers); and each file goes with the
    last reference to its value."""

    def spill_files(table: str) -> int:
        if table == "fd":
            links = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    links.append(os.readlink(f"/proc/self/fd/{fd}"))
                except OSError:  # the descriptor listdir itself used
                    pass
            return sum("leantorch-frontier-" in link for link in links)
        with open("/proc/self/maps") as f:
            return sum("leantorch-frontier-" in line for line in f)

    gm = fx.symbolic_trace(resnet)
    batches = [(torch.randn(3, 3, 32, 32),), (torch.randn(2, 3, 32, 32),)]
    with torch.no_grad():
        expected = Frontier(gm, batches).run_rest()
        frontier = Frontier(gm, batches, max_bytes=0)
        frontier.advance_to(list(gm.graph.nodes)[len(gm.graph.nodes) // 2])
        assert spill_files("fd") > 0 and spill_files("maps") == 0
        fork = frontier.fork()
        del frontier
        gc.collect()
        assert spill_files("fd") > 0  # the fork still holds the shared values
        outputs = fork.run_rest()
    assert spill_files("maps") == 0
    for a, b in zip(expected, outputs):
        assert torch.equal(a, b)
    del fork, outputs
    gc.collect()
    assert spill_files("fd") == 0
