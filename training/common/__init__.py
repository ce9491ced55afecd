"""What every training stage shares, so each stage module holds only its networks, losses and one step:

    config.py       the stage's config: a pydantic model from a YAML/JSON file plus `key=value` overrides
    distributed.py  torchrun: process group from the environment, DDP wrapping, cross-rank means, the launcher
    checkpoints.py  the run directory, checkpoints in the official dict layout plus safetensors, resume, RNG state
    monitor.py      progress bar with ETA, stats.jsonl, TensorBoard scalars and image grids
    loop.py         the loop itself (`train`): seeds, data, resume, steps, logging, checkpoints, the summary
"""
