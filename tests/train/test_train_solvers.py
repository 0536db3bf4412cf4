"""DeNet's update rules (denet-original.md section 5.1) against steps computed by hand in
float64: literal numbers first, then numpy recurrences over several steps with weight decay."""

import io

import numpy as np
import pytest
import torch

from denet.errors import DenetError
from denet.train.solvers import DenetSGD, make_optimizer


def run_steps(opt, params, grads):
    """Apply the given gradient sequence: grads[t][k] is the gradient of params[k] at step t."""
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return [p.detach().numpy().copy() for p in params]


def scalar_run(solver, momentum, grads, lr=0.1, decay=0.0, p0=1.0):
    p = torch.tensor([p0], dtype=torch.float64, requires_grad=True)
    opt = make_optimizer(
        solver, [{"params": [p], "lr": lr, "weight_decay": decay}], lr, momentum, decay
    )
    return run_steps(opt, [p], [[[g]] for g in grads])[0][0]


# ----------------------------------------------------------------------------- literal cases
def test_sgd_literal_steps():
    # p=1, lr=0.1, rho=0.5, g=2 then 4.
    # step 0: rho=0 -> m = 2, p = 1 - 0.2 = 0.8
    # step 1: m = 0.5*2 + 0.5*4 = 3, p = 0.8 - 0.3 = 0.5
    assert scalar_run("sgd", [0.5, 0.0], [2.0]) == pytest.approx(0.8, abs=1e-15)
    assert scalar_run("sgd", [0.5, 0.0], [2.0, 4.0]) == pytest.approx(0.5, abs=1e-15)


def test_nesterov_literal_steps():
    # p=1, lr=0.1, mu=0.5, g=2 then 4.
    # step 0: m = 2, p = 1 - 0.1*(2 + 0.5*2) = 0.7
    # step 1: m = 0.5*2 + 4 = 5, p = 0.7 - 0.1*(4 + 0.5*5) = 0.05
    for name in ("nesterov", "torch"):
        assert scalar_run(name, [0.5], [2.0]) == pytest.approx(0.7, abs=1e-15)
        assert scalar_run(name, [0.5], [2.0, 4.0]) == pytest.approx(0.05, abs=1e-15)
    # no momentum: plain gradient descent, p = 1 - 0.1*2 - 0.1*4
    assert scalar_run("nesterov", [0.0, 0.0], [2.0, 4.0]) == pytest.approx(0.4, abs=1e-15)


def test_decay_is_added_to_the_gradient():
    # sgd, decay 0.5: g = 2 + 0.5*1 = 2.5, rho 0 at step 0: p = 1 - 0.1*2.5 = 0.75
    assert scalar_run("sgd", [0.9, 0.0], [2.0], decay=0.5) == pytest.approx(0.75, abs=1e-15)


def test_adam_literal_step():
    # step 0, g = 2, betas (0.9, 0.999): m = 0.2, v = 0.004; m_hat = 2, v_hat = 4;
    # p = 1 - 0.1 * 2 / (2 + 1e-8)
    expected = 1 - 0.1 * 2 / (2 + 1e-8)
    assert scalar_run("adam", [0.9, 0.999], [2.0]) == pytest.approx(expected, abs=1e-15)


# ----------------------------------------------------------------------------- recurrences
GRADS = [[[0.5, -1.0], [0.2]], [[0.1, 0.3], [-0.4]], [[-0.7, 0.9], [0.6]], [[0.2, 0.2], [0.1]]]
P0 = [np.array([1.0, -2.0]), np.array([0.5])]
LR, DECAY = 0.05, 0.01


def make_params():
    return [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in P0]


def groups(params):
    # params[0] plays a weight (decayed), params[1] a bias (never decayed), as
    # Model.param_groups gives them; the bias group also has a layer lr multiplier of 2.
    return [
        {"params": [params[0]], "lr": LR, "weight_decay": DECAY},
        {"params": [params[1]], "lr": 2 * LR, "weight_decay": 0.0},
    ]


def hand(rule, **kw):
    """The update rules of section 5.1 written out with numpy, per parameter."""
    out = []
    for k, p in enumerate(P0):
        p = p.copy()
        lr = LR if k == 0 else 2 * LR
        decay = DECAY if k == 0 else 0.0
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, step in enumerate(GRADS):
            g = np.array(step[k]) + decay * p
            if rule == "sgd":
                rho = kw["rho"] if t > 0 else 0.0
                m = rho * m + (1 - rho) * g
                p = p - lr * m
            elif rule == "nesterov":
                m = kw["mu"] * m + g
                p = p - lr * (g + kw["mu"] * m)
            else:
                b1, b2 = kw["betas"]
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                m_hat = m / (1 - b1 ** (t + 1))
                v_hat = v / (1 - b2 ** (t + 1))
                p = p - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        out.append(p)
    return out


@pytest.mark.parametrize(
    "solver,momentum,rule,kw",
    [
        ("sgd", [0.9, 0.0], "sgd", {"rho": 0.9}),
        ("nesterov", [0.9], "nesterov", {"mu": 0.9}),
        ("torch", [0.7, 0.0], "nesterov", {"mu": 0.7}),
        ("adam", [0.9, 0.999], "adam", {"betas": (0.9, 0.999)}),
        ("adam", [0.0, 0.0], "adam", {"betas": (0.0, 0.0)}),  # DeNet's default momentum
    ],
)
def test_update_rule_matches_hand_computation(solver, momentum, rule, kw):
    params = make_params()
    opt = make_optimizer(solver, groups(params), LR, momentum, DECAY)
    got = run_steps(opt, params, GRADS)
    for g, e in zip(got, hand(rule, **kw)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-13)


def test_sgd_state_round_trip_continues_exactly():
    params = make_params()
    opt = DenetSGD(groups(params), lr=LR, momentum=0.9)
    run_steps(opt, params, GRADS[:2])
    buffer = io.BytesIO()  # through a file, as a checkpoint stores it
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    copy = [p.detach().clone().requires_grad_(True) for p in params]
    opt2 = DenetSGD(groups(copy), lr=LR, momentum=0.9)
    opt2.load_state_dict(state)
    a = run_steps(opt, params, GRADS[2:])
    b = run_steps(opt2, copy, GRADS[2:])
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_bad_solver_options():
    p = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(DenetError, match="unknown solver"):
        make_optimizer("rmsprop", [{"params": p}], 0.1, [0.0])
    with pytest.raises(DenetError, match="adam needs two values"):
        make_optimizer("adam", [{"params": p}], 0.1, [0.9])
    with pytest.raises(DenetError, match=r"\[0, 1\)"):
        make_optimizer("sgd", [{"params": p}], 0.1, [1.5])
    with pytest.raises(DenetError, match="no trainable parameters"):
        make_optimizer("sgd", [], 0.1, [0.0])
