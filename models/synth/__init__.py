"""A synthetic VoxCeleb-like world whose ground truth is known: a parametric head (`head`), its renderer
(`render`) and per-clip motion (`motion`). Pure numpy/torch, no Prefect, no storage."""
