"""A PyTorch MLP on synthetic data: reports validation loss each epoch and can be pruned.

torch is imported inside the function, so importing this module needs no torch (CI has none).
Runs on the GPU the worker process was given (CUDA_VISIBLE_DEVICES) when there is one.
"""

from __future__ import annotations

import optuna

__all__ = ["DIRECTIONS", "METRIC_NAMES", "objective"]

# What objective returns, in order; the example TuningStudy must say the same
# (tests/unit/test_examples.py checks it).
DIRECTIONS = ["minimize"]
METRIC_NAMES = ["val_mse"]

EPOCHS = 20


def objective(trial: optuna.Trial) -> float:
    """Validation MSE after training; minimize."""
    import torch
    from torch import nn

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trial.set_user_attr(
        "device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    )
    layers = trial.suggest_int("layers", 1, 4)
    width = trial.suggest_int("width", 16, 256, log=True)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    optimizer_name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    dropout = trial.suggest_float("dropout", 0.0, 0.5)

    # Fixed synthetic regression task: every trial sees the same data.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4096, 32, generator=generator)
    weights = torch.randn(32, 1, generator=generator)
    target = torch.sin(features @ weights) + 0.1 * torch.randn(4096, 1, generator=generator)
    x_train, y_train = features[:3072].to(device), target[:3072].to(device)
    x_val, y_val = features[3072:].to(device), target[3072:].to(device)

    blocks: list[nn.Module] = []
    inputs = 32
    for _ in range(layers):
        blocks += [nn.Linear(inputs, width), nn.ReLU(), nn.Dropout(dropout)]
        inputs = width
    blocks.append(nn.Linear(inputs, 1))
    model = nn.Sequential(*blocks).to(device)
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer_name == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    )
    loss_fn = nn.MSELoss()

    val_loss = float("inf")
    for epoch in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(x_train), device=device).split(256):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(x_val), y_val))
        trial.report(val_loss, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"validation loss {val_loss:.4f} at epoch {epoch}")
    return val_loss
