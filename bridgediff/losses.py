"""Training losses (placeholder: being written for issue 7)."""

__all__ = ["standard_loss"]


def standard_loss(process, t, x0_hat, x0, *, scaler=None):
    raise NotImplementedError
