"""Build: the fx graph, split-point checkpointing, in-place activations."""

import operator

import torch

import denet


def test_graph_module_is_plain_calls():
    m = denet.compile(
        "C[8,3] BN A SKIPSRC C[8,3] SKIP SUM(C[8,1] | ) P.A R", (3, 8, 8), 4, border_mode="half"
    )
    code = m.graph_module.code
    assert "self.l0_C(images)" in code and "self.l9_R(" in code
    assert code.count(" + ") == 2 and "SKIPSRC" not in code  # identities are aliases
    targets = [n.target for n in m.graph_module.graph.nodes if n.op == "call_function"]
    assert targets == [operator.add, operator.add]
    assert list(m.state_dict())[:2] == ["l0_C.weight", "l1_BN.weight"]


def test_relu_in_place_only_where_safe():
    m = denet.compile("C[8,3] BN A @t A C[8,3] SUM(A | C[8,1]) A", (3, 8, 8), border_mode="half")
    # after BN with one reader: in place; the tapped tensor has two readers: not in place
    assert m.l2_A.inplace
    assert not m.l4_A.inplace
    assert not m.l7_A.inplace  # reads the conv output that another branch reads too
    assert m.l9_A.inplace  # after the sum


def _same_weights(a, b):
    """Copy a's weights into b, whose layers are the same in the same order (names differ)."""
    b.load_state_dict(dict(zip(b.state_dict().keys(), a.state_dict().values())))


def test_split_checkpointing_gives_the_same_forward_and_gradients():
    torch.manual_seed(0)
    desc = "C[8,3] BN A SKIPSRC C[16,3,2] BN A {} C[16,3] BN A PI[2] C[8,3] SKIP BN A P.A R"
    plain = denet.compile(desc.format(""), (3, 16, 16), 5, border_mode="half")
    split = denet.compile(desc.format("SPLIT"), (3, 16, 16), 5, border_mode="half")
    _same_weights(plain, split)
    x = torch.randn(4, 3, 16, 16)
    outs = []
    for m in (plain, split):
        m.train()
        y = m(x)
        y.sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    for g0, g1 in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(g0, g1, atol=1e-5)
    assert type(split.l7_SPLIT).__name__ == "CheckpointSegment"


def test_split_saves_activation_memory():
    desc = "REP[6](C[32,3] BN A) {} REP[6](C[32,3] BN A) P.A R"
    x = torch.randn(8, 3, 32, 32)

    def saved_bytes(model):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum()
        return total[0]

    plain = denet.compile(desc.format(""), (3, 32, 32), 5, border_mode="half")
    split = denet.compile(desc.format("SPLIT"), (3, 32, 32), 5, border_mode="half")
    assert saved_bytes(split) < 0.7 * saved_bytes(plain)


def test_deepcopy_and_torch_compile_friendly_structure():
    import copy

    m = denet.compile("C[8,3] BN A P.A R", (3, 8, 8), 3, border_mode="half")
    c = copy.deepcopy(m)
    assert c.desc == m.desc and c.l0_C is not m.l0_C
    c.eval(), m.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(c(x), m(x))
    with torch.no_grad():
        c.l0_C.weight.add_(1.0)
    assert not torch.equal(c(x), m(x))  # the copy runs its own modules
