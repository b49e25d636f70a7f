"""Self-conditioning (placeholder: being written for issue 7)."""

__all__ = ["SelfConditioned", "self_conditioning_input"]


class SelfConditioned:
    def __init__(self, model):
        raise NotImplementedError


def self_conditioning_input(model, x_t, t, *, p=0.5, generator=None):
    raise NotImplementedError
