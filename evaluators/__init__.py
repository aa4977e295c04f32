"""How a model is scored: data, quick fine-tune, cost and latency. Accepts any `nn.Module`."""

from evaluators import folder_datasets  # noqa: F401  (registers cifar10, imagefolder, fashion_mnist)
