"""CUDA backend checks. They run where gadget was built with CUDA and a GPU is present, and skip
with the reason otherwise (run them through the device machine when one is lent)."""

from __future__ import annotations

import numpy as np
import pytest

from gadget import GgmlModel, Tensor, backends
from gadget.ggml import ggml_mul_mat

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif('cuda:0' not in backends(),
                       reason='no CUDA device in this build/machine '
                              '(build with CMAKE_ARGS="-DGGML_CUDA=ON")'),
]


class Linear(GgmlModel):
    weight: Tensor('F32', ('input_dim', 'output_dim'))
    inputs: Tensor('F32', ('input_dim', 'batch_size'))

    def forward(self):
        w, x = self.tensors['weight', 'inputs']
        return ggml_mul_mat(self.ctx_graph, w, x)


def test_linear_on_cuda_matches_numpy():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 256)).astype(np.float32)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    with Linear.from_values(dict(weight=w), backend='cuda', input_dim=256, output_dim=32, batch_size=16) as m:
        np.testing.assert_allclose(m(inputs=x), x @ w.T, atol=1e-3, rtol=0)


def test_torch_cuda_tensors_stay_on_the_device():
    torch = pytest.importorskip('torch')
    if not torch.cuda.is_available():
        pytest.skip('torch has no CUDA here')
    w = torch.randn(32, 256, device='cuda')
    x = torch.randn(16, 256, device='cuda')
    with Linear.from_values(dict(weight=w), backend='cuda', framework='torch', input_dim=256,
                            output_dim=32, batch_size=16) as m:
        out = m(inputs=x)
        assert out.device.type == 'cuda'
        torch.testing.assert_close(out, x @ w.T, atol=1e-3, rtol=0)
