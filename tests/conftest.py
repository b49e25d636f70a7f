import pytest
import torch

from bridgediff._util import device_path as _device_path

# Two shared cores: one thread each keeps small float64 work from oversubscribing them.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["host", "device"])
def sampler_path(request):
    """Run a test on both paths of every sampler: "host" (compacting, early stopping; what
    the CPU takes) and "device" (fixed rounds over all elements, no sync; what accelerators
    take), forced here on the CPU."""
    if request.param == "device":
        with _device_path():
            yield request.param
    else:
        yield request.param


@pytest.fixture
def device_path():
    """Force the accelerator path of every sampler on the CPU for the test's duration."""
    with _device_path():
        yield
