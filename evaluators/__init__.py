"""How a model is scored: data, quick fine-tune, cost and latency. Accepts any `nn.Module`."""
