import math
import torch
import bridgediff as bd

P = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5)
x0 = torch.randn(1000, 2) * 0.1 + torch.tensor([2.0, -1.0])     # data near one point
x_t = bd.sample_forward(P, torch.rand(1000) * 5, x0)            # noised, one time per row
guess = lambda x, t: torch.tensor([2.0, -1.0]).expand_as(x)     # a toy x0-predictor
timesteps = bd.time_schedule(torch.exp, 1e-3, 10.0, 100, finv=math.log)
x = bd.sample_backward(guess, P, timesteps, bd.sample_equilibrium(P, (1000, 2)))
print(x.mean(0))                                                # close to (2, -1)
