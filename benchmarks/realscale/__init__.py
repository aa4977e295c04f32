"""The real-scale benchmark: CIFAR ResNet-56 on CIFAR-10 trained, searched, compressed and measured on one GPU.
Run it as `python -m benchmarks.realscale` from the repository root; run.py holds the command line and says how."""
