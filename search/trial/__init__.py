"""One trial, the same for every executor: the context a process builds once, the objective (one fine-tune, or
rungs of them), the scorings, constraints, the latency budget and tables, and the machine lock."""
