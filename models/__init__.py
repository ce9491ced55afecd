"""Pure torch/numpy networks, detectors and their checkpoint loaders (no Prefect, no storage imports)."""


class MissingWeightsError(FileNotFoundError):
    """A weights file is not where it must be put; the message names the path and where the file comes from."""
