import pytest
import torch

from models.grl import GradientReversal, grad_reverse


def numerical_jacobian(fn, x, eps=1e-6):
    flat = x.detach().clone().reshape(-1)
    cols = []
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        cols.append((fn(plus.view_as(x)) - fn(minus.view_as(x))).reshape(-1) / (2 * eps))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.0])
def test_backward_is_minus_lambda_times_the_true_jacobian(lam):
    torch.manual_seed(0)
    x = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    weight = torch.randn(3, 3, dtype=torch.double)
    fn = lambda t: torch.tanh(grad_reverse(t, lam) @ weight)  # noqa: E731
    analytical = torch.autograd.functional.jacobian(fn, x).reshape(6, 6)
    numerical = numerical_jacobian(lambda t: torch.tanh(t @ weight), x)
    torch.testing.assert_close(analytical, -lam * numerical, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_gradcheck_of_reversal_undone_by_its_inverse(lam):
    # two reversals with lambdas lam and 1/lam compose to the identity, so torch's gradcheck applies
    x = torch.randn(4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: grad_reverse(grad_reverse(t, lam), 1 / lam), (x,))
    assert torch.autograd.gradgradcheck(lambda t: grad_reverse(grad_reverse(t, lam), 1 / lam), (x,))


def test_forward_is_identity_and_module_lambda_is_settable():
    layer = GradientReversal(1.0)
    x = torch.randn(3, 4, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, -torch.ones_like(x))
    layer.lambda_ = 0.25
    x.grad = None
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.25))
    assert "lambda_=0.25" in repr(layer)


def test_negative_lambda_is_rejected():
    with pytest.raises(ValueError, match="lambda_ must be >= 0"):
        GradientReversal(-1.0)
    with pytest.raises(ValueError, match="lambda_ must be >= 0"):
        grad_reverse(torch.ones(1), -0.1)
