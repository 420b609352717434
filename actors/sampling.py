"""Seeded minibatch sampling shared by the linear probe (``proxies``) and the fine-tune core
(``finetune``), so both see the same batches for the same seed."""

import torch


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Minibatch indices of every step, shape (steps, batch_size), int64 on CPU.

    Epoch-based sampling like ``tf.data`` shuffle + repeat + batch: a stream of independent
    random permutations of ``0..n-1`` cut into consecutive batches (a batch may straddle two
    epochs; if ``batch_size > n`` it repeats examples). Drawn from ``torch.Generator(seed)`` on
    CPU, so every device and both implementations see the same batches.
    """
    gen = torch.Generator().manual_seed(int(seed))
    total = steps * batch_size
    epochs = -(-total // n)
    keys = torch.rand(epochs, n, generator=gen, dtype=torch.float64)
    perms = torch.argsort(keys, dim=1, stable=True)
    return perms.reshape(-1)[:total].reshape(steps, batch_size)
