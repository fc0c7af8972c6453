"""Small models of the tests' own, standing in for the node's real ones."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


SIDE = 6


class SquareNet(nn.Module):
    """Two classes: 0 noise, 1 a bright square somewhere. Global max pooling makes it look locally."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.amax(self.features(x), dim=(2, 3)))


def square_images(n: int, rng: np.random.Generator, size: int = 32, side: int = SIDE):
    """(images (n, 1, size, size), labels, square top-left corners (row, col) or None)."""
    images = rng.normal(0, 0.3, size=(n, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, size=n)
    corners = []
    for i in range(n):
        if labels[i]:
            r, c = rng.integers(0, size - side, size=2)
            images[i, 0, r : r + side, c : c + side] += 2.0
            corners.append((int(r), int(c)))
        else:
            corners.append(None)
    return torch.from_numpy(images), torch.from_numpy(labels), corners


def trained_square_net(steps: int = 30) -> SquareNet:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = SquareNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        images, labels, _ = square_images(32, rng)
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(images), labels).backward()
        optimiser.step()
    return net.eval()
