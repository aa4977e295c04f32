"""The study's side of latency prediction: its latency table (built, cached, vouched for), the one predictor a study
asks, the one gate before training, and the compression space's latency staircase."""
